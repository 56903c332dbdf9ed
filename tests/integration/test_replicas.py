"""Replicas sharing the input through rebalances: a second worker joins mid-stream, the first
leaves (SIGTERM) mid-stream, and every event still gets a prediction."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

from tests.integration.conftest import Names, create_topics, running_worker, worker_env
from tests.integration.streams import event_value, produce

EVENTS = 20000
RATE = 1000.0  # events/s: the stream lasts ~20 s, long enough for a join and a leave inside it


async def predicted_ids(bootstrap: str, topic: str, timeout_s: float) -> Counter[str]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    seen: Counter[str] = Counter()
    try:
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and (len(seen) < EVENTS or time.monotonic() - quiet_since < 3):
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    seen[orjson.loads(record.value)["event_id"]] += 1
                    quiet_since = time.monotonic()
    finally:
        await consumer.stop()
    return seen


def test_a_replica_joining_and_one_leaving_mid_stream_loses_nothing(bootstrap_servers: str, tmp_path: Path) -> None:
    names = Names(uuid.uuid4().hex[:10])
    create_topics(bootstrap_servers, names)
    settings = {"KAFKA_SESSION_TIMEOUT_S": "10"}

    async def scenario() -> None:
        streaming = asyncio.ensure_future(produce(bootstrap_servers, names.input_topic, event_value, EVENTS, RATE))
        await asyncio.sleep(1.0)
        with contextlib.ExitStack() as stack:
            second = running_worker(
                worker_env(bootstrap_servers, names, tmp_path / "b", **settings), tmp_path / "b.log"
            )
            b = await asyncio.to_thread(stack.enter_context, second)  # joins while events flow
            first.process.terminate()  # and the first leaves gracefully while they still flow
            assert await asyncio.to_thread(first.process.wait, 60) == 0
            await streaming
            seen.update(await predicted_ids(bootstrap_servers, names.output_topic, timeout_s=120))
            assert b.process.poll() is None

    seen: Counter[str] = Counter()
    with running_worker(worker_env(bootstrap_servers, names, tmp_path / "a", **settings), tmp_path / "a.log") as first:
        asyncio.run(scenario())

    missing = {f"e-{i}" for i in range(EVENTS)} - set(seen)
    assert not missing, f"{len(missing)} events without a prediction, e.g. {sorted(missing)[:5]}"
    duplicates = sum(count - 1 for count in seen.values())
    print(f"replicas: {EVENTS} events, {duplicates} duplicates after a join and a graceful leave")
