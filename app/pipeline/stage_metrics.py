"""The pipeline's counts and Prometheus metrics, fed at the boundaries between its stages.

The stages call one of these hooks per group of records (a submitted chunk, a batch, a delivered
group), not per record, and never touch a metric themselves: what is measured, and under which
labels, is decided here alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from app.metrics import Metrics, observe_many
from app.models.runner import Runner
from app.pipeline.admission import Admitted, Refused
from app.pipeline.outputs import Confirmation, DeadLettered, Predicted

MODEL_STAGES = ("tokenize", "inputs", "forward", "outputs")


@dataclass(slots=True)
class PipelineCounts:
    consumed: int = 0
    predicted: int = 0
    dead_lettered: int = 0
    batches: int = 0


class BatchCallbacks(NamedTuple):
    """What one model version's batcher reports."""

    on_forward: Callable[[float], None]
    """The seconds one batched forward took."""
    on_batch: Callable[[list[float]], None]
    """A batch starts: how long each of its records waited for it."""
    on_stages: Callable[[Mapping[str, float]], None]
    """The seconds of each stage of one batched model call (the runner's ``on_stages``; any thread)."""


class StageMetrics:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.counts = PipelineCounts()

    def on_admitted(self, admissions: Sequence[Admitted | Refused]) -> None:
        """Records were read and admitted (or refused): they are in flight until acked."""
        self.counts.consumed += len(admissions)
        self._metrics.in_flight.inc(len(admissions))
        per_topic: dict[str, int] = {}
        for admission in admissions:
            topic = admission.record.source.topic
            per_topic[topic] = per_topic.get(topic, 0) + 1
        for topic, count in per_topic.items():
            self._metrics.events_consumed.labels(topic).inc(count)

    def on_cache_lookups(self, admissions: Sequence[Admitted | Refused]) -> None:
        """Admission looked these records up in the result cache (those it admitted)."""
        hits: dict[Runner, int] = {}
        misses: dict[Runner, int] = {}
        for admission in admissions:
            if isinstance(admission, Admitted):
                counts = misses if admission.cached is None else hits
                counts[admission.runner] = counts.get(admission.runner, 0) + 1
        for runner, count in hits.items():
            self._metrics.cache_hits.labels(runner.metadata.name, runner.metadata.version).inc(count)
        for runner, count in misses.items():
            self._metrics.cache_misses.labels(runner.metadata.name, runner.metadata.version).inc(count)

    def batch_callbacks(self, runner: Runner) -> BatchCallbacks:
        """For the batcher of ``runner``, from its start."""
        name, version = runner.metadata.name, runner.metadata.version
        compute = self._metrics.compute.labels(name, version)
        batch_size = self._metrics.batch_size.labels(name, version)
        queue_wait = self._metrics.queue_wait.labels(name, version)

        def on_batch(waits_s: list[float]) -> None:
            self.counts.batches += 1
            batch_size.observe(len(waits_s))
            observe_many(queue_wait, waits_s)

        stages = {stage: self._metrics.model_stages.labels(name, version, stage) for stage in MODEL_STAGES}

        def on_stages(seconds: Mapping[str, float]) -> None:
            for stage, value in seconds.items():
                histogram = stages.get(stage)
                if histogram is not None:
                    histogram.observe(value)

        return BatchCallbacks(compute.observe, on_batch, on_stages)

    def on_shadow_failed(self, runner: Runner) -> None:
        self._metrics.shadow_errors.labels(runner.metadata.name, runner.metadata.version).inc()

    def on_delivered(self, confirmations: Sequence[Confirmation]) -> None:
        """The broker acknowledged these outputs and their inputs were acked: they are no longer in flight."""
        predicted: dict[Runner, list[float]] = {}
        dead_letters: dict[tuple[str, str, str], int] = {}
        shadows: dict[Runner, int] = {}
        for item in confirmations:
            if isinstance(item, Predicted):
                latencies = predicted.get(item.runner)
                if latencies is None:
                    predicted[item.runner] = [item.latency_s]
                else:
                    latencies.append(item.latency_s)
            elif isinstance(item, DeadLettered):
                metadata = item.runner.metadata
                key = (metadata.name, metadata.version, item.error.error_class)
                dead_letters[key] = dead_letters.get(key, 0) + 1
            else:
                shadows[item.runner] = shadows.get(item.runner, 0) + 1
        for runner, latencies in predicted.items():
            self._metrics.predictions.labels(runner.metadata.name, runner.metadata.version).inc(len(latencies))
            end_to_end = self._metrics.end_to_end.labels(runner.metadata.name, runner.metadata.version)
            observe_many(end_to_end, (max(latency_s, 0.0) for latency_s in latencies))
        for (model, version, error_class), count in dead_letters.items():
            self._metrics.dead_letters.labels(model, version, error_class).inc(count)
        for runner, count in shadows.items():
            self._metrics.shadow_predictions.labels(runner.metadata.name, runner.metadata.version).inc(count)
        predicted_count = sum(len(latencies) for latencies in predicted.values())
        dead_lettered = sum(dead_letters.values())
        self.counts.predicted += predicted_count
        self.counts.dead_lettered += dead_lettered
        self._metrics.in_flight.dec(predicted_count + dead_lettered)
