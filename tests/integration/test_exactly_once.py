"""Exactly-once mode against the real broker: a worker is SIGKILLed mid-stream, a second one in
the same group finishes, and a read_committed consumer sees exactly one result (or dead letter)
per input, and the group's committed offsets reach the end of every input partition.

The read_uncommitted view of the same topic is counted too: it holds the killed worker's
aborted transactions, the duplicates an at-least-once consumer would have seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

from tests.integration.conftest import Names, create_topics, running_worker, worker_env
from tests.integration.streams import (
    PARTITIONS,
    Output,
    Record,
    committed_offsets,
    end_offsets,
    event_value,
    produce,
    read_outputs,
)

EVENTS = 12000
RATE = 1500.0  # events/s: the stream lasts 8 s
KILL_AFTER_S = 3.5
BAD_EVERY = 100  # every 100th input is not JSON: its dead letter must be exactly-once too


def record(index: int) -> bytes | Record:
    if index % BAD_EVERY == 0:
        return Record(b"{not json", f"bad-{index}".encode())
    return event_value(index)


def expected() -> tuple[set[str], set[str]]:
    bad = {f"bad-{i}" for i in range(0, EVENTS, BAD_EVERY)}
    return {f"e-{i}" for i in range(EVENTS) if i % BAD_EVERY}, bad


class Tally:
    """Results per event_id and dead letters per input key, counted as the outputs come in."""

    def __init__(self, names: Names) -> None:
        self.names = names
        self.results: Counter[str] = Counter()
        self.dead: Counter[str] = Counter()
        self.counted = 0
        self.want_results, self.want_dead = expected()

    def complete(self, outputs: list[Output]) -> bool:
        for output in outputs[self.counted :]:
            if output.topic == self.names.output_topic:
                self.results[output.result["event_id"]] += 1
            else:
                assert output.key is not None
                self.dead[output.key.decode()] += 1
        self.counted = len(outputs)
        return self.want_results <= self.results.keys() and self.want_dead <= self.dead.keys()


async def read_tally(
    bootstrap: str, names: Names, isolation_level: str, timeout_s: float, settle_s: float
) -> tuple[Counter[str], Counter[str]]:
    """(results per event_id, dead letters per input key), until all arrived and nothing more comes."""
    tally = Tally(names)
    topics = (names.output_topic, names.dead_letter_topic)
    outputs = await read_outputs(bootstrap, topics, tally.complete, timeout_s, settle_s, isolation_level)
    tally.complete(outputs)
    return tally.results, tally.dead


async def lagging_partitions(bootstrap: str, names: Names) -> dict[int, tuple[int, int]]:
    """Input partitions whose committed group offset is not their end offset: {partition: (committed, end)}."""
    ends = await end_offsets(bootstrap, names.input_topic)
    committed = await committed_offsets(bootstrap, names.app_id, names.input_topic)
    return {p: (committed[p], end) for p, end in ends.items() if committed[p] != end}


def test_sigkill_mid_stream_leaves_exactly_one_committed_output_per_input(
    bootstrap_servers: str, tmp_path: Path
) -> None:
    names = Names(uuid.uuid4().hex[:10])
    create_topics(bootstrap_servers, names, PARTITIONS)
    settings = {
        "PROCESSING_GUARANTEE": "exactly_once",
        "KAFKA_SESSION_TIMEOUT_S": "6",
    }

    def env(name: str) -> dict[str, str]:
        return worker_env(bootstrap_servers, names, tmp_path / name, **settings)

    async def scenario() -> None:
        streaming = asyncio.ensure_future(produce(bootstrap_servers, names.input_topic, record, EVENTS, RATE))
        await asyncio.sleep(KILL_AFTER_S)
        first.process.send_signal(signal.SIGKILL)  # mid-stream, with transactions open
        await asyncio.to_thread(first.process.wait, 10)
        with contextlib.ExitStack() as stack:
            second = await asyncio.to_thread(stack.enter_context, running_worker(env("b"), tmp_path / "b.log"))
            await streaming
            views["committed"] = await read_tally(bootstrap_servers, names, "read_committed", 75, settle_s=3)
            views["uncommitted"] = await read_tally(bootstrap_servers, names, "read_uncommitted", 10, settle_s=1)
            lagging.update(await lagging_partitions(bootstrap_servers, names))
            assert second.process.poll() is None, "the second worker stopped"

    views: dict[str, tuple[Counter[str], Counter[str]]] = {}
    lagging: dict[int, tuple[int, int]] = {}
    with running_worker(env("a"), tmp_path / "a.log") as first:
        started = time.monotonic()
        asyncio.run(scenario())
    a_log = (tmp_path / "a.log").read_text()
    assert "transactional producers: 0 closed" in a_log, "the killed worker never owned input partitions"

    want_results, want_dead = expected()
    results, dead = views["committed"]
    missing = (want_results - results.keys()) | (want_dead - dead.keys())
    assert not missing, f"{len(missing)} inputs without a committed output, e.g. {sorted(missing)[:5]}"
    twice = {key: n for key, n in (results + dead).items() if n != 1}
    assert not twice, f"{len(twice)} inputs with more than one committed output, e.g. {sorted(twice.items())[:5]}"
    assert results.keys() == want_results and dead.keys() == want_dead, "outputs for inputs never produced"
    assert not lagging, f"committed offsets short of the end: {lagging}"

    raw_results, raw_dead = views["uncommitted"]
    aborted = sum(raw_results.values()) + sum(raw_dead.values()) - len(results) - len(dead)
    print(
        f"exactly-once: {EVENTS} inputs, each with exactly 1 committed output after a SIGKILL; "
        f"read_uncommitted holds {aborted} more (aborted transactions); {time.monotonic() - started:.0f} s"
    )
