"""Metric names and labels follow Prometheus conventions, each Metrics has its own registry, and a
loaded version's series exist at 0 before its first record."""

from __future__ import annotations

import re

from app.errors import ERROR_CLASSES
from app.metrics import Metrics, observe_many

STANDARD_PREFIXES = ("process_", "python_")
"""prometheus_client's process, platform and GC collectors."""


def families(metrics: Metrics) -> dict[str, str]:
    return {family.name: family.type for family in metrics.registry.collect()}


def test_names_follow_prometheus_conventions() -> None:
    metrics = Metrics()
    names = families(metrics)
    assert names  # every metric declared in app/metrics.py is registered
    for name, kind in names.items():
        assert re.fullmatch(r"(inference|process|python)_[a-z0-9_]+", name), name
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
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "python_gc_collections_total",
        "python_info",
    ):
        assert f"# TYPE {required} " in text


def label_names(metrics: Metrics) -> dict[str, tuple[str, ...]]:
    """The label names of each inference_ metric, as declared."""
    collectors = vars(metrics).values()
    return {
        collector._name: tuple(collector._labelnames)
        for collector in collectors
        if hasattr(collector, "_labelnames") and collector._name.startswith("inference_")
    }


def test_every_per_model_metric_is_labelled_model_and_version() -> None:
    labels = label_names(Metrics())
    per_model = {name: names for name, names in labels.items() if {"model", "name", "version"} & set(names)}
    assert "inference_model_info" in per_model and "inference_dead_letters" in per_model  # counters: no _total
    for name, names in per_model.items():
        assert names[:2] == ("model", "version"), f"{name} is labelled {names}"


def test_a_loaded_version_has_its_series_at_zero_before_its_first_record() -> None:
    metrics = Metrics()
    metrics.add_model_version("m", "2")
    metrics.add_input_topic("events")
    version = {"model": "m", "version": "2"}
    sample = metrics.registry.get_sample_value
    assert sample("inference_predictions_total", version) == 0
    assert sample("inference_end_to_end_latency_seconds_count", version) == 0
    assert sample("inference_end_to_end_latency_seconds_bucket", {**version, "le": "+Inf"}) == 0
    assert sample("inference_queue_wait_seconds_count", version) == 0
    assert sample("inference_batch_size_count", version) == 0
    assert sample("inference_model_compute_seconds_count", version) == 0
    assert sample("inference_shadow_predictions_total", version) == 0
    assert sample("inference_events_consumed_total", {"topic": "events"}) == 0
    for reason in ERROR_CLASSES:
        assert sample("inference_dead_letters_total", {**version, "reason": reason}) == 0
    assert sample("inference_predictions_total", {"model": "m", "version": "1"}) is None  # not loaded


def test_registries_are_independent() -> None:
    first, second = Metrics(), Metrics()
    first.predictions.labels("m", "1").inc(3)
    assert first.registry.get_sample_value("inference_predictions_total", {"model": "m", "version": "1"}) == 3
    assert second.registry.get_sample_value("inference_predictions_total", {"model": "m", "version": "1"}) is None


def test_observe_many_matches_observing_one_at_a_time() -> None:
    one, many = Metrics(), Metrics()
    amounts = [0.0, 0.004, 0.005, 0.0051, 0.3, 2.5, 100.0, 0.01, 0.01]
    for amount in amounts:
        one.end_to_end.labels("m", "1").observe(amount)
    observe_many(many.end_to_end.labels("m", "1"), amounts)
    observe_many(many.end_to_end.labels("m", "1"), [])
    assert samples(one, "inference_end_to_end_latency_seconds") == samples(many, "inference_end_to_end_latency_seconds")


def samples(metrics: Metrics, family: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for metric in metrics.registry.collect()
        if metric.name == family
        for sample in metric.samples
        if not sample.name.endswith("_created")
    ]
