"""The README's bring-your-own-model example, end to end: examples/byom/train_iris.py trains a
scikit-learn pipeline and exports it to ONNX with its metadata.json; a worker serves it from its own
MODEL_DIR; events with positional and with named features get the probabilities scikit-learn
computes (read from the ONNX output the metadata names, not softmaxed again)."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from pathlib import Path

import orjson
import pytest

from tests.conftest import ROOT, load_byom_example
from tests.integration.conftest import Names, create_topics, running_worker, worker_env
from tests.integration.streams import Record, produce, read_outputs


def test_a_scikit_learn_model_exported_to_onnx_serves_positional_and_named_features(
    bootstrap_servers: str, names: Names, tmp_path: Path
) -> None:
    example = load_byom_example()
    model = example.train()
    folder = example.export(model, tmp_path / "models")
    readme = (ROOT / "README.md").read_text()
    shown = re.search(r"<!-- metadata: iris -->\n```json\n(.*?)```", readme, re.DOTALL)
    assert shown, "README's bring-your-own-model section shows the example's metadata.json"
    assert json.loads(shown[1]) == json.loads((folder / "metadata.json").read_text())

    rng = random.Random(7)
    rows = [[round(rng.uniform(4.0, 8.0), 2), round(rng.uniform(2.0, 4.5), 2), round(rng.uniform(1.0, 7.0), 2),
             round(rng.uniform(0.1, 2.5), 2)] for _ in range(40)]  # fmt: skip
    records = []
    for index, row in enumerate(rows):
        named = dict(zip(example.FEATURE_NAMES, row, strict=True))
        shuffled = dict(rng.sample(sorted(named.items()), len(named)))  # order does not matter, names do
        event = {
            "event_id": f"e-{index}",
            "user_id": f"u-{index % 5}",
            "timestamp": int(time.time() * 1000),
            "features": row if index % 2 else shuffled,
        }
        records.append(Record(orjson.dumps(event), f"u-{index % 5}".encode()))
    missing = {"event_id": "bad", "user_id": "u", "timestamp": 1, "features": {"sepal_length": 5.0}}
    records.append(Record(orjson.dumps(missing)))

    create_topics(bootstrap_servers, names)
    env = worker_env(bootstrap_servers, names, tmp_path, MODEL_DIR=str(tmp_path / "models"), MODEL_NAMES="iris")
    with running_worker(env, tmp_path / "worker.log"):
        asyncio.run(produce(bootstrap_servers, names.input_topic, records))
        outputs = asyncio.run(
            read_outputs(
                bootstrap_servers, (names.output_topic, names.dead_letter_topic), lambda got: len(got) >= len(records)
            )
        )
    results = {o.result["event_id"]: o.result for o in outputs if o.topic == names.output_topic}
    (dead,) = [o for o in outputs if o.topic == names.dead_letter_topic]
    expected = model.predict_proba(rows)
    labels = list(example.load_iris().target_names)
    assert sorted(results) == sorted(f"e-{i}" for i in range(len(rows)))
    for index, probabilities in enumerate(expected):
        result = results[f"e-{index}"]
        assert list(result["probabilities"].values()) == pytest.approx(probabilities.tolist(), abs=1e-5)
        assert result["label"] == labels[int(probabilities.argmax())]
        assert result["prediction"] == pytest.approx(probabilities.max(), abs=1e-5)
        assert (result["model_name"], result["model_version"]) == ("iris", "1")
    headers = dict(dead.headers)
    assert headers["dlq.error.class"] == b"wrong_feature_names"
    assert b"needs 3 more: 'sepal_width', 'petal_length', 'petal_width'" in headers["dlq.error.reason"]
