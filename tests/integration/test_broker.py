"""The local broker itself: a real produce/consume round trip, and kafka.sh's behaviour."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.conftest import ROOT, free_port
from tests.integration.conftest import Names

KAFKA_SH = str(ROOT / "kafka" / "kafka.sh")


async def test_round_trip_through_the_broker(bootstrap_servers: str, names: Names) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    await producer.start()
    try:
        sent = [await producer.send_and_wait(names.input_topic, f"value-{i}".encode(), key=b"k") for i in range(5)]
    finally:
        await producer.stop()
    assert [metadata.offset for metadata in sent] == [0, 1, 2, 3, 4]

    consumer = AIOKafkaConsumer(
        names.input_topic, bootstrap_servers=bootstrap_servers, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        received: list[bytes] = []
        while len(received) < 5:
            batches = await consumer.getmany(timeout_ms=10_000)
            assert batches, "no records came back within 10 s"
            received += [record.value for records in batches.values() for record in records]
    finally:
        await consumer.stop()
    assert received == [f"value-{i}".encode() for i in range(5)]


def kafka_sh(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KAFKA_SH, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **env})


@pytest.mark.skipif("KAFKA_BOOTSTRAP_SERVERS" in os.environ, reason="an external broker is in use")
def test_up_is_a_no_op_when_the_broker_is_up() -> None:
    done = kafka_sh("up")
    assert done.returncode == 0
    assert "already up" in done.stdout
    assert kafka_sh("status").stdout.strip() == "up"


def isolated(tmp_path: Path) -> dict[str, str]:
    """A second, never-started broker state folder, sharing the cached jars."""
    libs = next((Path.home() / ".cache" / "inference-worker" / "kafka").glob("libs-*"), tmp_path / "no-libs")
    return {
        "KAFKA_LOCAL_DIR": str(tmp_path / "kafka"),
        "KAFKA_LOCAL_LIBS": os.environ.get("KAFKA_LOCAL_LIBS", str(libs)),
        "KAFKA_LOCAL_PORT": str(free_port()),
        "KAFKA_LOCAL_CONTROLLER_PORT": str(free_port()),
        "KAFKA_LOCAL_SASL_PORT": str(free_port()),
    }


def test_down_is_a_no_op_when_the_broker_is_down(tmp_path: Path) -> None:
    env = isolated(tmp_path)
    for _ in range(2):
        done = kafka_sh("down", **env)
        assert done.returncode == 0 and "already down" in done.stdout
    assert kafka_sh("status", **env).returncode == 3


def test_a_taken_port_is_one_clear_line(tmp_path: Path) -> None:
    env = isolated(tmp_path)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(env["KAFKA_LOCAL_PORT"])))
        squatter.listen()
        done = kafka_sh("up", **env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"kafka-local: port {env['KAFKA_LOCAL_PORT']} is taken by another process: "
        "stop it or set KAFKA_LOCAL_PORT/KAFKA_LOCAL_CONTROLLER_PORT/KAFKA_LOCAL_SASL_PORT"
    ]


def test_a_corrupt_data_folder_is_one_clear_line(tmp_path: Path) -> None:
    env = isolated(tmp_path)
    data = Path(env["KAFKA_LOCAL_DIR"]) / "data"
    data.mkdir(parents=True)
    (data / "meta.properties").write_text("garbage\n")
    done = kafka_sh("up", **env)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "is corrupt" in lines[0] and "FRESH=1" in lines[0]
