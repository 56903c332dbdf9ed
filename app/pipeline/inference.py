"""The inference pipeline: records in, predictions or dead letters out, acks only after delivery.

Free of Faust so it can be driven and tested directly. Three stages, in submission order:

1. ``submit`` decodes and validates a record, asks the model catalog which version serves it
   (and which shadow versions see a copy), and hands its input to those versions'
   micro-batchers — or takes a cached result, or marks it for the dead-letter topic. It waits
   while ``max_in_flight`` records are unacknowledged: backpressure instead of unbounded memory.
2. The emitter takes records in order, waits for each outcome and enqueues its output records:
   a PredictionResult (plus shadow results for the shadow topic), or the untouched input on the
   dead-letter topic.
3. The acker waits for the broker to acknowledge each output, re-sending on failure, and
   only then acks the input record, so its offset can be committed.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from app.errors import InvalidRecord, RecordError
from app.kafka.delivery import InOrderConfirmer, OutboundRecord
from app.metrics import Metrics
from app.models.catalog import ModelCatalog
from app.models.metadata import ModelKey
from app.models.runner import ModelInput, ModelOutput, Runner
from app.pipeline.batcher import Batched, MicroBatcher
from app.pipeline.cache import ResultCache
from app.records.dead_letters import Headers, dead_letter_headers
from app.records.events import PredictionEvent, SourceRef, parse_event
from app.records.observations import Observation, source_name
from app.records.results import build_result, encode_result
from app.settings import BatchingSettings, TopicSettings

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

Observe = Callable[[list[Observation]], Awaitable[None]]
"""Hand delivered records to the statistics; the awaitable completes once they are durable."""


class Publisher(Protocol):
    async def send(self, record: OutboundRecord) -> Awaitable[Any]: ...

    async def send_many(self, records: Sequence[OutboundRecord]) -> list[Awaitable[Any]]: ...


@dataclass(slots=True)
class _Work:
    record: InboundRecord
    ack: Ack
    event: PredictionEvent | None = None
    runner: Runner | None = None
    outcome: asyncio.Future[Batched[ModelOutput]] | None = None
    shadow_runners: list[Runner] | None = None
    shadows: list[tuple[Runner, asyncio.Future[Batched[ModelOutput]]]] | None = None
    cache_hit: bool = False
    cache_key: CacheKey | None = None
    """Set on a cache miss: where the output goes once computed."""
    error: RecordError | None = None
    output: ModelOutput | None = None
    batch_size: int = 0
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
        batching: BatchingSettings,
        topics: TopicSettings,
        catalog: ModelCatalog,
        publisher: Publisher,
        retry_backoff_s: float,
        on_crash: Callable[[BaseException], Any] | None = None,
        metrics: Metrics | None = None,
        observe: Observe | None = None,
    ) -> None:
        """``retry_backoff_s``: the first pause before re-sending an output the broker did not acknowledge."""
        self._batching = batching
        self._topics = topics
        self._catalog = catalog
        self._publisher = publisher
        self._on_crash = on_crash
        self._observe = observe
        self._metrics = metrics or Metrics()
        self.counts = PipelineCounts()
        self._batchers: dict[Runner, MicroBatcher[ModelInput, ModelOutput]] = {}
        self._pending: dict[Runner, int] = {}
        """Records each runner still owes an output, so a retired runner closes only when it owes none."""
        self._retiring: set[Runner] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._cache: ResultCache[ModelOutput] | None = None
        if batching.result_cache_size:
            self._cache = ResultCache(batching.result_cache_size, batching.result_cache_ttl_s)
        self._credits = Credits(batching.max_in_flight)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._to_emit: asyncio.Queue[list[_Work]] = asyncio.Queue()
        self._to_ack: asyncio.Queue[tuple[list[_Work | Runner], Awaitable[None] | None]] = asyncio.Queue()
        self._confirmer = InOrderConfirmer[_Work | Runner](publisher.send, self._done, retry_backoff_s, "pipeline")
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def start(self) -> None:
        if self._tasks:
            return
        self._catalog.on_retired = self._retire
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._emit_forever(), name="pipeline-emitter"),
            loop.create_task(self._confirmer.run_forever(), name="pipeline-confirmer"),
            loop.create_task(self._ack_forever(), name="pipeline-acker"),
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

    def _batcher(self, runner: Runner) -> MicroBatcher[ModelInput, ModelOutput]:
        batcher = self._batchers.get(runner)
        if batcher is None:
            batcher = self._batchers[runner] = self._batcher_for(runner)
            batcher.start()
        return batcher

    def _batcher_for(self, runner: Runner) -> MicroBatcher[ModelInput, ModelOutput]:
        name, version = runner.metadata.name, runner.metadata.version
        compute = self._metrics.compute.labels(name, version)
        batch_size = self._metrics.batch_size.labels(name)
        queue_wait = self._metrics.queue_wait.labels(name)

        async def forward(rows: list[ModelInput]) -> list[ModelOutput]:
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
            max_batch_size=self._batching.max_batch_size,
            max_wait_s=self._batching.max_wait_ms / 1000.0,
            retries=self._batching.batch_retries,
            on_batch=on_batch,
        )

    def _prepare(self, record: InboundRecord, ack: Ack) -> _Work:
        work = _Work(record, ack)
        try:
            event = work.event = parse_event(record.value, record.source, self._batching.max_record_bytes)
            runner, shadows = self._catalog.select(event.model, event.user_id)
            work.runner = runner  # set before the check: a misfit is dead-lettered as meant for this model
            check_input(event, runner)
        except InvalidRecord as exc:
            work.error = exc
            return work
        work.shadow_runners = shadows or None
        return work

    def _batch(self, works: list[_Work]) -> None:
        """Hand the valid records' inputs to their runners' batchers (shadows too), in order."""
        per_runner: dict[Runner, list[_Work]] = {}
        shadowed: dict[Runner, list[_Work]] = {}
        for work in works:
            if work.runner is None or work.error is not None:
                continue
            if self._cache is None or not self._from_cache(work):
                per_runner.setdefault(work.runner, []).append(work)
            for shadow in work.shadow_runners or ():
                shadowed.setdefault(shadow, []).append(work)
        for runner, runner_works in per_runner.items():
            outcomes = self._submit(runner, runner_works)
            for work, outcome in zip(runner_works, outcomes, strict=True):
                work.outcome = outcome
        for shadow, shadow_works in shadowed.items():
            outcomes = self._submit(shadow, shadow_works)
            for work, outcome in zip(shadow_works, outcomes, strict=True):
                if work.shadows is None:
                    work.shadows = []
                work.shadows.append((shadow, outcome))

    def _submit(self, runner: Runner, works: list[_Work]) -> list[asyncio.Future[Batched[ModelOutput]]]:
        self._pending[runner] = self._pending.get(runner, 0) + len(works)
        return self._batcher(runner).submit_many([model_input(work.event) for work in works if work.event])

    def _from_cache(self, work: _Work) -> bool:
        assert self._cache is not None and work.runner is not None and work.event is not None
        model = work.runner.metadata.name
        key = cache_key(work.runner, work.event)
        cached = self._cache.get(key)
        if cached is None:
            self._metrics.cache_misses.labels(model).inc()
            work.cache_key = key
            return False
        self._metrics.cache_hits.labels(model).inc()
        work.outcome = asyncio.get_running_loop().create_future()
        work.outcome.set_result(Batched(cached, 0))
        work.cache_hit = True
        return True

    async def _emit_forever(self) -> None:
        step = self._batching.max_batch_size
        while True:
            works = await self._to_emit.get()
            for start in range(0, len(works), step):  # publish each model batch's share as soon as it is done
                part = works[start : start + step]
                items: list[_Work | Runner] = []
                outbounds: list[OutboundRecord] = []
                for work in part:
                    # The input's own output last: the group is acked only once all of its outputs are.
                    for shadow, outbound in await self._shadow_outbounds(work):
                        items.append(shadow)
                        outbounds.append(outbound)
                    items.append(work)
                    outbounds.append(await self._outbound(work))
                deliveries = await self._publisher.send_many(outbounds)
                self._confirmer.put(list(zip(items, outbounds, deliveries, strict=True)))

    async def _outbound(self, work: _Work) -> OutboundRecord:
        record = work.record
        if work.outcome is not None:
            try:
                batched = await work.outcome
            except RecordError as exc:
                work.error = exc
            if not work.cache_hit:  # a cached result owes its runner nothing
                self._owed(work.runner)
            if work.error is None:
                assert work.event is not None and work.runner is not None
                if self._cache is not None and work.cache_key is not None:
                    self._cache.put(work.cache_key, batched.value)
                result = build_result(
                    work.event, batched.value, work.runner.metadata, batched.batch_size, record.source, work.cache_hit
                )
                work.latency_s = result["latency_ms"] / 1000.0
                work.output, work.batch_size = batched.value, batched.batch_size
                return OutboundRecord(
                    self._topics.output_topic, record.key, encode_result(result), [], source=record.source
                )
        assert work.error is not None
        log.warning("dead-lettering %s: %s: %s", record.source, work.error.error_class, work.error.reason)
        runner = work.runner or self._catalog.serving(self._catalog.default_model)
        headers = dead_letter_headers(work.error, record.source, record.headers, runner.metadata)
        dead_letter = self._topics.dead_letter_topic
        return OutboundRecord(dead_letter, record.key, record.value, headers, record.timestamp_ms, source=record.source)

    async def _shadow_outbounds(self, work: _Work) -> list[tuple[Runner, OutboundRecord]]:
        """Shadow results for the shadow topic; a shadow's failure is counted, never dead-lettered."""
        outbounds = []
        assert work.event is not None or not work.shadows
        for runner, outcome in work.shadows or ():
            metadata = runner.metadata
            try:
                batched = await outcome
            except RecordError as exc:
                log.warning("shadow %s failed on %s: %s", runner.key, work, exc.reason)
                self._metrics.shadow_errors.labels(metadata.name, metadata.version).inc()
                continue
            finally:
                self._owed(runner)
            assert work.event is not None
            result = build_result(work.event, batched.value, metadata, batched.batch_size, work.record.source)
            result["shadow"] = True
            value = encode_result(result)
            shadow = OutboundRecord(self._topics.shadow_topic, work.record.key, value, [], source=work.record.source)
            outbounds.append((runner, shadow))
        return outbounds

    def _done(self, works: list[_Work | Runner]) -> None:
        """The broker acknowledged these outputs: their inputs are acked once the statistics have them too."""
        durable = None
        if self._observe is not None:
            durable = self._observe([self._observation(work) for work in works if isinstance(work, _Work)])
        self._to_ack.put_nowait((works, durable))

    async def _ack_forever(self) -> None:
        """Ack in confirmation order, each group once its statistics are durable (the confirmer moves on)."""
        while True:
            works, durable = await self._to_ack.get()
            if durable is not None:
                await durable
            await self._ack(works)

    async def _ack(self, works: list[_Work | Runner]) -> None:
        """Ack the inputs of delivered outputs, and count them."""
        predicted: dict[Runner, list[float]] = {}
        shadows = 0
        for work in works:
            if not isinstance(work, _Work):
                shadows += 1
                self._metrics.shadow_predictions.labels(work.metadata.name, work.metadata.version).inc()
                continue
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
        done = len(works) - shadows
        predicted_count = sum(len(latencies) for latencies in predicted.values())
        self.counts.predicted += predicted_count
        self.counts.dead_lettered += done - predicted_count
        self._in_flight -= done
        self._metrics.in_flight.dec(done)
        self._credits.release(done)
        if self._in_flight == 0:
            self._idle.set()

    def _observation(self, work: _Work) -> Observation:
        """What the statistics need of a delivered record (its model: as in the dead-letter headers)."""
        record = work.record
        source = source_name(record.source.topic, record.source.partition)
        if work.error is not None or work.output is None or work.event is None:
            metadata = (work.runner or self._catalog.serving(self._catalog.default_model)).metadata
            event_time_ms = record.timestamp_ms if record.timestamp_ms is not None else time.time() * 1000.0
            return Observation(metadata.name, metadata.version, event_time_ms, source, record.source.offset, True)
        assert work.runner is not None
        metadata, output = work.runner.metadata, work.output
        return Observation(
            metadata.name,
            metadata.version,
            work.event.event_time_ms,
            source,
            record.source.offset,
            prediction=output.prediction,
            label=output.label,
            latency_ms=work.latency_s * 1000.0,
            batch_size=work.batch_size,
        )

    def _retire(self, runner: Runner) -> None:
        """The catalog stopped routing to ``runner``: close it once it owes no outputs."""
        self._retiring.add(runner)
        if not self._pending.get(runner):
            self._close(runner)

    def _owed(self, runner: Runner | None) -> None:
        """One output of ``runner`` is computed (or failed)."""
        assert runner is not None
        left = self._pending[runner] = self._pending[runner] - 1
        if not left and runner in self._retiring:
            self._close(runner)

    def _close(self, runner: Runner) -> None:
        self._retiring.discard(runner)
        self._pending.pop(runner, None)
        batcher = self._batchers.pop(runner, None)
        if batcher is not None:
            task = asyncio.get_running_loop().create_task(batcher.stop(), name=f"stop-{runner.key}")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        runner.close()
        log.info("closed retired model %s", runner.key)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        assert exc is not None
        log.critical("%s crashed; nothing after this point is acked: %r", task.get_name(), exc)
        if self._on_crash is not None:
            self._on_crash(exc)


def check_input(event: PredictionEvent, runner: Runner) -> None:
    """Raise InvalidRecord when the event's input does not fit the model."""
    wanted = runner.metadata.input
    given = "features" if event.text is None else "text"
    if given != wanted:
        raise InvalidRecord("wrong_input_kind", f"the event carries {given}, model {runner.key} takes {wanted}")
    if event.text is not None:
        return
    expected = runner.metadata.input_size
    if len(event.features) != expected:
        raise InvalidRecord(
            "wrong_feature_count", f"{len(event.features)} features given, model {runner.key} takes {expected}"
        )


def model_input(event: PredictionEvent) -> ModelInput:
    return event.input


CacheKey = tuple[ModelKey, tuple[float, ...] | str]


def cache_key(runner: Runner, event: PredictionEvent) -> CacheKey:
    """The input itself, not only its hash, so colliding inputs never share a result."""
    return runner.key, tuple(event.features) if event.text is None else event.text
