"""Every Prometheus metric the worker exports, declared in one place against one registry.

Names follow Prometheus conventions: the ``inference_`` namespace, snake_case, base units
(seconds), ``_total`` for counters. Queue wait and model compute are separate histograms, as
Triton splits them. Tests create a fresh ``Metrics`` (and registry) each.

Labels are the same names everywhere: ``model`` and ``version`` on every metric about a model
version's records, so a canary (a 90/10 split) compares per version in PromQL; ``reason`` is a
dead letter's ``dlq.error.class``. The series of a version are created at 0 when it is loaded
(``add_model_version``), and those of the input topic at start (``add_input_topic``), so a rate
or a ratio has data before the first event, and a counter's first increment is seen as one. The
registry also holds the standard process and Python collectors (``process_*``, ``python_*``).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from app.errors import ERROR_CLASSES

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
FAST_SECONDS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
LATENCY_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    content_type = "text/plain; version=0.0.4"  # the text exposition format (UTF-8)

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.events_consumed = Counter(
            "inference_events_consumed_total", "Input records read from Kafka.", ["topic"], registry=r
        )
        self.predictions = Counter(
            "inference_predictions_total",
            "PredictionResult records acknowledged by the broker.",
            ["model", "version"],
            registry=r,
        )
        self.dead_letters = Counter(
            "inference_dead_letters_total",
            "Records dead-lettered (acknowledged by the broker), by reason and the model version they were meant "
            "for (the one they named or were routed to, else the default model's serving version).",
            ["model", "version", "reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "inference_batch_size",
            "Records per model forward.",
            ["model", "version"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "inference_queue_wait_seconds",
            "Time a record waited for its batch's forward to start.",
            ["model", "version"],
            buckets=FAST_SECONDS_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            "inference_model_compute_seconds",
            "Duration of one batched model forward.",
            ["model", "version"],
            buckets=FAST_SECONDS_BUCKETS,
            registry=r,
        )
        self.model_stages = Histogram(
            "inference_model_stage_seconds",
            "Duration of one stage of a batched model call: tokenize (text models) or inputs (the input tensor), "
            "forward (until the device is done), outputs (results back on the host).",
            ["model", "version", "stage"],
            buckets=FAST_SECONDS_BUCKETS,
            registry=r,
        )
        self.end_to_end = Histogram(
            "inference_end_to_end_latency_seconds",
            "From the event's timestamp to publishing its prediction.",
            ["model", "version"],
            buckets=LATENCY_SECONDS_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "inference_records_in_flight",
            "Records read but not yet acknowledged (bounded by MAX_IN_FLIGHT).",
            registry=r,
        )
        self.output_unacknowledged = Gauge(
            "inference_output_unacknowledged_seconds",
            "How long the oldest output has waited for the brokers' acknowledgement (0 when none waits); "
            "it grows while the brokers take no writes (a lost majority, min.insync.replicas not met).",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "inference_consumer_lag",
            "Records behind the partition's high watermark (autoscaling signal).",
            ["topic", "partition"],
            registry=r,
        )
        self.model_info = Gauge(
            "inference_model_info",
            "Loaded models: always 1, the labels carry the facts.",
            ["model", "version", "device"],
            registry=r,
        )
        self.model_load_failures = Counter(
            "inference_model_load_failures_total",
            "Model versions that failed to load or warm at run time (the previous route kept serving).",
            ["model", "version"],
            registry=r,
        )
        self.shadow_predictions = Counter(
            "inference_shadow_predictions_total",
            "Shadow results acknowledged by the broker on the shadow topic.",
            ["model", "version"],
            registry=r,
        )
        self.shadow_errors = Counter(
            "inference_shadow_errors_total",
            "Records a shadow version failed to predict (the served result is unaffected).",
            ["model", "version"],
            registry=r,
        )
        self.cache_hits = Counter(
            "inference_result_cache_hits_total",
            "Results served from the result cache.",
            ["model", "version"],
            registry=r,
        )
        self.cache_misses = Counter(
            "inference_result_cache_misses_total",
            "Result cache lookups that needed a forward.",
            ["model", "version"],
            registry=r,
        )
        self.worker_up = Gauge("inference_worker_up", "1 while the worker runs.", registry=r)
        self.stats_windows_closed = Counter(
            "inference_stats_windows_closed_total", "WindowStats records published.", ["model", "version"], registry=r
        )
        self.stats_dropped = Counter(
            "inference_stats_dropped_observations_total",
            "Predictions or dead letters left out of the window statistics, by reason: late (they arrived "
            "after their window was handed over to be published) or duplicate (an input record read again "
            "after a crash or rebalance, already counted).",
            ["reason"],
            registry=r,
        )
        for reason in ("late", "duplicate"):
            self.stats_dropped.labels(reason)

    def add_model_version(self, model: str, version: str) -> None:
        """Create a loaded version's series at 0 (idempotent), so they exist before its first record."""
        for metric in (
            self.predictions,
            self.batch_size,
            self.queue_wait,
            self.compute,
            self.end_to_end,
            self.shadow_predictions,
            self.shadow_errors,
            self.cache_hits,
            self.cache_misses,
            self.stats_windows_closed,
        ):
            metric.labels(model, version)
        for reason in ERROR_CLASSES:
            self.dead_letters.labels(model, version, reason)

    def add_input_topic(self, topic: str) -> None:
        """Create the input topic's series at 0."""
        self.events_consumed.labels(topic)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def observe_many(histogram: Histogram, amounts: Iterable[float]) -> None:
    """``histogram.observe`` each amount (a labelled child), with one increment per bucket touched rather
    than one locked increment per amount: the pipeline observes every record's latency and queue wait.
    Falls back to ``observe`` when prometheus_client's histogram keeps its buckets otherwise."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None:
        for amount in amounts:
            histogram.observe(amount)
        return
    counts: dict[int, int] = {}
    amount_sum = 0.0
    for amount in amounts:
        index = bisect.bisect_left(bounds, amount)  # the first bound >= amount, as observe() picks
        counts[index] = counts.get(index, 0) + 1
        amount_sum += amount
    if not counts:
        return
    total.inc(amount_sum)
    for index, count in counts.items():
        buckets[index].inc(count)
