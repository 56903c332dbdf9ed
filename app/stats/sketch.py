"""A mergeable quantile sketch with bounded relative error (the DDSketch idea).

Values fall into logarithmic buckets ``gamma**(i-1) < v <= gamma**i`` with
``gamma = (1 + a) / (1 - a)``; any quantile read back is within relative error ``a`` of a
true sample value. Buckets are a plain ``{index: count}`` dict, so a sketch is JSON-serialisable
(it lives in a Faust table) and two sketches merge by adding counts.
"""

from __future__ import annotations

import math
from typing import Any

DEFAULT_RELATIVE_ACCURACY = 0.01
MIN_TRACKED = 1e-9  # values at or below this (latencies of zero) share one bucket


class QuantileSketch:
    def __init__(self, relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY) -> None:
        if not 0 < relative_accuracy < 1:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {relative_accuracy}")
        self.relative_accuracy = relative_accuracy
        self._gamma = (1 + relative_accuracy) / (1 - relative_accuracy)
        self._log_gamma = math.log(self._gamma)
        self.buckets: dict[int, int] = {}
        self.zeros = 0
        self.count = 0

    def add(self, value: float) -> None:
        self.count += 1
        if value <= MIN_TRACKED:
            self.zeros += 1
            return
        index = math.ceil(math.log(value) / self._log_gamma)
        self.buckets[index] = self.buckets.get(index, 0) + 1

    def merge(self, other: QuantileSketch) -> None:
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError("cannot merge sketches of different accuracy")
        for index, count in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + count
        self.zeros += other.zeros
        self.count += other.count

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0 <= q <= 1), or None for an empty sketch."""
        if self.count == 0:
            return None
        rank = q * (self.count - 1)
        seen = self.zeros
        if rank < seen:
            return 0.0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if rank < seen:
                # The bucket's midpoint in relative terms: within relative_accuracy of every value in it.
                return 2 * self._gamma**index / (self._gamma + 1)
        return 2 * self._gamma ** max(self.buckets) / (self._gamma + 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.relative_accuracy,
            "zeros": self.zeros,
            "buckets": {str(k): v for k, v in self.buckets.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantileSketch:
        sketch = cls(data["a"])
        sketch.buckets = {int(k): int(v) for k, v in data["buckets"].items()}
        sketch.zeros = int(data["zeros"])
        sketch.count = sketch.zeros + sum(sketch.buckets.values())
        return sketch
