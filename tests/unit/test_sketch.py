"""The quantile sketch stays within its relative error on skewed data, and merges exactly."""

from __future__ import annotations

import random

import pytest

from app.stats.sketch import QuantileSketch


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


@pytest.mark.parametrize("q", [0.5, 0.9, 0.95, 0.99, 0.999])
def test_quantiles_are_within_the_relative_error(q: float) -> None:
    rng = random.Random(3)
    values = [rng.lognormvariate(3.0, 1.2) for _ in range(50_000)]  # latency-like: long right tail
    sketch = QuantileSketch(0.01)
    for value in values:
        sketch.add(value)
    estimate = sketch.quantile(q)
    assert estimate is not None
    assert estimate == pytest.approx(exact_quantile(values, q), rel=0.0101)


def test_a_mean_would_be_wrong_where_the_sketch_is_right() -> None:
    values = [1.0] * 990 + [1000.0] * 10
    sketch = QuantileSketch()
    for value in values:
        sketch.add(value)
    assert sketch.quantile(0.5) == pytest.approx(1.0, rel=0.01)
    assert sketch.quantile(0.995) == pytest.approx(1000.0, rel=0.01)


def test_merge_equals_one_sketch_of_everything_and_survives_serialisation() -> None:
    rng = random.Random(5)
    left, right, whole = QuantileSketch(), QuantileSketch(), QuantileSketch()
    for i in range(5000):
        value = rng.expovariate(0.1)
        (left if i % 2 else right).add(value)
        whole.add(value)
    left.merge(QuantileSketch.from_dict(right.to_dict()))
    assert left.count == whole.count == 5000
    for q in (0.1, 0.5, 0.99):
        assert left.quantile(q) == whole.quantile(q)


def test_zeros_and_empty() -> None:
    sketch = QuantileSketch()
    assert sketch.quantile(0.5) is None
    sketch.add(0.0)
    sketch.add(0.0)
    sketch.add(5.0)
    assert sketch.quantile(0.0) == 0.0
    assert sketch.quantile(1.0) == pytest.approx(5.0, rel=0.01)
