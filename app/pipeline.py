"""The inference pipeline: records in, predictions or dead letters out, acks only after delivery.

Free of Faust so it can be driven and tested directly. Three stages, in submission order:

1. ``submit`` decodes and validates a record and hands its features to the model's
   micro-batcher (or marks it for the dead-letter topic). It waits while ``max_in_flight``
   records are unacknowledged: backpressure instead of unbounded memory.
2. The emitter takes records in order, waits for each outcome and enqueues one output
   record: a PredictionResult, or the untouched input on the dead-letter topic.
3. The acker waits for the broker to acknowledge each output, re-sending on failure, and
   only then acks the input record, so its offset can be committed.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from app.batcher import Batched, MicroBatcher
from app.dead_letter import Headers, dead_letter_headers
from app.delivery import InOrderConfirmer, OutboundRecord
from app.errors import InvalidRecord, RecordError
from app.events import PredictionEvent, SourceRef, parse_event
from app.metrics import Metrics
from app.results import build_result, encode_result
from app.runner import ModelOutput, ModelRunner
from app.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["Ack", "InboundRecord", "InferencePipeline", "OutboundRecord", "PipelineCounts"]


class InboundRecord(NamedTuple):
    source: SourceRef
    key: bytes | None
    value: bytes | None
    headers: Headers = []
    timestamp_ms: int | None = None


Ack = Callable[[], Any]
"""Mark the input record done (may return an awaitable)."""


class Publisher(Protocol):
    async def send(self, record: OutboundRecord) -> Awaitable[Any]: ...

    async def send_many(self, records: Sequence[OutboundRecord]) -> list[Awaitable[Any]]: ...


@dataclass(slots=True)
class _Work:
    record: InboundRecord
    ack: Ack
    event: PredictionEvent | None = None
    runner: ModelRunner | None = None
    outcome: asyncio.Future[Batched[ModelOutput]] | None = None
    error: RecordError | None = None
    latency_s: float = 0.0

    def __str__(self) -> str:
        return str(self.record.source)


@dataclass(slots=True)
class PipelineCounts:
    consumed: int = 0
    predicted: int = 0
    dead_lettered: int = 0
    batches: int = 0


class Credits:
    """A counting gate for records in flight, for one acquiring task: acquire(n) waits until n are free."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._available = total
        self._freed = asyncio.Event()

    async def acquire(self, n: int) -> None:
        if n > self.total:
            raise ValueError(f"cannot take {n} of {self.total} credits at once")
        while self._available < n:
            self._freed.clear()
            await self._freed.wait()
        self._available -= n

    def release(self, n: int = 1) -> None:
        self._available += n
        self._freed.set()


class InferencePipeline:
    def __init__(
        self,
        settings: Settings,
        runners: Mapping[str, ModelRunner],
        publisher: Publisher,
        on_crash: Callable[[BaseException], Any] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._runners = dict(runners)
        self._publisher = publisher
        self._on_crash = on_crash
        self._metrics = metrics or Metrics()
        self.counts = PipelineCounts()
        self._batchers = {name: self._batcher_for(runner) for name, runner in self._runners.items()}
        self._credits = Credits(settings.max_in_flight)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._to_emit: asyncio.Queue[list[_Work]] = asyncio.Queue()
        self._confirmer = InOrderConfirmer[_Work](
            publisher.send, self._done, settings.publish_retry_backoff_s, "pipeline"
        )
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def start(self) -> None:
        if self._tasks:
            return
        for batcher in self._batchers.values():
            batcher.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._emit_forever(), name="pipeline-emitter"),
            loop.create_task(self._confirmer.run_forever(), name="pipeline-acker"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_done)

    async def submit(self, record: InboundRecord, ack: Ack) -> None:
        """Accept one record; returns once it is queued (waits while too many are in flight)."""
        await self.submit_many([(record, ack)])

    async def submit_many(self, records: Sequence[tuple[InboundRecord, Ack]]) -> None:
        """Accept records in order; waits while accepting them would exceed MAX_IN_FLIGHT."""
        limit = self._credits.total
        for start in range(0, len(records), limit):
            chunk = records[start : start + limit]
            await self._credits.acquire(len(chunk))
            self._in_flight += len(chunk)
            self._metrics.in_flight.inc(len(chunk))
            self._idle.clear()
            self.counts.consumed += len(chunk)
            per_topic: dict[str, int] = {}
            for record, _ in chunk:
                per_topic[record.source.topic] = per_topic.get(record.source.topic, 0) + 1
            for topic, count in per_topic.items():
                self._metrics.events_consumed.labels(topic).inc(count)
            works = [self._prepare(record, ack) for record, ack in chunk]
            self._batch(works)
            self._to_emit.put_nowait(works)

    async def drain(self) -> None:
        """Wait until every submitted record is delivered and acked."""
        await self._idle.wait()

    async def stop(self) -> None:
        await self.drain()
        for batcher in self._batchers.values():
            await batcher.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def _batcher_for(self, runner: ModelRunner) -> MicroBatcher[list[float], ModelOutput]:
        name, version = runner.metadata.name, runner.metadata.version
        compute = self._metrics.compute.labels(name, version)
        batch_size = self._metrics.batch_size.labels(name)
        queue_wait = self._metrics.queue_wait.labels(name)

        async def forward(rows: list[list[float]]) -> list[ModelOutput]:
            started = time.perf_counter()
            outputs = await runner.predict_async(rows)
            compute.observe(time.perf_counter() - started)
            return outputs

        def on_batch(waits_s: list[float]) -> None:
            self.counts.batches += 1
            batch_size.observe(len(waits_s))
            for wait_s in waits_s:
                queue_wait.observe(wait_s)

        return MicroBatcher(
            forward,
            max_batch_size=self._settings.max_batch_size,
            max_wait_s=self._settings.max_wait_ms / 1000.0,
            retries=self._settings.batch_retries,
            on_batch=on_batch,
        )

    def _prepare(self, record: InboundRecord, ack: Ack) -> _Work:
        work = _Work(record, ack)
        try:
            work.event = parse_event(record.value, record.source, self._settings.max_record_bytes)
            work.runner = self._runner_for(work.event)
        except InvalidRecord as exc:
            work.error = exc
        return work

    def _batch(self, works: list[_Work]) -> None:
        """Hand the valid records' features to their model's batcher, in order."""
        per_model: dict[str, list[_Work]] = {}
        for work in works:
            if work.runner is not None:
                per_model.setdefault(work.runner.metadata.name, []).append(work)
        for name, model_works in per_model.items():
            features = [work.event.features for work in model_works if work.event is not None]
            for work, outcome in zip(model_works, self._batchers[name].submit_many(features), strict=True):
                work.outcome = outcome

    def _runner_for(self, event: PredictionEvent) -> ModelRunner:
        name = event.model or self._settings.default_model
        runner = self._runners.get(name)
        if runner is None:
            raise InvalidRecord("unknown_model", f"model {name!r} is not loaded (loaded: {', '.join(self._runners)})")
        expected = runner.metadata.input_size
        if len(event.features) != expected:
            raise InvalidRecord(
                "wrong_feature_count", f"{len(event.features)} features given, model {name!r} takes {expected}"
            )
        return runner

    async def _emit_forever(self) -> None:
        step = self._settings.max_batch_size
        while True:
            works = await self._to_emit.get()
            for start in range(0, len(works), step):  # publish each model batch's share as soon as it is done
                part = works[start : start + step]
                outbounds = [await self._outbound(work) for work in part]
                deliveries = await self._publisher.send_many(outbounds)
                self._confirmer.put(list(zip(part, outbounds, deliveries, strict=True)))

    async def _outbound(self, work: _Work) -> OutboundRecord:
        record = work.record
        if work.outcome is not None:
            try:
                batched = await work.outcome
            except RecordError as exc:
                work.error = exc
            else:
                assert work.event is not None and work.runner is not None
                metadata = work.runner.metadata
                result = build_result(work.event, batched.value, metadata, batched.batch_size, record.source)
                work.latency_s = result["latency_ms"] / 1000.0
                return OutboundRecord(self._settings.output_topic, record.key, encode_result(result), [])
        assert work.error is not None
        log.warning("dead-lettering %s: %s: %s", record.source, work.error.error_class, work.error.reason)
        runner = work.runner or self._runners[self._settings.default_model]
        headers = dead_letter_headers(work.error, record.source, record.headers, runner.metadata)
        return OutboundRecord(self._settings.dead_letter_topic, record.key, record.value, headers, record.timestamp_ms)

    async def _done(self, works: list[_Work]) -> None:
        """Ack the inputs of outputs the broker acknowledged, and count them."""
        predicted: dict[ModelRunner, list[float]] = {}
        for work in works:
            acked = work.ack()
            if inspect.isawaitable(acked):
                await acked
            if work.error is None:
                assert work.runner is not None
                predicted.setdefault(work.runner, []).append(work.latency_s)
            else:
                self._metrics.dead_letters.labels(work.error.error_class).inc()
        for runner, latencies in predicted.items():
            self._metrics.predictions.labels(runner.metadata.name, runner.metadata.version).inc(len(latencies))
            end_to_end = self._metrics.end_to_end.labels(runner.metadata.name)
            for latency_s in latencies:
                end_to_end.observe(max(latency_s, 0.0))
        done = len(works)
        predicted_count = sum(len(latencies) for latencies in predicted.values())
        self.counts.predicted += predicted_count
        self.counts.dead_lettered += done - predicted_count
        self._in_flight -= done
        self._metrics.in_flight.dec(done)
        self._credits.release(done)
        if self._in_flight == 0:
            self._idle.set()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        assert exc is not None
        log.critical("%s crashed; nothing after this point is acked: %r", task.get_name(), exc)
        if self._on_crash is not None:
            self._on_crash(exc)
