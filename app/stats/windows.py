"""Tumbling event-time windows of prediction statistics: pure logic, no Faust.

An ``Observation`` is one prediction or dead letter reduced to what statistics need. A
``WindowAggregate`` accumulates observations of one (model, version, window) from one source
partition; it remembers the highest offset it has applied per source, so replaying records
after a crash or a rebalance never counts one twice. Partial aggregates of all source
partitions ``merge`` into the window's total once every source's watermark has passed the
window's end plus the allowed lateness; ``window_stats`` turns that into the WindowStats
record (schemas/window_stats.schema.json).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from app.records.observations import Observation, SourcePartition
from app.stats.sketch import QuantileSketch

STATS_SCHEMA_VERSION = 1
PSI_EPSILON = 1e-4  # smooths empty bins so PSI stays finite


def window_start_ms(event_time_ms: float, size_ms: int) -> int:
    return int(event_time_ms // size_ms) * size_ms


class WindowKey(NamedTuple):
    """One (model, version, window): the key of a WindowStats record, ``<model>|<version>|<start ms>``."""

    model_name: str
    model_version: str
    start_ms: int

    def encode(self) -> bytes:
        return f"{self.model_name}|{self.model_version}|{self.start_ms}".encode()


class PartialKey(NamedTuple):
    """One source partition's share of a window: ``<window key>|<topic:partition>``."""

    window: WindowKey
    source: str

    @property
    def partition(self) -> int:
        return SourcePartition.parse(self.source).partition

    def encode(self) -> bytes:
        return self.window.encode() + b"|" + self.source.encode()

    @classmethod
    def decode(cls, key: bytes) -> PartialKey:
        name, version, start_ms, source = key.decode().rsplit("|", 3)
        return cls(WindowKey(name, version, int(start_ms)), source)


@dataclass
class WindowAggregate:
    model_name: str
    model_version: str
    start_ms: int
    end_ms: int
    count: int = 0
    dead_letters: int = 0
    prediction_sum: float = 0.0
    prediction_min: float | None = None
    prediction_max: float | None = None
    labels: dict[str, int] = field(default_factory=dict)
    latency: QuantileSketch = field(default_factory=QuantileSketch)
    batch_size_sum: int = 0
    histogram: list[int] = field(default_factory=list)
    applied: dict[str, int] = field(default_factory=dict)
    closed: bool = False

    def has_applied(self, observation: Observation) -> bool:
        """Whether this observation's input record (or a later one of its source) is already counted.

        A source's records are applied in offset order, so a lower offset is a record read again."""
        return self.applied.get(observation.source, -1) >= observation.offset

    def apply(self, observation: Observation, bin_edges: list[float] | None) -> bool:
        """Add one observation; False (and no change) when it was already applied."""
        if self.has_applied(observation):
            return False
        self.applied[observation.source] = observation.offset
        if observation.dead_letter:
            self.dead_letters += 1
            return True
        self.count += 1
        prediction = observation.prediction if observation.prediction is not None else math.nan
        self.prediction_sum += prediction
        self.prediction_min = prediction if self.prediction_min is None else min(self.prediction_min, prediction)
        self.prediction_max = prediction if self.prediction_max is None else max(self.prediction_max, prediction)
        if observation.label is not None:
            self.labels[observation.label] = self.labels.get(observation.label, 0) + 1
        if observation.latency_ms is not None:
            self.latency.add(observation.latency_ms)
        self.batch_size_sum += observation.batch_size or 0
        if bin_edges:
            if not self.histogram:
                self.histogram = [0] * (len(bin_edges) - 1)
            self.histogram[bin_index(prediction, bin_edges)] += 1
        return True

    def is_due(self, watermark_ms: float, lateness_ms: int) -> bool:
        return not self.closed and watermark_ms >= self.end_ms + lateness_ms

    def merge(self, other: WindowAggregate) -> None:
        """Add another source's partial aggregate of the same window."""
        self.count += other.count
        self.dead_letters += other.dead_letters
        self.prediction_sum += other.prediction_sum
        for mine, theirs, pick in (
            ("prediction_min", other.prediction_min, min),
            ("prediction_max", other.prediction_max, max),
        ):
            current = getattr(self, mine)
            if theirs is not None:
                setattr(self, mine, theirs if current is None else pick(current, theirs))
        for label, count in other.labels.items():
            self.labels[label] = self.labels.get(label, 0) + count
        self.latency.merge(other.latency)
        self.batch_size_sum += other.batch_size_sum
        if other.histogram:
            self.histogram = [
                a + b for a, b in zip(self.histogram or [0] * len(other.histogram), other.histogram, strict=True)
            ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "count": self.count,
            "dead_letters": self.dead_letters,
            "prediction_sum": self.prediction_sum,
            "prediction_min": self.prediction_min,
            "prediction_max": self.prediction_max,
            "labels": self.labels,
            "latency": self.latency.to_dict(),
            "batch_size_sum": self.batch_size_sum,
            "histogram": self.histogram,
            "applied": self.applied,
            "closed": self.closed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WindowAggregate:
        return cls(**{**data, "latency": QuantileSketch.from_dict(data["latency"])})


def bin_index(value: float, edges: list[float]) -> int:
    """Index of the histogram bin holding value; values outside the edges go to the end bins."""
    index = bisect.bisect_right(edges, value) - 1
    return min(max(index, 0), len(edges) - 2)


def population_stability_index(expected: list[float], observed_counts: list[int]) -> float | None:
    """PSI of the observed distribution against the expected fractions (same bins)."""
    total = sum(observed_counts)
    if total == 0 or len(expected) != len(observed_counts):
        return None
    psi = 0.0
    for reference, count in zip(expected, observed_counts, strict=True):
        p = max(reference, PSI_EPSILON)
        q = max(count / total, PSI_EPSILON)
        psi += (q - p) * math.log(q / p)
    return psi


def _iso(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000.0, UTC).isoformat(timespec="milliseconds")


def window_stats(
    aggregate: WindowAggregate, reference: Mapping[str, Any] | None, closed_at_ms: float
) -> dict[str, Any]:
    """The WindowStats record published when a window closes."""
    total = aggregate.count + aggregate.dead_letters
    fractions = (reference or {}).get("fractions")
    psi = population_stability_index(fractions, aggregate.histogram) if fractions and aggregate.histogram else None
    latency: dict[str, float | int | None] = {
        f"p{int(q * 100)}": aggregate.latency.quantile(q) for q in (0.5, 0.95, 0.99)
    }
    latency["count"] = aggregate.latency.count
    return {
        "model_name": aggregate.model_name,
        "model_version": aggregate.model_version,
        "window_start": _iso(aggregate.start_ms),
        "window_end": _iso(aggregate.end_ms),
        "count": aggregate.count,
        "dead_letter_count": aggregate.dead_letters,
        "error_rate": aggregate.dead_letters / total if total else 0.0,
        "prediction": {
            "mean": aggregate.prediction_sum / aggregate.count if aggregate.count else None,
            "min": aggregate.prediction_min,
            "max": aggregate.prediction_max,
        },
        "labels": aggregate.labels,
        "latency_ms": latency,
        "batch_size_mean": aggregate.batch_size_sum / aggregate.count if aggregate.count else None,
        "drift": {"metric": "psi", "value": psi, "bins": len(aggregate.histogram)},
        "closed_at": _iso(closed_at_ms),
        "schema_version": STATS_SCHEMA_VERSION,
    }
