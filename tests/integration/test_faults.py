"""Worker processes killed, stopped and failing mid-stream, against the real broker.

- SIGKILL mid-batch: at-least-once. The new owner re-predicts exactly the records read after the
  last commit, so the duplicates are the dead worker's outputs past that commit, and no more.
- SIGTERM under load: the in-flight records are finished, published and committed before the
  process exits 0, so a fresh worker in the group re-predicts nothing: every event exactly once.
- A model forward that raises for a whole batch: a transient failure is retried, a poison record
  is isolated and dead-lettered as model_error, and every input gets exactly one output.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.integration.conftest import Names, WorkerProcess, create_topics, running_worker, worker_env
from tests.integration.streams import (
    PARTITIONS,
    Output,
    committed_offsets,
    committed_to_end,
    end_offsets,
    event_value,
    gauge,
    in_background,
    produce,
    read_outputs,
    write_model,
)

EVENTS = 15000
RATE = 1500.0  # events/s: a 10 s stream, the fault lands in its middle
MAX_IN_FLIGHT = 1024
COMMIT_INTERVAL_S = 1.0  # broker_commit_interval in app/worker.py
SESSION_TIMEOUT_S = "6"  # a killed worker's partitions move after this


def setup(bootstrap: str) -> tuple[Names, dict[str, str]]:
    names = Names(uuid.uuid4().hex[:10])
    create_topics(bootstrap, names, PARTITIONS)
    settings = {
        "KAFKA_SESSION_TIMEOUT_S": SESSION_TIMEOUT_S,
        "MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
    }
    return names, settings


def wait_for_records_in_flight(worker: WorkerProcess, timeout_s: float = 5.0) -> float:
    """Returns once the worker holds unacknowledged records (a batch is mid-way), or at the timeout."""
    deadline = time.monotonic() + timeout_s
    while (in_flight := gauge(worker, "inference_records_in_flight")) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    return in_flight


def predictions_by_source(outputs: list[Output]) -> Counter[tuple[int, int]]:
    """How many predictions each input record (partition, offset) got."""
    return Counter((o.result["partition"], o.result["offset"]) for o in outputs)


def every_event_predicted(outputs: list[Output]) -> bool:
    return len({o.result["event_id"] for o in outputs}) >= EVENTS


@pytest.mark.timeout(240)
def test_sigkill_mid_batch_loses_nothing_and_duplicates_only_what_was_uncommitted(
    bootstrap_servers: str, tmp_path: Path
) -> None:
    names, settings = setup(bootstrap_servers)
    with running_worker(worker_env(bootstrap_servers, names, tmp_path / "a", **settings), tmp_path / "a.log") as a:
        # The stream runs on while workers come and go.
        stream = in_background(produce(bootstrap_servers, names.input_topic, event_value, EVENTS, RATE))
        time.sleep(4.0)
        in_flight_at_kill = wait_for_records_in_flight(a)
        a.process.send_signal(signal.SIGKILL)
        a.process.wait(10)
    # Nothing commits for the group now: what is committed is what the dead worker had confirmed.
    committed = asyncio.run(committed_offsets(bootstrap_servers, names.app_id, names.input_topic))
    outputs_of_a = asyncio.run(end_offsets(bootstrap_servers, names.output_topic))
    with running_worker(worker_env(bootstrap_servers, names, tmp_path / "b", **settings), tmp_path / "b.log") as b:
        stream.result(timeout=60)
        outputs = asyncio.run(read_outputs(bootstrap_servers, (names.output_topic,), every_event_predicted))
        assert b.process.poll() is None

    predicted = Counter(o.result["event_id"] for o in outputs)
    missing = {f"e-{i}" for i in range(EVENTS)} - set(predicted)
    assert not missing, f"{len(missing)} events without a prediction, e.g. {sorted(missing)[:5]}"
    duplicates = sum(predicted.values()) - len(predicted)
    # The dead worker's outputs past the committed offsets are exactly what the new owner predicts again.
    by_a = [o for o in outputs if o.offset < outputs_of_a[o.partition]]
    uncommitted_by_a = {
        (o.result["partition"], o.result["offset"])
        for o in by_a
        if o.result["offset"] >= committed[o.result["partition"]]
    }
    twice = {source for source, n in predictions_by_source(outputs).items() if n > 1}
    assert twice == uncommitted_by_a, "a committed record was predicted again, or an uncommitted one was not"
    assert max(predictions_by_source(outputs).values()) <= 2
    # What the dead worker can have published past its last commit: records in flight, plus those
    # acknowledged since the last commit: one commit interval of input, doubled for the commit's own
    # round trip and timer delays on a busy machine.
    bound = MAX_IN_FLIGHT + int(RATE * COMMIT_INTERVAL_S * 2)
    print(
        f"\nSIGKILL: {EVENTS} events at {RATE:.0f}/s, {in_flight_at_kill:.0f} records in flight at the kill, "
        f"committed offsets {committed}, {duplicates} duplicates (bound {bound})"
    )
    assert duplicates <= bound


@pytest.mark.timeout(240)
@pytest.mark.parametrize("rate", [RATE, 0.0], ids=["streaming", "backlog"])
def test_sigterm_under_load_finishes_in_flight_work_so_a_restart_predicts_nothing_twice(
    bootstrap_servers: str, tmp_path: Path, rate: float
) -> None:
    """``streaming``: the worker keeps up with 1,500 events/s; ``backlog``: events arrive as fast as
    the producer can send them, so the worker is behind and holds many records in flight."""
    names, settings = setup(bootstrap_servers)
    with running_worker(worker_env(bootstrap_servers, names, tmp_path / "a", **settings), tmp_path / "a.log") as a:
        stream = in_background(produce(bootstrap_servers, names.input_topic, event_value, EVENTS, rate))
        time.sleep(4.0 if rate else 0.5)
        in_flight_at_stop = wait_for_records_in_flight(a)
        started = time.monotonic()
        a.process.send_signal(signal.SIGTERM)
        exit_code = a.process.wait(60)
        stop_s = time.monotonic() - started
    assert exit_code == 0, (tmp_path / "a.log").read_text()[-3000:]
    assert stop_s < 30
    committed = asyncio.run(committed_offsets(bootstrap_servers, names.app_id, names.input_topic))
    outputs_of_a = asyncio.run(end_offsets(bootstrap_servers, names.output_topic))
    with running_worker(worker_env(bootstrap_servers, names, tmp_path / "b", **settings), tmp_path / "b.log"):
        stream.result(timeout=60)
        outputs = asyncio.run(read_outputs(bootstrap_servers, (names.output_topic,), every_event_predicted))

    print(
        f"\nSIGTERM ({f'{rate:.0f} events/s' if rate else 'backlog'}): {in_flight_at_stop:.0f} records in flight "
        f"at the signal; exit {exit_code} after {stop_s:.1f}s; committed offsets {committed}"
    )
    # What the stopped worker published is exactly the committed prefix of each partition, once.
    by_a = [(o.result["partition"], o.result["offset"]) for o in outputs if o.offset < outputs_of_a[o.partition]]
    for partition in range(PARTITIONS):
        offsets = sorted(offset for p, offset in by_a if p == partition)
        assert offsets == list(range(committed[partition])), f"partition {partition}: published != committed"
    predicted = Counter(o.result["event_id"] for o in outputs)
    assert set(predicted) == {f"e-{i}" for i in range(EVENTS)}
    assert {event_id: n for event_id, n in predicted.items() if n > 1} == {}, "duplicates after a graceful stop"


class Poisonable(nn.Module):
    """Fails the whole batch when any record's first feature is negative (a record the model cannot take)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(30, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        torch._assert_async((features[:, 0] >= 0).all(), "a negative first feature")
        logits: torch.Tensor = self.layer(features)
        return logits


class Flaky(nn.Module):
    """Fails every other forward of real (non-zero) input once: a transient whole-batch failure.
    The counter is a buffer the exported program mutates, so the failure pattern survives export."""

    calls: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(30, 2)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        self.calls.add_((features.abs().sum() > 0).long())  # warm-up feeds zeros: it never fails
        torch._assert_async(self.calls % 2 == 0, "a transient failure")
        logits: torch.Tensor = self.layer(features)
        return logits


PER_MODEL = 2000
POISON_EVERY = 250


def mixed_event(index: int) -> bytes:
    if index < PER_MODEL:
        poison = index % POISON_EVERY == POISON_EVERY // 2
        return event_value(index, model="poisonable", first_feature=-1.0 if poison else None)
    return event_value(index, model="flaky")


@pytest.mark.timeout(180)
def test_a_batch_whose_forward_raises_is_retried_or_split_and_every_record_gets_one_outcome(
    bootstrap_servers: str, tmp_path: Path
) -> None:
    names, settings = setup(bootstrap_servers)
    write_model(tmp_path / "models", "poisonable", Poisonable())
    write_model(tmp_path / "models", "flaky", Flaky())
    env = worker_env(
        bootstrap_servers,
        names,
        tmp_path,
        **settings,
        MODEL_DIR=str(tmp_path / "models"),
        MODEL_NAMES="poisonable,flaky",
        BATCH_RETRIES="1",
    )
    poison = {f"e-{i}" for i in range(PER_MODEL) if i % POISON_EVERY == POISON_EVERY // 2}
    total = 2 * PER_MODEL
    with running_worker(env, tmp_path / "worker.log") as worker:
        # All at once, so the worker reads big batches and a poison record fails its whole batch.
        asyncio.run(produce(bootstrap_servers, names.input_topic, mixed_event, total))
        outputs = asyncio.run(
            read_outputs(
                bootstrap_servers, (names.output_topic, names.dead_letter_topic), lambda seen: len(seen) >= total
            )
        )
        committed, ends = asyncio.run(committed_to_end(bootstrap_servers, names.app_id, names.input_topic, 15))
        assert committed == ends, f"committed {committed}, end {ends}"
        dead_letters_metric = gauge(
            worker, 'inference_dead_letters_total{model="poisonable",reason="model_error",version="1"}'
        )

    predictions = Counter(o.result["event_id"] for o in outputs if o.topic == names.output_topic)
    dead_letters = [o for o in outputs if o.topic == names.dead_letter_topic]
    assert set(predictions) == {f"e-{i}" for i in range(total)} - poison
    assert max(predictions.values()) == 1
    assert sorted(o.result["event_id"] for o in dead_letters) == sorted(poison)  # the untouched input
    assert {dict(o.headers)["dlq.error.class"] for o in dead_letters} == {b"model_error"}
    assert dead_letters_metric == len(poison)
    log = (tmp_path / "worker.log").read_text()
    failed_batches = [int(size) for size in re.findall(r"batch of (\d+) failed", log)]
    assert any(size > 1 for size in failed_batches) and "a transient failure" in log, "no whole batch failed"
    print(
        f"\nmodel failures: {len(failed_batches)} failed forwards (largest batch {max(failed_batches)}), "
        f"{len(poison)} poison records dead-lettered, {len(predictions)} predictions"
    )
