"""The pipeline's delivery rules, with the producer replaced by an in-memory send function.

Kafka itself is exercised in tests/integration; here the point is ordering and acking logic:
an input is acked only after its output is acknowledged, failed deliveries are re-sent, and
in-flight records are bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
import torch

from app.events import SourceRef
from app.pipeline import InboundRecord, InferencePipeline, OutboundRecord
from app.registry import ModelRegistry
from app.runner import ModelRunner
from app.settings import REPO_ROOT, Settings


class ManualProducer:
    """Records what was sent; the test decides when (and whether) the broker acknowledges."""

    def __init__(self) -> None:
        self.sent: list[OutboundRecord] = []
        self.deliveries: list[asyncio.Future[None]] = []

    async def send(self, record: OutboundRecord) -> asyncio.Future[None]:
        self.sent.append(record)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.deliveries.append(future)
        return future

    async def send_many(self, records: Sequence[OutboundRecord]) -> list[asyncio.Future[None]]:
        return [await self.send(record) for record in records]


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    return ModelRunner.load(ModelRegistry(REPO_ROOT / "models"), "breast-cancer", "1", torch.device("cpu"), False)


def settings(**overrides: Any) -> Settings:
    return Settings.from_env({}, **{"max_wait_ms": 1.0, "publish_retry_backoff_s": 0.01, **overrides})


def record(offset: int, runner: ModelRunner, valid: bool = True) -> InboundRecord:
    features = [1.0] * runner.metadata.input_size
    value = orjson.dumps({"event_id": f"e{offset}", "user_id": "u", "features": features, "timestamp": 0})
    return InboundRecord(SourceRef("events", 0, offset), b"u", value if valid else b"{broken")


async def wait_until(condition: Any, limit_s: float = 5.0) -> None:
    """Poll a condition the pipeline's background tasks will make true."""
    async with asyncio.timeout(limit_s):
        while not condition():  # noqa: ASYNC110 - the state lives in other components
            await asyncio.sleep(0.005)


async def test_acks_only_after_the_broker_acknowledges(runner: ModelRunner) -> None:
    producer = ManualProducer()
    pipeline = InferencePipeline(settings(), {"breast-cancer": runner}, producer)
    pipeline.start()
    acked: list[int] = []
    for offset in range(3):
        await pipeline.submit(record(offset, runner, valid=offset != 1), lambda o=offset: acked.append(o))
    await wait_until(lambda: len(producer.sent) == 3)
    await asyncio.sleep(0.05)
    assert acked == []  # nothing acknowledged by the broker yet, so nothing acked
    assert [r.topic for r in producer.sent] == ["predictions", "events.dlq", "predictions"]
    producer.deliveries[0].set_result(None)
    await wait_until(lambda: acked == [0])
    producer.deliveries[2].set_result(None)
    await asyncio.sleep(0.05)
    assert acked == [0]  # in order: record 1's dead letter is still unacknowledged
    producer.deliveries[1].set_result(None)
    await wait_until(lambda: acked == [0, 1, 2])
    assert pipeline.in_flight == 0
    await pipeline.stop()


async def test_a_failed_delivery_is_resent_before_the_ack(runner: ModelRunner) -> None:
    producer = ManualProducer()
    pipeline = InferencePipeline(settings(), {"breast-cancer": runner}, producer)
    pipeline.start()
    acked: list[int] = []
    await pipeline.submit(record(0, runner), lambda: acked.append(0))
    await wait_until(lambda: len(producer.sent) == 1)
    producer.deliveries[0].set_exception(TimeoutError("broker away"))
    await wait_until(lambda: len(producer.sent) == 2)
    assert acked == []
    assert producer.sent[1] == producer.sent[0]
    producer.deliveries[1].set_result(None)
    await wait_until(lambda: acked == [0])
    assert pipeline.counts.predicted == 1
    await pipeline.stop()


async def test_in_flight_records_are_bounded(runner: ModelRunner) -> None:
    producer = ManualProducer()
    pipeline = InferencePipeline(settings(max_in_flight=4), {"breast-cancer": runner}, producer)
    pipeline.start()
    submitted = 0

    async def feed() -> None:
        nonlocal submitted
        for offset in range(10):
            await pipeline.submit(record(offset, runner), lambda: None)
            submitted += 1

    feeder = asyncio.ensure_future(feed())
    await wait_until(lambda: len(producer.sent) == 4)
    await asyncio.sleep(0.05)
    assert submitted == 4 and pipeline.in_flight == 4  # the fifth waits: backpressure
    for delivery in producer.deliveries[:2]:
        delivery.set_result(None)
    await wait_until(lambda: submitted == 6)
    async with asyncio.timeout(5):
        while pipeline.counts.predicted < 10:
            for delivery in producer.deliveries:
                if not delivery.done():
                    delivery.set_result(None)
            await asyncio.sleep(0.005)
    await feeder
    await pipeline.drain()
    assert pipeline.in_flight == 0
    await pipeline.stop()


async def test_results_carry_the_model_version_and_batch(runner: ModelRunner) -> None:
    producer = ManualProducer()
    pipeline = InferencePipeline(settings(max_wait_ms=50.0), {"breast-cancer": runner}, producer)
    pipeline.start()
    for offset in range(5):
        await pipeline.submit(record(offset, runner), lambda: None)
    await wait_until(lambda: len(producer.sent) == 5)
    results = [orjson.loads(r.value or b"") for r in producer.sent]
    assert [r["event_id"] for r in results] == [f"e{i}" for i in range(5)]
    assert {r["model_version"] for r in results} == {"1"}
    assert {r["batch_size"] for r in results} == {5}
    assert all(r.key == b"u" for r in producer.sent)
    for delivery in producer.deliveries:
        delivery.set_result(None)
    await pipeline.stop()
