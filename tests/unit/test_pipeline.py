"""The pipeline's delivery rules, with the producer replaced by an in-memory send function.

Kafka itself is exercised in tests/integration; here the point is ordering and acking logic:
an input is acked only after its output is acknowledged, failed deliveries are re-sent, and
in-flight records are bounded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.metrics import Metrics
from app.models.catalog import ModelCatalog
from app.models.runner import Runner
from app.pipeline.admission import Admission, Admitted, Refused
from app.pipeline.inference import InboundRecord, InferencePipeline, OutboundRecord
from app.records.events import SourceRef
from app.settings import REPO_ROOT, ModelSettings, Settings


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
def catalog() -> ModelCatalog:
    catalog = ModelCatalog(models(model_version="1"), warm_up_batch_size=8)
    catalog.load()
    return catalog


@pytest.fixture(scope="module")
def runner(catalog: ModelCatalog) -> Runner:
    return catalog.serving("breast-cancer")


DEFAULTS = Settings.from_env({})


def models(**overrides: Any) -> ModelSettings:
    return dataclasses.replace(DEFAULTS.models, **overrides)


def new_pipeline(catalog: ModelCatalog, producer: Any, **batching: Any) -> InferencePipeline:
    """A pipeline with the default settings, batches closing after 1 ms unless ``batching`` says otherwise."""
    settings = dataclasses.replace(DEFAULTS.batching, **{"max_wait_ms": 1.0, **batching})
    return InferencePipeline(settings, DEFAULTS.topics, catalog, producer, retry_backoff_s=0.01)


def record(offset: int, runner: Runner, valid: bool = True) -> InboundRecord:
    features = [1.0] * runner.metadata.input_size
    value = orjson.dumps({"event_id": f"e{offset}", "user_id": "u", "features": features, "timestamp": 0})
    return InboundRecord(SourceRef("events", 0, offset), b"u", value if valid else b"{broken")


async def wait_until(condition: Any, limit_s: float = 5.0) -> None:
    """Poll a condition the pipeline's background tasks will make true."""
    async with asyncio.timeout(limit_s):
        while not condition():  # noqa: ASYNC110 - the state lives in other components
            await asyncio.sleep(0.005)


async def test_acks_only_after_the_broker_acknowledges(catalog: ModelCatalog, runner: Runner) -> None:
    producer = ManualProducer()
    pipeline = new_pipeline(catalog, producer)
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


async def test_a_failed_delivery_is_resent_before_the_ack(catalog: ModelCatalog, runner: Runner) -> None:
    producer = ManualProducer()
    pipeline = new_pipeline(catalog, producer)
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


async def test_in_flight_records_are_bounded(catalog: ModelCatalog, runner: Runner) -> None:
    producer = ManualProducer()
    pipeline = new_pipeline(catalog, producer, max_in_flight=4)
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


async def test_results_carry_the_model_version_and_batch(catalog: ModelCatalog, runner: Runner) -> None:
    producer = ManualProducer()
    pipeline = new_pipeline(catalog, producer, max_wait_ms=50.0)
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


@pytest.mark.parametrize("flush_when_input_idle", [True, False])
async def test_an_idle_input_closes_the_batch_only_when_set_to(
    catalog: ModelCatalog, runner: Runner, flush_when_input_idle: bool
) -> None:
    max_wait_s = 60.0 if flush_when_input_idle else 0.3
    producer = ManualProducer()
    pipeline = new_pipeline(
        catalog, producer, max_wait_ms=max_wait_s * 1000, flush_when_input_idle=flush_when_input_idle
    )
    pipeline.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await pipeline.submit_many([(record(offset, runner), lambda: None) for offset in range(3)])
    pipeline.input_idle()
    await wait_until(lambda: len(producer.sent) == 3)  # within 5 s: not after a minute when flushing
    if not flush_when_input_idle:
        assert loop.time() - started >= max_wait_s  # the batch waited out MAX_WAIT_MS
    assert {orjson.loads(r.value or b"")["batch_size"] for r in producer.sent} == {3}
    for delivery in producer.deliveries:
        delivery.set_result(None)
    await pipeline.stop()


class AckingProducer(ManualProducer):
    """A broker that acknowledges every record at once."""

    async def send(self, record: OutboundRecord) -> asyncio.Future[None]:
        future = await super().send(record)
        future.set_result(None)
        return future


def results_on(producer: ManualProducer, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(r.value or b"") for r in producer.sent if r.topic == topic]


async def test_a_cache_hit_skips_the_forward_and_says_so(catalog: ModelCatalog, runner: Runner) -> None:
    producer = AckingProducer()
    pipeline = new_pipeline(catalog, producer, result_cache_size=10)
    pipeline.start()
    await pipeline.submit(record(0, runner), lambda: None)
    await pipeline.drain()
    await pipeline.submit(record(1, runner), lambda: None)  # same features, another event
    await pipeline.drain()
    first, second = results_on(producer, "predictions")
    assert (first["cache_hit"], first["batch_size"]) == (False, 1)
    assert (second["cache_hit"], second["batch_size"]) == (True, 0)
    assert second["event_id"] == "e1" and second["offset"] == 1
    assert second["prediction"] == first["prediction"] and second["model_version"] == first["model_version"]
    assert pipeline.counts.batches == 1
    await pipeline.stop()


@pytest.fixture(scope="module")
def shadowed() -> ModelCatalog:
    routing = '{"breast-cancer": {"split": {"1": 1}, "shadow": ["2"]}}'
    catalog = ModelCatalog(models(model_routing=routing), warm_up_batch_size=8)
    catalog.load()
    return catalog


async def test_shadow_results_go_to_the_shadow_topic_only(shadowed: ModelCatalog, runner: Runner) -> None:
    producer = ManualProducer()
    pipeline = new_pipeline(shadowed, producer)
    pipeline.start()
    acked: list[int] = []
    for offset in range(3):
        await pipeline.submit(record(offset, runner), lambda o=offset: acked.append(o))
    await wait_until(lambda: len(producer.sent) == 6)
    served, shadow = results_on(producer, "predictions"), results_on(producer, "predictions.shadow")
    assert [(r["event_id"], r["model_version"], "shadow" in r) for r in served] == [
        (f"e{n}", "1", False) for n in range(3)
    ]
    assert [(r["event_id"], r["model_version"], r["shadow"]) for r in shadow] == [
        (f"e{n}", "2", True) for n in range(3)
    ]
    # An input is acked only once its shadow result is acknowledged too.
    for delivery, sent in zip(producer.deliveries, producer.sent, strict=True):
        if sent.topic == "predictions":
            delivery.set_result(None)
    await asyncio.sleep(0.05)
    assert acked == []
    for delivery in producer.deliveries:
        if not delivery.done():
            delivery.set_result(None)
    await wait_until(lambda: acked == [0, 1, 2])
    assert pipeline.counts.predicted == 3
    await pipeline.stop()


async def test_a_switch_between_batches_tags_each_result_with_its_producer(tmp_path: Path) -> None:
    for version in ("1", "2"):
        shutil.copytree(REPO_ROOT / "models" / "breast-cancer" / version, tmp_path / "breast-cancer" / version)
    routing = tmp_path / "routing.json"
    routing.write_text('{"breast-cancer": {"split": {"1": 1}}}')
    catalog = ModelCatalog(models(model_dir=tmp_path, routing_file=routing), warm_up_batch_size=8)
    catalog.load()
    old = catalog.serving("breast-cancer")
    producer = AckingProducer()
    pipeline = new_pipeline(catalog, producer, max_wait_ms=30.0)
    pipeline.start()
    for offset in range(4):
        await pipeline.submit(record(offset, old), lambda: None)
    routing.write_text('{"breast-cancer": {"split": {"2": 1}}}')
    await catalog.refresh()  # while the first four still wait for their batch
    for offset in range(4, 8):
        await pipeline.submit(record(offset, old), lambda: None)
    await pipeline.drain()
    results = results_on(producer, "predictions")
    assert [(r["offset"], r["model_version"]) for r in results] == [(n, "1" if n < 4 else "2") for n in range(8)]
    assert {r["batch_size"] for r in results} == {4}
    assert old not in pipeline._batchers  # retired and closed once its last records were out
    await pipeline.stop()


def test_admission_refuses_with_the_reason_and_the_model_meant(catalog: ModelCatalog, runner: Runner) -> None:
    admission = Admission(catalog, DEFAULTS.batching.max_record_bytes)
    broken = admission.admit(record(0, runner, valid=False))
    assert isinstance(broken, Refused)
    assert (broken.error.error_class, broken.runner) == ("invalid_json", None)  # never routed
    value = orjson.dumps({"event_id": "e1", "user_id": "u", "features": [1.0], "timestamp": 0})
    misfit = admission.admit(InboundRecord(SourceRef("events", 0, 1), b"u", value))
    assert isinstance(misfit, Refused)
    assert (misfit.error.error_class, misfit.runner) == ("wrong_feature_count", runner)  # its dead letter names it
    admitted = admission.admit(record(2, runner))
    assert isinstance(admitted, Admitted)
    assert (admitted.runner, admitted.shadows, admitted.cached, admitted.cache_key) == (runner, [], None, None)


async def test_metrics_are_taken_at_each_stage(shadowed: ModelCatalog, runner: Runner) -> None:
    metrics = Metrics()
    settings = dataclasses.replace(DEFAULTS.batching, max_wait_ms=1.0, result_cache_size=10)
    pipeline = InferencePipeline(settings, DEFAULTS.topics, shadowed, AckingProducer(), 0.01, metrics=metrics)
    pipeline.start()
    await pipeline.submit_many([(record(n, runner, valid=n != 3), lambda: None) for n in range(4)])
    await pipeline.drain()
    await pipeline.submit(record(4, runner), lambda: None)  # a cache hit: no forward, the shadow still runs
    await pipeline.drain()

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    model, served, shadow = {"model": "breast-cancer"}, {"version": "1"}, {"version": "2"}
    assert sample("inference_events_consumed_total", topic="events") == 5
    assert sample("inference_result_cache_misses_total", **model, **served) == 3
    assert sample("inference_result_cache_hits_total", **model, **served) == 1
    assert sample("inference_batch_size_count", **model, **served) == 1  # served 3 (one cache hit)
    assert sample("inference_batch_size_sum", **model, **served) == 3
    assert sample("inference_batch_size_count", **model, **shadow) == 2  # shadow 3 then 1
    assert sample("inference_batch_size_sum", **model, **shadow) == 4
    assert sample("inference_queue_wait_seconds_count", **model, **served) == 3
    assert sample("inference_queue_wait_seconds_count", **model, **shadow) == 4
    assert sample("inference_model_compute_seconds_count", **model, **served) == 1
    assert sample("inference_model_compute_seconds_count", **model, **shadow) == 2
    assert sample("inference_predictions_total", **model, **served) == 4
    assert sample("inference_end_to_end_latency_seconds_count", **model, **served) == 4
    assert sample("inference_end_to_end_latency_seconds_count", **model, **shadow) in (None, 0)  # shadows: none
    assert sample("inference_dead_letters_total", **model, **served, reason="invalid_json") == 1
    assert sample("inference_shadow_predictions_total", **model, **shadow) == 4
    assert sample("inference_shadow_errors_total", **model, **shadow) is None
    assert sample("inference_records_in_flight") == 0
    assert dataclasses.asdict(pipeline.counts) == {"consumed": 5, "predicted": 4, "dead_lettered": 1, "batches": 3}
    await pipeline.stop()


async def test_records_sharing_a_failed_batch_delivery_are_each_resent(catalog: ModelCatalog, runner: Runner) -> None:
    """A producer batch's one future carries many records: when it fails, every one of them is re-sent."""
    producer = BatchProducer()
    pipeline = new_pipeline(catalog, producer)
    pipeline.start()
    acked: list[int] = []
    await pipeline.submit_many([(record(offset, runner), partial(acked.append, offset)) for offset in range(3)])
    await wait_until(lambda: len(producer.sent) == 3)
    producer.deliveries[0].set_exception(TimeoutError("broker away"))
    for resent in range(1, 4):  # in order, each once the one before it is acknowledged
        await wait_until(lambda resent=resent: len(producer.sent) == 3 + resent)
        assert producer.sent[-1] == producer.sent[resent - 1] and acked == []
        producer.deliveries[resent].set_result(None)
    await wait_until(lambda: acked == [0, 1, 2])
    await pipeline.stop()


class BatchProducer(ManualProducer):
    """Enqueues a group of records as one batch: one delivery future for all of them, as aiokafka's send_batch."""

    async def send_many(self, records: Sequence[OutboundRecord]) -> list[asyncio.Future[None]]:
        self.sent.extend(records)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.deliveries.append(future)
        return [future] * len(records)
