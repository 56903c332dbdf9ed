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

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.integration.conftest import Names, create_topics, running_worker, worker_env

EVENTS = 12000
RATE = 1500.0  # events/s: the stream lasts 8 s
KILL_AFTER_S = 3.5
BAD_EVERY = 100  # every 100th input is not JSON: its dead letter must be exactly-once too
PARTITIONS = 4


def record(index: int) -> tuple[bytes, bytes]:
    if index % BAD_EVERY == 0:
        return f"bad-{index}".encode(), b"{not json"
    features = [float((index + i) % 23) for i in range(30)]
    timestamp = int(time.time() * 1000)
    event = {"event_id": f"e-{index}", "user_id": f"u-{index % 50}", "features": features, "timestamp": timestamp}
    return f"u-{index % 50}".encode(), orjson.dumps(event)


def expected() -> tuple[set[str], set[str]]:
    bad = {f"bad-{i}" for i in range(0, EVENTS, BAD_EVERY)}
    return {f"e-{i}" for i in range(EVENTS) if i % BAD_EVERY}, bad


async def produce_stream(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        started = time.perf_counter()
        pending = []
        for index in range(EVENTS):
            ahead = started + index / RATE - time.perf_counter()
            if ahead > 0:
                await asyncio.sleep(ahead)
            key, value = record(index)
            pending.append(await producer.send(topic, value, key=key))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def read_outputs(
    bootstrap: str, names: Names, isolation_level: str, timeout_s: float, settle_s: float
) -> tuple[Counter[str], Counter[str]]:
    """(results per event_id, dead letters per input key), until all arrived and nothing more comes."""
    consumer = AIOKafkaConsumer(
        names.output_topic,
        names.dead_letter_topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        isolation_level=isolation_level,
    )
    results: Counter[str] = Counter()
    dead: Counter[str] = Counter()
    want_results, want_dead = expected()
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            complete = want_results <= results.keys() and want_dead <= dead.keys()
            if complete and time.monotonic() - quiet_since > settle_s:
                break
            for records in (await consumer.getmany(timeout_ms=500)).values():
                quiet_since = time.monotonic()
                for message in records:
                    if message.topic == names.output_topic:
                        results[orjson.loads(message.value)["event_id"]] += 1
                    else:
                        dead[message.key.decode()] += 1
    finally:
        await consumer.stop()
    return results, dead


async def lagging_partitions(bootstrap: str, names: Names) -> dict[int, tuple[int | None, int]]:
    """Input partitions whose committed group offset is not their end offset: {partition: (committed, end)}."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=names.app_id, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(names.input_topic, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
        committed = {tp: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()
    return {tp.partition: (committed[tp], ends[tp]) for tp in tps if committed[tp] != ends[tp]}


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
        streaming = asyncio.ensure_future(produce_stream(bootstrap_servers, names.input_topic))
        await asyncio.sleep(KILL_AFTER_S)
        first.process.send_signal(signal.SIGKILL)  # mid-stream, with transactions open
        await asyncio.to_thread(first.process.wait, 10)
        with contextlib.ExitStack() as stack:
            second = await asyncio.to_thread(stack.enter_context, running_worker(env("b"), tmp_path / "b.log"))
            await streaming
            views["committed"] = await read_outputs(bootstrap_servers, names, "read_committed", 75, settle_s=3)
            views["uncommitted"] = await read_outputs(bootstrap_servers, names, "read_uncommitted", 10, settle_s=1)
            lagging.update(await lagging_partitions(bootstrap_servers, names))
            assert second.process.poll() is None, "the second worker stopped"

    views: dict[str, tuple[Counter[str], Counter[str]]] = {}
    lagging: dict[int, tuple[int | None, int]] = {}
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
