"""The local broker restarts while events stream in: the worker reconnects and loses nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from tests.integration.conftest import ROOT, Names, create_topics, running_worker, worker_env

EVENTS = 12000


async def read_event_ids(bootstrap: str, topic: str) -> Counter[str]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    seen: Counter[str] = Counter()
    try:
        while batches := await consumer.getmany(timeout_ms=3000, max_records=20000):
            for records in batches.values():
                seen.update(orjson.loads(record.value)["event_id"] for record in records)
    finally:
        await consumer.stop()
    return seen


@pytest.mark.skipif("KAFKA_BOOTSTRAP_SERVERS" in os.environ, reason="restarts the local broker only")
@pytest.mark.timeout(400)
def test_a_broker_restart_mid_stream_loses_nothing(bootstrap_servers: str, tmp_path: Path) -> None:
    names = Names(uuid.uuid4().hex[:10])
    create_topics(bootstrap_servers, names)
    env = worker_env(bootstrap_servers, names, tmp_path)
    kafka_sh = str(ROOT / "kafka" / "kafka.sh")
    with running_worker(env, tmp_path / "worker.log") as worker:
        producer = subprocess.Popen(
            [sys.executable, "-m", "app", "produce", "-n", str(EVENTS), "--rate", "1000", "--seed", "3"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            asyncio.run(asyncio.sleep(4))
            assert subprocess.run([kafka_sh, "down"], timeout=120).returncode == 0
            asyncio.run(asyncio.sleep(2))
            assert subprocess.run([kafka_sh, "up"], timeout=300).returncode == 0
            output, _ = producer.communicate(timeout=240)
        finally:
            subprocess.run([kafka_sh, "up"], timeout=300)  # leave the broker up for the tests after this
        assert producer.returncode == 0, output.decode()[-2000:]
        inputs = asyncio.run(read_event_ids(bootstrap_servers, names.input_topic))
        for _ in range(20):  # each read waits for 3 s of quiet: the worker may still be catching up
            predicted = asyncio.run(read_event_ids(bootstrap_servers, names.output_topic))
            if set(inputs) <= set(predicted):
                break
        assert worker.process.poll() is None, "the worker must ride out the broker restart"

    assert len(inputs) == EVENTS
    missing = set(inputs) - set(predicted)
    assert not missing, f"{len(missing)} events without a prediction after the broker restart"
    print(f"broker restart: {EVENTS} events, {sum(predicted.values()) - len(predicted)} duplicates")
