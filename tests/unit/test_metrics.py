"""Metric names follow Prometheus conventions and each Metrics has its own registry."""

from __future__ import annotations

import re

from app.metrics import Metrics


def test_names_follow_prometheus_conventions() -> None:
    metrics = Metrics()
    names = {family.name: family.type for family in metrics.registry.collect()}
    assert names  # every metric declared in app/metrics.py is registered
    for name, kind in names.items():
        assert re.fullmatch(r"inference_[a-z0-9_]+", name), name
        if kind == "counter":
            assert not name.endswith("_total")  # the client appends _total to counters itself
    text = metrics.exposition().decode()
    for required in (
        "inference_events_consumed_total",
        "inference_predictions_total",
        "inference_dead_letters_total",
        "inference_batch_size",
        "inference_queue_wait_seconds",
        "inference_model_compute_seconds",
        "inference_end_to_end_latency_seconds",
        "inference_records_in_flight",
        "inference_consumer_lag",
        "inference_model_info",
        "inference_worker_up",
    ):
        assert f"# TYPE {required} " in text


def test_registries_are_independent() -> None:
    first, second = Metrics(), Metrics()
    first.predictions.labels("m", "1").inc(3)
    assert first.registry.get_sample_value("inference_predictions_total", {"model": "m", "version": "1"}) == 3
    assert second.registry.get_sample_value("inference_predictions_total", {"model": "m", "version": "1"}) is None
