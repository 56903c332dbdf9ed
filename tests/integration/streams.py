"""Helpers for the integration tests: events in (numbered, or any records, at a rate), outputs and
group offsets read back from the real broker, models written into a registry folder, a worker's RSS."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import RecordMetadata

from tests.integration.conftest import WorkerProcess

PARTITIONS = 4
FEATURES = 30
T = TypeVar("T")


def event_value(index: int, padding: int = 0, first_feature: float | None = None, model: str | None = None) -> bytes:
    """Event ``e-<index>``; ``padding`` adds an unknown field of that many bytes (the worker ignores it)."""
    features = [float((index + i) % 23) for i in range(FEATURES)]
    if first_feature is not None:
        features[0] = first_feature
    event: dict[str, Any] = {
        "event_id": f"e-{index}",
        "user_id": f"u-{index % 50}",
        "features": features,
        "timestamp": int(time.time() * 1000),
    }
    if model is not None:
        event["model"] = model
    if padding:
        event["padding"] = "x" * padding
    return orjson.dumps(event)


@dataclass(frozen=True)
class Record:
    """One input record as a test sends it."""

    value: bytes | None
    key: bytes | None = None
    timestamp_ms: int | None = None
    """The record's timestamp, epoch ms; None: the producer's clock."""
    headers: tuple[tuple[str, bytes], ...] = ()


def user_key(index: int) -> bytes:
    """The key of event ``e-<index>``: its user, as in ``event_value``."""
    return f"u-{index % 50}".encode()


def keyed_by_user(document: dict[str, Any]) -> Record:
    """A JSON event keyed by its user_id, as a client partitioning by user would send it."""
    return Record(orjson.dumps(document), document["user_id"].encode())


async def produce(
    bootstrap: str,
    topic: str,
    records: Callable[[int], bytes | Record] | Sequence[bytes | Record],
    count: int | None = None,
    rate: float = 0.0,
    until: asyncio.Event | None = None,
) -> list[RecordMetadata]:
    """Send ``records(i)``, or ``records[i]``, for i < count (by default a sequence's length), or
    until ``until`` is set (count None); once ``until`` is set nothing more is sent either way. A bare
    value is keyed ``user_key(i)``, so they spread over the partitions. ``rate`` per second, 0 = at
    once. Returns the acknowledgements (partition, offset), in sending order: all of them arrived."""
    if isinstance(records, Sequence):
        count = len(records) if count is None else count
        record_at: Callable[[int], bytes | Record] = records.__getitem__
    else:
        record_at = records
    assert count is not None or until is not None, "give a count or an event to stop at"
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=10, max_batch_size=1 << 20, max_request_size=8 << 20
    )
    await producer.start()
    acknowledged: list[RecordMetadata] = []
    try:
        started = time.perf_counter()
        pending = []
        index = 0
        while (count is None or index < count) and not (until is not None and until.is_set()):
            if rate > 0:
                ahead = started + index / rate - time.perf_counter()
                if ahead > 0.002:
                    await asyncio.sleep(ahead)
            record = record_at(index)
            if not isinstance(record, Record):
                record = Record(record, user_key(index))
            sent = await producer.send(
                topic, record.value, record.key, timestamp_ms=record.timestamp_ms, headers=list(record.headers)
            )
            pending.append(sent)
            index += 1
            if len(pending) >= 5000:
                acknowledged += await asyncio.gather(*pending)
                pending.clear()
        acknowledged += await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return acknowledged


def in_background(coroutine: Coroutine[Any, Any, T]) -> Future[T]:
    """Run a coroutine on its own event loop in a thread, while the test drives worker processes."""
    executor = ThreadPoolExecutor(max_workers=1)
    future = executor.submit(asyncio.run, coroutine)
    executor.shutdown(wait=False)
    return future


@dataclass(frozen=True)
class Output:
    topic: str
    partition: int
    offset: int
    """Where the output itself is."""
    value: bytes | None
    headers: list[tuple[str, bytes]]
    key: bytes | None = None
    timestamp: int | None = None
    """The record's timestamp, epoch ms."""

    @property
    def result(self) -> dict[str, Any]:
        document: dict[str, Any] = orjson.loads(self.value or b"null")
        return document


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition (-1: none yet)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        offsets = await admin.list_consumer_group_offsets(group, partitions=partitions)
        return {p: offsets[tp].offset if tp in offsets else -1 for p, tp in enumerate(partitions)}
    finally:
        await admin.close()


async def committed_to_end(
    bootstrap: str, group: str, topic: str, timeout_s: float
) -> tuple[dict[int, int], dict[int, int]]:
    """(committed offsets, end offsets) of ``topic``, once the group committed up to the end or
    ``timeout_s`` passed."""
    ends = await end_offsets(bootstrap, topic)
    deadline = time.monotonic() + timeout_s
    while True:
        committed = await committed_offsets(bootstrap, group, topic)
        if committed == ends or time.monotonic() >= deadline:
            return committed, ends
        await asyncio.sleep(0.5)


async def delete_topics(bootstrap: str, topics: tuple[str, ...]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(list(topics))
    finally:
        await admin.close()


async def read_outputs(
    bootstrap: str,
    topics: tuple[str, ...],
    done: Callable[[list[Output]], bool],
    timeout_s: float = 120.0,
    settle_s: float = 3.0,
    isolation_level: str = "read_uncommitted",
) -> list[Output]:
    """Every record of ``topics`` from the start, until ``done`` holds and ``settle_s`` pass without more
    (so a late duplicate would still be seen), or ``timeout_s`` pass."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        isolation_level=isolation_level,
    )
    await consumer.start()
    outputs: list[Output] = []
    try:
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if done(outputs) and time.monotonic() - quiet_since >= settle_s:
                break
            for records in (await consumer.getmany(timeout_ms=500, max_records=20000)).values():
                for r in records:
                    outputs.append(Output(r.topic, r.partition, r.offset, r.value, list(r.headers), r.key, r.timestamp))
                    quiet_since = time.monotonic()
    finally:
        await consumer.stop()
    return outputs


def gauge(worker: WorkerProcess, sample: str, default: float | None = None) -> float:
    """One sample from the worker's /metrics, named as exposed: ``name{label="value",...}``."""
    status, body = worker.get("/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[1])
    if default is None:
        raise AssertionError(f"{sample} not in /metrics")
    return default


def rss_bytes(pid: int) -> int:
    """Resident set size from /proc (no psutil here)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def write_model(model_dir: Path, name: str, module: Any, labels: tuple[str, ...] = ("no", "yes")) -> None:
    """Export ``module`` (30 features in, one logit per label out) into ``<model_dir>/<name>/1`` as
    the registry expects: a torch.export program with a dynamic batch dimension and metadata.json."""
    import torch

    target = model_dir / name / "1"
    target.mkdir(parents=True)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.export.export(module.eval(), (torch.ones(8, FEATURES),), dynamic_shapes=({0: batch},))
    torch.export.save(program, target / "model.pt2")
    metadata = {
        "name": name,
        "version": "1",
        "format": "torch.export",
        "artifact": "model.pt2",
        "kind": "classifier",
        "input_size": FEATURES,
        "labels": list(labels),
        "positive_label": labels[-1],
    }
    (target / "metadata.json").write_text(json.dumps(metadata))
