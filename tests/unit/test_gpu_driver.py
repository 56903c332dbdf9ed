"""benchmarks/gpu.py's arithmetic: the steady-rate window, finding an event id in a result or dead
letter without parsing it, and the per-stage breakdown from the workers' /metrics. The whole driver
runs against tansu and real workers in its dry run (README, "On a GPU machine")."""

from __future__ import annotations

import orjson
import pytest

from app.metrics import Metrics
from benchmarks.gpu import breakdown, event_id_of, parse_metrics, window_rate


def test_window_rate_interpolates_between_polls() -> None:
    timeline = [(0.0, 0.0), (1.0, 100.0), (2.0, 300.0), (3.0, 500.0)]
    assert window_rate(timeline, 100.0, 500.0) == pytest.approx(200.0)
    assert window_rate(timeline, 50.0, 400.0) == pytest.approx(350.0 / 2.0)
    assert window_rate(timeline, 100.0, 900.0) == 0.0  # never reached: no rate rather than a wrong one


def test_event_id_of_a_result_a_dead_letter_and_anything_else() -> None:
    vector = [0.25] * 384
    assert event_id_of(orjson.dumps({"event_id": "r-1", "embedding": vector})) == "r-1"
    assert event_id_of(orjson.dumps({"user_id": "u", "event_id": "r-2", "text": "x"})) == "r-2"
    assert event_id_of(b"\xff\xfe not json") is None


def test_breakdown_sums_replicas_and_divides_per_batch() -> None:
    replicas = []
    for _ in range(2):
        metrics = Metrics()
        metrics.compute.labels("m", "1").observe(0.004)
        metrics.batch_size.labels("m", "1").observe(200)
        for stage, seconds in (("tokenize", 0.002), ("forward", 0.001), ("outputs", 0.0005)):
            metrics.model_stages.labels("m", "1", stage).observe(seconds)
        metrics.model_stages.labels("m", "1", "inputs")  # a stage this model has not: left out
        replicas.append(parse_metrics(metrics.exposition().decode()))
    result = breakdown(replicas, wall_s=1.0)
    assert result["batches"] == 2 and result["mean_batch_size"] == 200.0
    assert result["model_call_ms_per_batch"] == pytest.approx(4.0)
    assert result["stages_ms_per_batch"] == {"forward": 1.0, "outputs": 0.5, "tokenize": 2.0}
    assert result["outside_model_s"] == pytest.approx(2.0 - 0.008)
