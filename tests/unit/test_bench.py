"""The benchmark's own logic, without a broker: which model sizes and systems a run takes, the rates it
offers, the tables and plot data it derives from its runs, and the sweep's ten-times-larger model."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytest

from app.models.registry import ModelRegistry
from app.settings import REPO_ROOT
from benchmarks.bench import (
    MODEL_SIZES,
    NOTES_MARKER,
    SYSTEMS,
    LoadPoint,
    Run,
    check_sizes,
    latency_curves,
    latency_phases,
    lead_table,
    markdown,
    normalised,
    offered_rate,
    parse_models,
    parse_systems,
    shared_low_rate,
    summarise,
    sweep_table,
    throughput_series,
    with_notes,
)


def throughput(system: str, size: str, *rates: float) -> list[Run]:
    return [Run(system, 1000, unique=1000, events_per_s=rate, model=size) for rate in rates]


def test_models_come_in_the_sweeps_order_each_once() -> None:
    assert [size.name for size in parse_models("minilm, noop,mlp,noop")] == ["noop", "mlp", "minilm"]
    wide = parse_models("mlp-10x")[0]
    assert (wide.model, wide.noop, wide.text) == ("breast-cancer-wide", False, False)
    assert parse_models("noop")[0].noop and parse_models("minilm")[0].text


def test_an_unknown_model_size_or_system_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown model size mlp-100x: choose from noop,mlp,mlp-10x,minilm"):
        parse_models("mlp,mlp-100x")
    with pytest.raises(ValueError, match="unknown system flink"):
        parse_systems("inference-worker,flink")


def test_latency_only_for_sizes_that_run_and_texts_for_the_text_model() -> None:
    noop, mlp, minilm = MODEL_SIZES["noop"], MODEL_SIZES["mlp"], MODEL_SIZES["minilm"]
    check_sizes([noop, mlp, minilm], [mlp], text_events=800)
    check_sizes([noop, mlp], [], text_events=0)
    with pytest.raises(ValueError, match="--latency-models mlp not in --models"):
        check_sizes([noop], [mlp], text_events=800)
    with pytest.raises(ValueError, match="--text-events must be above 0 with minilm"):
        check_sizes([mlp, minilm], [mlp], text_events=0)


def test_no_systems_named_means_all_of_them() -> None:
    assert parse_systems("") == list(SYSTEMS)
    assert parse_systems("bare-aiokafka,inference-worker") == ["inference-worker", "bare-aiokafka"]


def test_the_shared_rate_stays_below_every_systems_capacity() -> None:
    assert shared_low_rate(1000, {"worker": 20000, "naive": 2100}) == 1000
    assert shared_low_rate(1000, {"worker": 20000, "naive": 1500}) == 750  # half the slowest
    assert shared_low_rate(1000, {"worker": 200, "naive": 0.0}) == 100  # a system without a rate is ignored
    assert shared_low_rate(1000, {}) == 1000


def test_offered_rates_are_round_and_never_zero() -> None:
    assert offered_rate(10_384) == 10_380
    assert offered_rate(51.26) == 51.3
    assert offered_rate(0.01) == 0.1


def test_latency_phases_are_offered_lowest_first() -> None:
    assert latency_phases(8000, 1000, curve=False) == {"low-rate": 1000, "half-load": 4000}
    curve = latency_phases(2000, 1000, curve=True)
    assert list(curve.items()) == [("25%", 500), ("low-rate", 1000), ("half-load", 1000), ("75%", 1500), ("90%", 1800)]
    assert latency_phases(0.0, 1000, curve=True) == {"low-rate": 1000}  # no measured maximum: the shared rate only


def summary() -> dict[str, Any]:
    runs = [
        *throughput("inference-worker", "noop", 9000, 10000, 11000),
        *throughput("naive-faust", "noop", 2000, 2500, 3000),
        *throughput("inference-worker", "mlp", 8000, 9000, 9500),
        *throughput("naive-faust", "mlp", 900, 1000, 1100),
        *throughput("inference-worker", "mlp-10x", 7000, 7500, 8000),
    ]
    return summarise(runs)


def test_the_sweep_table_has_a_column_per_model_size_with_median_and_spread() -> None:
    rows = sweep_table(summary(), ["noop", "mlp", "mlp-10x"])
    assert rows[0] == "| system | `noop` | `mlp` | `mlp-10x` |"
    assert rows[2] == "| inference-worker | 10,000 (9,000-11,000) | 9,000 (8,000-9,500) | 7,500 (7,000-8,000) |"
    assert rows[3] == "| naive-faust | 2,500 (2,000-3,000) | 1,000 (900-1,100) | n/a |"


def test_the_sweep_table_marks_a_size_where_counts_in_and_out_differed() -> None:
    run = Run("naive-faust", 1000, unique=999, events_per_s=800, model="mlp")
    run.check()
    assert "800 (800-800) (!)" in sweep_table(summarise([run]), ["mlp"])[2]


def test_the_lead_table_shows_how_the_workers_ratio_changes_with_the_model() -> None:
    rows = lead_table(summary(), ["noop", "mlp", "mlp-10x"])
    assert rows[2:] == ["| naive-faust | 4.00x | 9.00x | n/a |"]  # transport 4x, with batching 9x


def test_throughput_series_follow_the_sizes_with_gaps_where_a_system_did_not_run() -> None:
    series = throughput_series(summary(), ["noop", "mlp", "mlp-10x"])
    assert list(series) == ["inference-worker", "naive-faust"]
    assert series["inference-worker"][2] == (7500, 7000, 8000)
    assert series["naive-faust"] == [(2500, 2000, 3000), (1000, 900, 1100), None]


def latency_run(system: str, phase: str, offered: float, p50: float, p99: float, problems: list[str]) -> dict[str, Any]:
    run = Run(system, 10, unique=10, offered_per_s=offered, phase=phase, model="mlp", problems=problems)
    run.latency_ms = {"p50": p50, "p95": p99, "p99": p99}
    return asdict(run)


def test_latency_curves_take_the_median_of_each_phases_runs_by_offered_rate() -> None:
    runs = [
        latency_run("naive-faust", "half-load", 1000, 30, 90, []),
        latency_run("naive-faust", "half-load", 1000, 50, 110, ["fell behind (800/s out)"]),
        latency_run("naive-faust", "half-load", 1000, 40, 100, []),
        latency_run("naive-faust", "25%", 500, 20, 60, []),
        latency_run("inference-worker", "low-rate", 1000, 10, 30, []),
        {**latency_run("inference-worker", "low-rate", 1000, 99, 99, []), "model": "noop"},  # another model size
        asdict(Run("naive-faust", 10, unique=10, events_per_s=2000, model="mlp")),  # a throughput run
    ]
    curves = latency_curves(runs, "mlp")
    assert list(curves) == ["inference-worker", "naive-faust"]
    assert curves["inference-worker"] == [LoadPoint(1000, 10, 30, False)]
    assert curves["naive-faust"] == [LoadPoint(500, 20, 60, False), LoadPoint(1000, 40, 100, True)]


def test_results_from_before_the_sweep_are_read_with_the_default_model_as_mlp() -> None:
    legacy = {"runs": [asdict(run) | {"duplicates": 0} for run in throughput("bare-aiokafka", "model", 100, 300)]}
    legacy["runs"] += [asdict(run) | {"duplicates": 0} for run in throughput("bare-aiokafka", "noop", 400)]
    report = normalised(legacy)
    assert report["models"] == ["noop", "mlp"]
    assert report["summary"]["mlp"]["throughput"]["bare-aiokafka"]["median"] == 200


def test_results_md_has_the_headline_table_for_the_latency_size_and_the_sweep_for_every_size() -> None:
    runs = [
        asdict(run)
        for run in throughput("naive-faust", "mlp-10x", 700) + throughput("inference-worker", "mlp-10x", 7000)
    ]
    runs += [latency_run("inference-worker", "low-rate", 1000, 10, 30, []) | {"model": "mlp-10x"}]
    head = {"machine": "m", "model": "d", "events": 10, "partitions": 4, "repeats": 1, "command": "c"}
    report = normalised({**head, "seconds": 5.0, "low_rate": 1000.0, "low_rates": {"mlp-10x": 350.0}, "runs": runs})
    text = markdown(report)
    assert "## `mlp-10x`: breast-cancer-wide, MLP 30-128-128-2" in text
    assert "Shared rate: 350 events/s." in text
    assert "| inference-worker | 7,000 (7,000-7,000) | 1.00x | n/a | 10 (10-10) / 30 (30-30) | ok |" in text
    assert "| naive-faust | 10.00x |" in text
    assert "## How to read the model-size sweep" in text


def test_notes_below_the_marker_survive_a_rewrite_of_the_tables() -> None:
    first = with_notes("# Tables, run 1\n", "")
    assert first == f"# Tables, run 1\n\n{NOTES_MARKER}\n"
    edited = first + "## Reading this run\n\nWritten by hand.\n"
    assert with_notes("# Tables, run 2\n", edited) == (
        f"# Tables, run 2\n\n{NOTES_MARKER}\n## Reading this run\n\nWritten by hand.\n"
    )


def linear_weights(model: str) -> tuple[int, Any]:
    """Multiply-adds per row (the weights of the linear layers) and the model's metadata."""
    registry = ModelRegistry(REPO_ROOT / "models")
    metadata = registry.metadata(model)
    module = registry.load_module(metadata)  # as the worker loads it: the registry's schema checks the metadata
    weights = [tensor for name, tensor in module.state_dict().items() if name.endswith("weight") and tensor.dim() == 2]
    return sum(t.numel() for t in weights), metadata


def test_the_sweeps_large_mlp_has_ten_times_the_default_models_compute_and_the_same_interface() -> None:
    default_macs, default = linear_weights("breast-cancer")
    wide_macs, wide = linear_weights("breast-cancer-wide")
    assert wide_macs == 10 * default_macs == 20_480
    assert (wide.input_size, wide.feature_names, wide.labels) == (
        default.input_size,
        default.feature_names,
        default.labels,
    )
