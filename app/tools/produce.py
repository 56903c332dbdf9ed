"""Load generator: PredictionEvents at a target rate, optionally a fraction of them malformed.

Valid events draw features from the model's per-label statistics in its metadata, so the
predictions look like the real data set's. Malformed ones cycle through the kinds the worker
must dead-letter.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from tqdm import tqdm

from app.models.metadata import ModelMetadata

RESEND_ATTEMPTS = 60
MALFORMED_KINDS = ("not_utf8", "invalid_json", "schema_violation", "non_finite", "wrong_feature_count")


@dataclass
class ProduceReport:
    sent: int = 0
    valid_event_ids: list[str] = field(default_factory=list)
    malformed: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


class EventFactory:
    def __init__(self, metadata: ModelMetadata, seed: int | None = None, run_id: str | None = None) -> None:
        self.metadata = metadata
        self.rng = random.Random(seed)
        self.run_id = run_id or uuid.uuid4().hex[:8]
        stats = metadata.extra.get("sample_stats") or {}
        self._profiles = [(s["mean"], s["std"]) for s in stats.values()] or [
            ([0.0] * metadata.input_size, [1.0] * metadata.input_size)
        ]

    def event(self, index: int, users: int = 100) -> dict[str, Any]:
        mean, std = self.rng.choice(self._profiles)
        features = [max(0.0, self.rng.gauss(m, s)) for m, s in zip(mean, std, strict=True)]
        return {
            "event_id": f"{self.run_id}-{index}",
            "user_id": f"user-{self.rng.randrange(users)}",
            "features": [round(value, 5) for value in features],
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }

    def malformed(self, index: int, kind: str) -> bytes:
        event = self.event(index)
        builders: dict[str, Callable[[], bytes]] = {
            "not_utf8": lambda: b"\xff\xfe" + orjson.dumps(event),
            "invalid_json": lambda: orjson.dumps(event)[:-7],
            "schema_violation": lambda: orjson.dumps({k: v for k, v in event.items() if k != "user_id"}),
            "non_finite": lambda: json.dumps({**event, "features": [float("nan"), *event["features"][1:]]}).encode(),
            "wrong_feature_count": lambda: orjson.dumps({**event, "features": event["features"][:-1]}),
        }
        return builders[kind]()


async def produce_events(
    bootstrap_servers: str,
    topic: str,
    factory: EventFactory,
    count: int,
    rate: float = 0.0,
    malformed_fraction: float = 0.0,
    model: str | None = None,
    progress: bool = True,
    encode: Callable[[dict[str, Any]], bytes] = orjson.dumps,
    **config: Any,
) -> ProduceReport:
    """Send ``count`` events (``rate`` per second, 0 = as fast as possible) and wait for every ack.
    ``encode``: the events' format (INPUT_FORMAT; ``app.kafka.schema_registry.event_encoder``); malformed
    records are malformed JSON whatever the format.

    ``config``: more AIOKafkaProducer arguments (``app.kafka.security.client_config``)."""
    report = ProduceReport()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=5, acks="all", **config)
    await producer.start()
    started = time.perf_counter()
    bar = tqdm(total=count, unit="ev", disable=not progress, desc=f"producing to {topic}")
    pending: list[tuple[asyncio.Future[Any], bytes, bytes]] = []
    try:
        for index in range(count):
            if rate > 0:
                ahead = started + index / rate - time.perf_counter()
                if ahead > 0.002:
                    await asyncio.sleep(ahead)
            key, value = _record(factory, index, malformed_fraction, model, report, encode)
            pending.append((await producer.send(topic, value, key=key), key, value))
            if len(pending) >= 1000:
                await _settle(producer, topic, pending, bar)
        await _settle(producer, topic, pending, bar)
    finally:
        bar.close()
        await producer.stop()
    report.sent = count
    report.seconds = time.perf_counter() - started
    return report


def _record(
    factory: EventFactory,
    index: int,
    malformed_fraction: float,
    model: str | None,
    report: ProduceReport,
    encode: Callable[[dict[str, Any]], bytes],
) -> tuple[bytes, bytes]:
    if factory.rng.random() < malformed_fraction:
        kind = MALFORMED_KINDS[report.malformed.total() % len(MALFORMED_KINDS)]
        report.malformed[kind] += 1
        return f"bad-{index}".encode(), factory.malformed(index, kind)
    event = factory.event(index)
    if model is not None:
        event["model"] = model
    report.valid_event_ids.append(event["event_id"])
    return event["user_id"].encode(), encode(event)


async def _settle(
    producer: AIOKafkaProducer, topic: str, pending: list[tuple[asyncio.Future[Any], bytes, bytes]], bar: tqdm
) -> None:
    """Await deliveries, re-sending on retriable errors (a broker restart); others raise, so a run
    never reports events the broker lacks."""
    for future, key, value in pending:
        for attempt in range(RESEND_ATTEMPTS):
            try:
                await future
                break
            except KafkaError as exc:
                if not exc.retriable or attempt == RESEND_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(1.0)
                future = await producer.send(topic, value, key=key)
    bar.update(len(pending))
    pending.clear()
