"""Following the predictions (and dead-letter) topics and printing what arrives."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord


async def follow(
    bootstrap_servers: str,
    topics: Sequence[str],
    from_beginning: bool = False,
    idle_timeout_s: float | None = None,
    **config: Any,
) -> AsyncGenerator[ConsumerRecord[bytes, bytes]]:
    """Yield records from ``topics`` (no consumer group, nothing committed) until idle for too long.

    ``config``: more AIOKafkaConsumer arguments (``app.kafka.security.client_config``)."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
        **config,
    )
    try:
        await consumer.start()  # inside: a start that fails (no broker, refused login) still stops it
        last = time.monotonic()
        while idle_timeout_s is None or time.monotonic() - last < idle_timeout_s:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    last = time.monotonic()
                    yield record
    finally:
        await consumer.stop()


def read_json(value: bytes | None) -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(value or b"{}")
    return document


def describe(
    record: ConsumerRecord[bytes, bytes],
    dead_letter_topic: str,
    decode: Callable[[bytes | None], dict[str, Any]] = read_json,
) -> str:
    """One readable line per record; ``decode``: how results are read (OUTPUT_FORMAT)."""
    if record.topic == dead_letter_topic:
        headers = {name: value.decode("utf-8", "replace") for name, value in record.headers}
        return (
            f"DEAD-LETTER {headers.get('dlq.source.topic')}[{headers.get('dlq.source.partition')}]"
            f"@{headers.get('dlq.source.offset')}  {headers.get('dlq.error.class')}: "
            f"{headers.get('dlq.error.reason')}"
        )
    result = decode(record.value)
    label = f"{result['label']:<10}" if "label" in result else ""
    return (
        f"{result['event_id']:<24} {result['user_id']:<10} {label} {result['prediction']:.4f}  "
        f"{result['model_name']}@{result['model_version']}  batch={result['batch_size']:<4} "
        f"latency={result['latency_ms']:.1f}ms"
    )
