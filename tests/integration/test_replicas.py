"""Replicas sharing the input through rebalances: workers join and leave (SIGTERM) while events
flow, and every event still gets a prediction."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.integration.conftest import Names, WorkerProcess, create_topics, running_worker, worker_env
from tests.integration.streams import Output, committed_offsets, event_value, produce, read_outputs

RATE = 1000.0  # events/s
TAIL_S = 3.0  # events keep flowing this long after the last join or leave
SETTINGS = {"KAFKA_SESSION_TIMEOUT_S": "10"}


async def assert_each_predicted(bootstrap: str, names: Names, events: int) -> int:
    """Fail, naming where the missing events lie and what the group committed, unless every event
    has a prediction. Returns the number of duplicates."""

    def all_read(records: list[Output]) -> bool:
        return len(records) >= events

    seen = Counter(
        output.result["event_id"] for output in await read_outputs(bootstrap, (names.output_topic,), all_read)
    )
    missing = {f"e-{i}" for i in range(events)} - set(seen)
    if missing:
        where: dict[int, list[int]] = {}
        for event in await read_outputs(bootstrap, (names.input_topic,), all_read, timeout_s=30):
            if event.result["event_id"] in missing:
                where.setdefault(event.partition, []).append(event.offset)
        ranges = {p: f"{len(o)} in {min(o)}..{max(o)}" for p, o in sorted(where.items())}
        committed = await committed_offsets(bootstrap, names.app_id, names.input_topic)
        raise AssertionError(f"{len(missing)} events without a prediction ({ranges}; committed: {committed})")
    return sum(count - 1 for count in seen.values())


async def start_worker(
    stack: contextlib.ExitStack, bootstrap: str, names: Names, tmp: Path, name: str
) -> WorkerProcess:
    worker = running_worker(worker_env(bootstrap, names, tmp / name, **SETTINGS), tmp / f"{name}.log")
    return await asyncio.to_thread(stack.enter_context, worker)


STOP_TIMEOUT_S = 180.0
"""A graceful stop drains what the worker holds (at most 30 s) and leaves the group mid-churn;
on a machine overloaded by four workers, a producer and other jobs it once took over 60 s."""


async def stop_worker(worker: WorkerProcess) -> None:
    worker.process.terminate()
    assert await asyncio.to_thread(worker.process.wait, STOP_TIMEOUT_S) == 0


async def stream_until_set(bootstrap: str, names: Names, stop: asyncio.Event) -> int:
    """Events at RATE until ``stop`` is set, then a few seconds more so the last rebalance happens
    mid-stream too: a churn that takes long on a slow machine never outlasts the stream."""
    done = asyncio.Event()

    async def tail_off() -> None:
        await stop.wait()
        await asyncio.sleep(TAIL_S)
        done.set()

    tail = asyncio.ensure_future(tail_off())
    sent = await produce(bootstrap, names.input_topic, event_value, None, RATE, until=done)
    await tail
    return len(sent)


Start = Callable[[str], Awaitable[WorkerProcess]]
"""Starts the worker of that name in the group."""


async def churn_mid_stream(
    bootstrap: str, names: Names, tmp: Path, churn: Callable[[WorkerProcess, Start], Awaitable[list[WorkerProcess]]]
) -> tuple[int, int]:
    """Worker ``a`` up, then events at RATE while ``churn(a, start)`` starts and stops workers; it returns
    those that must still run at the end. Fails unless every event has a prediction; returns (events,
    duplicates)."""
    with contextlib.ExitStack() as stack:

        def start(name: str) -> Awaitable[WorkerProcess]:
            return start_worker(stack, bootstrap, names, tmp, name)

        first = await start("a")
        churned = asyncio.Event()
        streaming = asyncio.ensure_future(stream_until_set(bootstrap, names, churned))
        running = await churn(first, start)
        churned.set()
        events = await streaming
        duplicates = await assert_each_predicted(bootstrap, names, events)
        assert all(worker.process.poll() is None for worker in running)
        return events, duplicates


def test_a_replica_joining_and_one_leaving_mid_stream_loses_nothing(bootstrap_servers: str, tmp_path: Path) -> None:
    names = Names(uuid.uuid4().hex[:10])
    create_topics(bootstrap_servers, names)

    async def churn(first: WorkerProcess, start: Start) -> list[WorkerProcess]:
        await asyncio.sleep(1.0)
        second = await start("b")  # joins while events flow
        await stop_worker(first)  # and the first leaves gracefully while they still flow
        return [second]

    events, duplicates = asyncio.run(churn_mid_stream(bootstrap_servers, names, tmp_path, churn))
    print(f"replicas: {events} events, {duplicates} duplicates after a join and a graceful leave")


def test_replicas_churning_mid_stream_lose_nothing(bootstrap_servers: str, tmp_path: Path) -> None:
    """Three workers join one by one and two leave while events flow: eight rebalances in all."""
    names = Names(uuid.uuid4().hex[:10])
    create_topics(bootstrap_servers, names)

    async def churn(a: WorkerProcess, start: Start) -> list[WorkerProcess]:
        b = await start("b")
        c = await start("c")
        await stop_worker(a)
        d = await start("d")
        await stop_worker(b)
        return [c, d]

    events, duplicates = asyncio.run(churn_mid_stream(bootstrap_servers, names, tmp_path, churn))
    print(f"replicas churning: {events} events, {duplicates} duplicates after 3 joins and 2 leaves")
