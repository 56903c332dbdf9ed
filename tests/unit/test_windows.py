"""Window aggregation: counting, replay without double counting, closing, drift, and the schema."""

from __future__ import annotations

import math

import pytest
from jsonschema import Draft202012Validator

from app.records.observations import Observation
from app.stats.agents import SourceClock
from app.stats.windows import (
    PartialKey,
    WindowAggregate,
    WindowKey,
    bin_index,
    population_stability_index,
    window_start_ms,
    window_stats,
)

EDGES = [0.0, 0.25, 0.5, 0.75, 1.0]
REFERENCE = {"bin_edges": EDGES, "fractions": [0.25, 0.25, 0.25, 0.25]}


def prediction(offset: int, value: float, source: str = "predictions:0", label: str = "yes") -> Observation:
    return Observation(
        "m", "1", 1_000.0, source, offset, prediction=value, label=label, latency_ms=10.0 + offset, batch_size=8
    )


def aggregate() -> WindowAggregate:
    return WindowAggregate("m", "1", 0, 60_000)


def test_window_start_is_aligned() -> None:
    assert window_start_ms(59_999, 60_000) == 0
    assert window_start_ms(60_000, 60_000) == 60_000


def test_counts_predictions_and_dead_letters() -> None:
    window = aggregate()
    for offset, value in enumerate([0.1, 0.9, 0.6]):
        assert window.apply(prediction(offset, value), EDGES)
    assert window.apply(Observation("m", "1", 1_000.0, "events.dlq:1", 7, dead_letter=True), EDGES)
    stats = window_stats(window, REFERENCE, closed_at_ms=61_000)
    assert (stats["count"], stats["dead_letter_count"]) == (3, 1)
    assert stats["error_rate"] == pytest.approx(0.25)
    assert stats["prediction"] == {"mean": pytest.approx(1.6 / 3), "min": 0.1, "max": 0.9}
    assert stats["labels"] == {"yes": 3}
    assert stats["batch_size_mean"] == 8
    assert stats["latency_ms"]["p50"] == pytest.approx(11.0, rel=0.01)


def test_replayed_observations_are_not_counted_twice() -> None:
    window = aggregate()
    for offset in range(5):
        window.apply(prediction(offset, 0.5), EDGES)
    replay = [window.apply(prediction(offset, 0.5), EDGES) for offset in range(3, 8)]
    assert replay == [False, False, True, True, True]
    assert window.count == 8
    # Offsets are tracked per source partition: the same offset elsewhere is a different record.
    assert window.apply(prediction(0, 0.5, source="predictions:1"), EDGES)


def test_state_survives_a_round_trip_through_the_table() -> None:
    window = aggregate()
    for offset in range(4):
        window.apply(prediction(offset, offset / 4), EDGES)
    restored = WindowAggregate.from_dict(window.to_dict())
    assert restored.to_dict() == window.to_dict()
    assert not restored.apply(prediction(3, 0.1), EDGES)


def test_closes_only_after_end_plus_lateness() -> None:
    window = aggregate()
    assert not window.is_due(watermark_ms=69_999, lateness_ms=10_000)
    assert window.is_due(watermark_ms=70_000, lateness_ms=10_000)
    window.closed = True
    assert not window.is_due(watermark_ms=99_999, lateness_ms=10_000)


def test_watermark_follows_event_time_and_the_wall_clock_only_when_caught_up_and_idle() -> None:
    clock = SourceClock(idle_grace_s=5)
    assert clock.watermark("p:0", now_ms=0, caught_up=False) is None
    assert clock.watermark("p:1", now_ms=100_000, caught_up=True) is None  # just assigned: a grace first
    assert clock.watermark("p:1", now_ms=105_000, caught_up=True) == 100_000  # empty and caught up
    clock.observe("p:0", event_time_ms=1_000, now_ms=100_000)
    clock.observe("p:0", event_time_ms=900, now_ms=100_500)  # out of order: the watermark does not go back
    assert clock.watermark("p:0", now_ms=104_000, caught_up=True) == 1_000  # briefly quiet: event time only
    assert clock.watermark("p:0", now_ms=200_000, caught_up=False) == 1_000  # a backlog: event time only
    assert clock.watermark("p:0", now_ms=200_000, caught_up=True) == 195_000  # idle and caught up


def test_partials_of_all_sources_merge_into_the_window() -> None:
    left, right, whole = aggregate(), aggregate(), aggregate()
    for offset, value in enumerate([0.1, 0.9, 0.4, 0.7]):
        (left if offset % 2 else right).apply(prediction(offset, value, source=f"p:{offset % 2}"), EDGES)
        whole.apply(prediction(offset, value, source=f"p:{offset % 2}"), EDGES)
    right.apply(Observation("m", "1", 1_000.0, "dlq:0", 3, dead_letter=True), EDGES)
    whole.apply(Observation("m", "1", 1_000.0, "dlq:0", 3, dead_letter=True), EDGES)
    total = aggregate()
    total.merge(left)
    total.merge(right)
    merged, expected = window_stats(total, REFERENCE, 61_000), window_stats(whole, REFERENCE, 61_000)
    assert merged.pop("prediction")["mean"] == pytest.approx(expected.pop("prediction")["mean"])
    assert merged == expected


def test_psi_is_zero_for_the_reference_and_grows_with_shift() -> None:
    assert population_stability_index([0.25] * 4, [25, 25, 25, 25]) == pytest.approx(0.0)
    shifted = population_stability_index([0.25] * 4, [5, 10, 25, 60])
    assert shifted is not None and shifted > 0.25
    assert population_stability_index([0.5, 0.5], [0, 0]) is None
    assert bin_index(1.0, EDGES) == 3 and bin_index(-1.0, EDGES) == 0 and bin_index(0.5, EDGES) == 2


def test_stats_validate_against_the_schema(window_stats_schema: Draft202012Validator) -> None:
    window = aggregate()
    window_stats_schema.validate(window_stats(window, None, 61_000))  # an empty window too
    for offset in range(10):
        window.apply(prediction(offset, offset / 10), EDGES)
    stats = window_stats(window, REFERENCE, 61_000)
    window_stats_schema.validate(stats)
    assert stats["drift"]["bins"] == 4 and math.isfinite(stats["drift"]["value"])


def test_window_and_partial_keys_round_trip_through_their_bytes() -> None:
    window = WindowKey("breast-cancer", "2", 1_795_692_985_000)
    assert window.encode() == b"breast-cancer|2|1795692985000"  # the WindowStats key, as documented
    partial = PartialKey(window, "events.v1:3")
    assert PartialKey.decode(partial.encode()) == partial
    assert partial.partition == 3
