"""A worker serving a tabular model and a text embedding model side by side, against the real broker:
tabular and text events mixed in one topic, each gets exactly one result of its model's kind, and
events whose input does not fit the model they name (or default to) are dead-lettered."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from tests.integration.conftest import Names, create_topics, running_worker, worker_env
from tests.integration.streams import FEATURES, Output, produce, read_outputs

pytest.importorskip("sentence_transformers", reason="the text extra is not installed")

TABULAR = 400
TEXTS = 400
MISMATCHED = 20
WORDS = ("kafka", "broker", "offset", "partition", "replica", "stream", "batch", "model", "vector", "token", "commit")


def sentence(index: int) -> str:
    """Deterministic texts of 3 to 40 words, so batches pad to different lengths; they repeat every 418."""
    length = 3 + (index * 7) % 38
    return " ".join(WORDS[(index + 3 * k) % len(WORDS)] for k in range(length))


def event(index: int) -> tuple[str, dict[str, Any]]:
    """(expected outcome, event) for the index-th record: the kinds are interleaved."""
    base: dict[str, Any] = {
        "event_id": f"e-{index}",
        "user_id": f"u-{index % 50}",
        "timestamp": int(time.time() * 1000),
    }
    slot = index % 41
    if slot == 0:  # text to the default (tabular) model
        return "wrong_input_kind", {**base, "text": sentence(index)}
    if slot == 1:  # features to the text model
        return "wrong_input_kind", {**base, "model": "minilm", "features": [1.0] * FEATURES}
    if index % 2:
        return "text", {**base, "model": "minilm", "text": sentence(index)}
    return "tabular", {**base, "features": [float((index + i) % 17) for i in range(FEATURES)]}


@dataclass
class Run:
    expected: dict[str, str]
    texts: dict[str, str]
    outputs: list[Output]
    names: Names


@pytest.fixture(scope="module")
def run(bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    names = Names(uuid.uuid4().hex[:10])
    tmp = tmp_path_factory.mktemp("text")
    create_topics(bootstrap_servers, names)
    count = TABULAR + TEXTS + MISMATCHED
    events = [event(index) for index in range(count)]
    expected = {document["event_id"]: kind for kind, document in events}
    texts = {document["event_id"]: document["text"] for _, document in events if "text" in document}
    env = worker_env(bootstrap_servers, names, tmp, MODEL_NAMES="breast-cancer,minilm", MAX_WAIT_MS="20")
    with running_worker(env, tmp / "worker.log"):
        asyncio.run(produce(bootstrap_servers, names.input_topic, lambda i: orjson.dumps(events[i][1]), count))
        outputs = asyncio.run(
            read_outputs(
                bootstrap_servers,
                (names.output_topic, names.dead_letter_topic),
                lambda seen: len(seen) >= count,
                timeout_s=60,
            )
        )
    yield Run(expected, texts, outputs, names)


def event_id_of(output: Output) -> str:
    if output.topic.endswith(".dlq"):
        return str(orjson.loads(output.value or b"{}")["event_id"])
    return str(output.result["event_id"])


def test_every_event_gets_exactly_one_output(run: Run) -> None:
    counts = Counter(event_id_of(output) for output in run.outputs)
    assert set(counts) == set(run.expected)
    assert {event_id: n for event_id, n in counts.items() if n != 1} == {}


def test_each_result_is_of_its_models_kind(run: Run, result_schema: Draft202012Validator) -> None:
    kinds: Counter[str] = Counter()
    for output in run.outputs:
        if output.topic != run.names.output_topic:
            continue
        result = output.result
        result_schema.validate(result)
        kind = run.expected[result["event_id"]]
        kinds[kind] += 1
        if kind == "text":
            assert result["model_name"] == "minilm"
            assert result["dimension"] == 384 and len(result["embedding"]) == 384
            assert math.sqrt(sum(x * x for x in result["embedding"])) == pytest.approx(1.0, abs=1e-4)
            assert result["prediction"] == pytest.approx(1.0, abs=1e-4)
            assert "label" not in result
        else:
            assert kind == "tabular"
            assert result["model_name"] == "breast-cancer"
            assert result["label"] in ("malignant", "benign") and "embedding" not in result
    assert kinds == Counter(kind for kind in run.expected.values() if kind in ("text", "tabular"))


def test_identical_texts_in_different_batches_get_identical_vectors(run: Run) -> None:
    """Texts repeat across the stream (``sentence`` cycles); padding in different batches must not matter."""
    by_text: dict[str, list[list[float]]] = {}
    for output in run.outputs:
        if output.topic == run.names.output_topic and "embedding" in output.result:
            text = run.texts[output.result["event_id"]]
            by_text.setdefault(text, []).append(output.result["embedding"])
    repeated = [vectors for vectors in by_text.values() if len(vectors) > 1]
    assert repeated, "the stream should repeat some texts"
    for vectors in repeated:
        for vector in vectors[1:]:
            assert max(abs(a - b) for a, b in zip(vector, vectors[0], strict=True)) < 1e-4


def test_mismatched_inputs_are_dead_lettered_with_the_reason(run: Run) -> None:
    dead = [output for output in run.outputs if output.topic == run.names.dead_letter_topic]
    assert sorted(event_id_of(o) for o in dead) == sorted(e for e, k in run.expected.items() if k == "wrong_input_kind")
    for output in dead:
        headers = {name: value.decode() for name, value in output.headers}
        assert headers["dlq.error.class"] == "wrong_input_kind"
        document = orjson.loads(output.value or b"{}")
        if "text" in document:
            assert headers["dlq.model.name"] == "breast-cancer"
            assert "carries text" in headers["dlq.error.reason"] and "takes features" in headers["dlq.error.reason"]
        else:
            assert headers["dlq.model.name"] == "minilm"
            assert "carries features" in headers["dlq.error.reason"] and "takes text" in headers["dlq.error.reason"]


def test_worker_log_shows_text_model_on_the_model_thread(run: Run, tmp_path_factory: pytest.TempPathFactory) -> None:
    logs = list(Path(tmp_path_factory.getbasetemp()).glob("text*/worker.log"))
    assert logs
    log = logs[0].read_text()
    assert "model minilm/1 warm" in log and "forwards on the model thread" in log.split("model minilm/1 warm")[1]
