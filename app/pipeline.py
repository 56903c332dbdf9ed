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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.batcher import Batched, MicroBatcher
from app.dead_letter import Headers, dead_letter_headers
from app.errors import InvalidRecord, RecordError
from app.events import PredictionEvent, SourceRef, parse_event
from app.results import build_result, encode_result
from app.runner import ModelOutput, ModelRunner
from app.settings import Settings

log = logging.getLogger(__name__)

MAX_RESEND_BACKOFF_S = 30.0


@dataclass(frozen=True, slots=True)
class InboundRecord:
    source: SourceRef
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class OutboundRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers


Send = Callable[[OutboundRecord], Awaitable[Awaitable[Any]]]
"""Enqueue a record with the producer; the returned awaitable completes on the broker's ack."""
Ack = Callable[[], Any]
"""Mark the input record done (may return an awaitable)."""


@dataclass(slots=True)
class _Work:
    record: InboundRecord
    ack: Ack
    event: PredictionEvent | None = None
    runner: ModelRunner | None = None
    outcome: asyncio.Future[Batched[ModelOutput]] | None = None
    error: RecordError | None = None


@dataclass(slots=True)
class PipelineCounts:
    consumed: int = 0
    predicted: int = 0
    dead_lettered: int = 0
    batches: int = 0


class InferencePipeline:
    def __init__(
        self,
        settings: Settings,
        runners: Mapping[str, ModelRunner],
        send: Send,
        on_crash: Callable[[BaseException], Any] | None = None,
    ) -> None:
        self._settings = settings
        self._runners = dict(runners)
        self._send = send
        self._on_crash = on_crash
        self.counts = PipelineCounts()
        self._batchers = {
            name: MicroBatcher[list[float], ModelOutput](
                runner.predict_async,
                max_batch_size=settings.max_batch_size,
                max_wait_s=settings.max_wait_ms / 1000.0,
                retries=settings.batch_retries,
                on_batch=self._count_batch,
            )
            for name, runner in self._runners.items()
        }
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._to_emit: asyncio.Queue[_Work] = asyncio.Queue()
        self._to_confirm: asyncio.Queue[tuple[_Work, OutboundRecord, Awaitable[Any]]] = asyncio.Queue()
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
            loop.create_task(self._confirm_forever(), name="pipeline-acker"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._task_done)

    async def submit(self, record: InboundRecord, ack: Ack) -> None:
        """Accept one record; returns once it is queued (waits while too many are in flight)."""
        await self._slots.acquire()
        self._in_flight += 1
        self._idle.clear()
        self.counts.consumed += 1
        self._to_emit.put_nowait(self._prepare(record, ack))

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

    def _prepare(self, record: InboundRecord, ack: Ack) -> _Work:
        work = _Work(record, ack)
        try:
            work.event = parse_event(record.value, record.source, self._settings.max_record_bytes)
            work.runner = self._runner_for(work.event)
        except InvalidRecord as exc:
            work.error = exc
            return work
        work.outcome = self._batchers[work.runner.metadata.name].submit(work.event.features)
        return work

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
        while True:
            work = await self._to_emit.get()
            outbound = await self._outbound(work)
            delivery = await self._send(outbound)
            self._to_confirm.put_nowait((work, outbound, delivery))

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
                return OutboundRecord(self._settings.output_topic, record.key, encode_result(result), [])
        assert work.error is not None
        log.warning("dead-lettering %s: %s: %s", record.source, work.error.error_class, work.error.reason)
        headers = dead_letter_headers(work.error, record.source, record.headers)
        return OutboundRecord(self._settings.dead_letter_topic, record.key, record.value, headers)

    async def _confirm_forever(self) -> None:
        while True:
            work, outbound, delivery = await self._to_confirm.get()
            await self._await_delivery(outbound, delivery, work.record.source)
            acked = work.ack()
            if inspect.isawaitable(acked):
                await acked
            if work.error is None:
                self.counts.predicted += 1
            else:
                self.counts.dead_lettered += 1
            self._in_flight -= 1
            self._slots.release()
            if self._in_flight == 0:
                self._idle.set()

    async def _await_delivery(self, outbound: OutboundRecord, delivery: Awaitable[Any], source: SourceRef) -> None:
        backoff = self._settings.publish_retry_backoff_s
        while True:
            try:
                await delivery
                return
            except Exception as exc:  # noqa: BLE001 - never ack what the broker did not take
                log.error(
                    "output of %s to %s not acknowledged (%r); re-sending in %.1fs",
                    source,
                    outbound.topic,
                    exc,
                    backoff,
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_RESEND_BACKOFF_S)
            delivery = await self._send(outbound)

    def _count_batch(self, size: int) -> None:
        self.counts.batches += 1

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        assert exc is not None
        log.critical("%s crashed; nothing after this point is acked: %r", task.get_name(), exc)
        if self._on_crash is not None:
            self._on_crash(exc)
