"""The inference pipeline: records in, predictions or dead letters out, acks only after delivery.

``InferencePipeline`` runs the data path's stages, in submission order:

    decode -> admit -> batch -> predict -> build outputs -> deliver -> ack

``submit_many`` admits records (``admission``) and hands each admitted input to the micro-batchers
of the version that serves it and of its shadow versions, waiting while ``max_in_flight`` records
are unacknowledged: backpressure instead of unbounded memory. ``input_idle`` says the input has
nothing more buffered, so the batchers need not wait for more (FLUSH_WHEN_INPUT_IDLE). The emitter awaits each input's
outcome in order and builds its outputs (``outputs``); the confirmer waits until the broker
acknowledges each, re-sending on failure; the acker then acks the inputs, once the statistics have
them too, so their offsets can be committed. ``stage_metrics`` measures at these boundaries.

It also owns the batchers: one per model version, started with its first record, closed once the
catalog has retired the version and it owes no more outputs.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from app.errors import RecordError
from app.kafka.delivery import InOrderConfirmer, OutboundRecord
from app.logs import record_fields
from app.metrics import Metrics
from app.models.catalog import ModelCatalog
from app.models.runner import ModelInput, ModelOutput, Runner
from app.pipeline.admission import Admission, Admitted, InboundRecord, Refused, check_input
from app.pipeline.batcher import Batched, MicroBatcher
from app.pipeline.cache import ResultCache
from app.pipeline.outputs import Ack, Confirmation, Outputs, ShadowResult
from app.pipeline.stage_metrics import PipelineCounts, StageMetrics
from app.pipeline.tracing import BatchTracer
from app.records.observations import Observation
from app.records.wire_format import RecordFormats
from app.settings import BatchingSettings, TopicSettings, TracingSettings, defaults

log = logging.getLogger(__name__)

__all__ = ["Ack", "InboundRecord", "InferencePipeline", "OutboundRecord", "PipelineCounts", "check_input"]

Observe = Callable[[list[Observation]], Awaitable[None]]
"""Hand delivered records to the statistics; the awaitable completes once they are durable."""

Outcome = asyncio.Future[Batched[ModelOutput]]
"""An input's output from a batcher, or the ModelError that dead-letters it."""


class Publisher(Protocol):
    async def send(self, record: OutboundRecord) -> Awaitable[Any]: ...

    async def send_many(self, records: Sequence[OutboundRecord]) -> list[Awaitable[Any]]: ...


ShadowOutcomes = list[tuple[Runner, Outcome]]
_Rows = tuple[list[int], list[ModelInput], list[Any]]
"""What one version's batcher is handed from a chunk: the records' positions, their inputs, and (when
tracing) their trace contexts."""


# Per chunk, not per record: every object a record holds while in flight costs garbage collection time.
@dataclass(slots=True)
class _Chunk:
    """Records submitted together, as admitted, and the outcomes each awaits (by position)."""

    inputs: Sequence[tuple[InboundRecord, Ack]]
    admissions: list[Admitted | Refused]
    outcomes: list[Outcome | None]
    """From the serving version's batcher; None where refused or answered from the cache."""
    shadows: list[ShadowOutcomes | None] | None
    """The shadow versions' outcomes; None when no record of the chunk has shadows."""


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
        tracing: TracingSettings | None = None,
        tracer: BatchTracer | None = None,
        formats: RecordFormats | None = None,
    ) -> None:
        """``retry_backoff_s``: the first pause before re-sending an output the broker did not acknowledge.
        ``tracing``: which input headers the outputs carry; ``tracer``: spans per batch (None: none).
        ``formats``: how inputs are decoded and outputs encoded (INPUT_FORMAT, OUTPUT_FORMAT; JSON by default)."""
        formats = formats or RecordFormats()
        self._prepare = formats.prepare
        self._batching = batching
        self._catalog = catalog
        self._publisher = publisher
        self._on_crash = on_crash
        self._observe = observe
        self._stage_metrics = StageMetrics(metrics or Metrics())
        self.counts = self._stage_metrics.counts
        self._cache: ResultCache[ModelOutput] | None = None
        if batching.result_cache_size:
            self._cache = ResultCache(batching.result_cache_size, batching.result_cache_ttl_s)
        self._admission = Admission(catalog, batching.max_record_bytes, self._cache, formats.decode)
        tracing = tracing or defaults(TracingSettings)
        self._outputs = Outputs(topics, catalog, formats.result, formats.shadow, tracing.propagated_headers)
        self._tracer = tracer
        self._batchers: dict[Runner, MicroBatcher[ModelInput, ModelOutput]] = {}
        self._pending: dict[Runner, int] = {}
        """Records each runner still owes an output, so a retired runner closes only when it owes none."""
        self._retiring: set[Runner] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._credits = Credits(batching.max_in_flight)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._to_emit: asyncio.Queue[_Chunk] = asyncio.Queue()
        self._to_ack: asyncio.Queue[tuple[list[Confirmation], Awaitable[None] | None]] = asyncio.Queue()
        self._confirmer = InOrderConfirmer[Confirmation](publisher.send, self._done, retry_backoff_s, "pipeline")
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def unacknowledged_s(self) -> float:
        """How long the oldest output has waited for the broker's acknowledgement (0 when none waits)."""
        return self._confirmer.unacknowledged_s

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
        admit = self._admission.admit
        for start in range(0, len(records), limit):
            chunk = records[start : start + limit]
            await self._credits.acquire(len(chunk))
            self._in_flight += len(chunk)
            self._idle.clear()
            if self._prepare is not None:  # the writer schemas of ids not seen before, off the event loop
                await self._prepare([record.value for record, _ in chunk])
            admissions = [admit(record) for record, _ in chunk]
            self._stage_metrics.on_admitted(admissions)
            if self._cache is not None:
                self._stage_metrics.on_cache_lookups(admissions)
            self._to_emit.put_nowait(self._batch(chunk, admissions))

    def input_idle(self) -> None:
        """The input has nothing more buffered: with FLUSH_WHEN_INPUT_IDLE, the batches being collected
        close now with what they hold instead of waiting out MAX_WAIT_MS for more records."""
        if self._batching.flush_when_input_idle:
            for batcher in self._batchers.values():
                batcher.flush()

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

    # Batch and predict: one micro-batcher per model version.

    def _batch(self, inputs: Sequence[tuple[InboundRecord, Ack]], admissions: list[Admitted | Refused]) -> _Chunk:
        """Hand the admitted inputs to their versions' batchers (shadows too), in order; cache hits skip theirs."""
        served: dict[Runner, _Rows] = {}
        shadowed: dict[Runner, _Rows] = {}
        tracer = self._tracer
        for position, admission in enumerate(admissions):
            if isinstance(admission, Refused):
                continue
            context = None if tracer is None else tracer.context_of(admission.record.headers)
            if admission.cached is None:
                _collect(served, admission.runner, position, admission, context)
            for shadow in admission.shadows:
                _collect(shadowed, shadow, position, admission, context)
        outcomes: list[Outcome | None] = [None] * len(admissions)
        for runner, rows in served.items():
            for position, outcome in zip(rows[0], self._submit(runner, rows), strict=True):
                outcomes[position] = outcome
        if not shadowed:
            return _Chunk(inputs, admissions, outcomes, None)
        shadows: list[ShadowOutcomes | None] = [None] * len(admissions)
        for shadow, rows in shadowed.items():
            for position, outcome in zip(rows[0], self._submit(shadow, rows), strict=True):
                record_shadows = shadows[position]
                if record_shadows is None:
                    record_shadows = shadows[position] = []
                record_shadows.append((shadow, outcome))
        return _Chunk(inputs, admissions, outcomes, shadows)

    def _submit(self, runner: Runner, rows: _Rows) -> list[Outcome]:
        _, inputs, contexts = rows
        self._pending[runner] = self._pending.get(runner, 0) + len(inputs)
        batcher = self._batchers.get(runner)
        if batcher is None:
            batcher = self._batchers[runner] = self._batcher_for(runner)
            batcher.start()
        return batcher.submit_many(inputs, contexts if self._tracer is not None else None)

    def _batcher_for(self, runner: Runner) -> MicroBatcher[ModelInput, ModelOutput]:
        callbacks = self._stage_metrics.batch_callbacks(runner)
        runner.on_stages = callbacks.on_stages

        async def forward(rows: list[ModelInput]) -> list[ModelOutput]:
            started = time.perf_counter()
            outputs = await runner.predict_async(rows)
            callbacks.on_forward(time.perf_counter() - started)
            return outputs

        return MicroBatcher(
            forward,
            max_batch_size=self._batching.max_batch_size,
            max_wait_s=self._batching.max_wait_ms / 1000.0,
            retries=self._batching.batch_retries,
            batches_in_flight=runner.batches_in_flight,
            on_batch=callbacks.on_batch,
            scope=None if self._tracer is None else self._tracer.scope(runner),
        )

    def _retire(self, runner: Runner) -> None:
        """The catalog stopped routing to ``runner``: close it once it owes no outputs."""
        self._retiring.add(runner)
        if not self._pending.get(runner):
            self._close(runner)

    def _owed(self, runner: Runner) -> None:
        """One output of ``runner`` is computed (or failed)."""
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

    # Build outputs and deliver them.

    async def _emit_forever(self) -> None:
        step = self._batching.max_batch_size
        while True:
            chunk = await self._to_emit.get()
            size = len(chunk.admissions)
            for start in range(0, size, step):  # publish each model batch's share as soon as it is done
                await self._emit(chunk, start, min(start + step, size))

    async def _emit(self, chunk: _Chunk, start: int, stop: int) -> None:
        """Await each input's outcome in order, and send its outputs, the input's own last (the group is
        acked only once all of its outputs are)."""
        confirmations: list[Confirmation] = []
        outbounds: list[OutboundRecord] = []
        confirmation: Confirmation
        for position in range(start, stop):
            admission, ack, outcome = chunk.admissions[position], chunk.inputs[position][1], chunk.outcomes[position]
            shadows = chunk.shadows[position] if chunk.shadows is not None else None
            if shadows is not None:
                assert isinstance(admission, Admitted)
                await self._emit_shadows(admission, shadows, confirmations, outbounds)
            if isinstance(admission, Refused):
                confirmation, outbound = self._outputs.dead_lettered(
                    admission.record, ack, admission.error, admission.runner
                )
            elif outcome is None:
                assert admission.cached is not None
                confirmation, outbound = self._outputs.predicted(admission, ack, admission.cached)
            else:
                try:
                    output = await outcome
                except RecordError as exc:
                    self._owed(admission.runner)
                    confirmation, outbound = self._outputs.dead_lettered(
                        admission.record, ack, exc, admission.runner, admission.event.event_id
                    )
                else:
                    self._owed(admission.runner)
                    if admission.cache_key is not None and self._cache is not None:
                        self._cache.put(admission.cache_key, output.value)
                    confirmation, outbound = self._outputs.predicted(admission, ack, output)
            confirmations.append(confirmation)
            outbounds.append(outbound)
        deliveries = await self._publisher.send_many(outbounds)
        self._confirmer.put(list(zip(confirmations, outbounds, deliveries, strict=True)))

    async def _emit_shadows(
        self,
        admitted: Admitted,
        shadows: ShadowOutcomes,
        confirmations: list[Confirmation],
        outbounds: list[OutboundRecord],
    ) -> None:
        """Shadow results for the shadow topic; a shadow's failure is counted, never dead-lettered."""
        for runner, outcome in shadows:
            try:
                output = await outcome
            except RecordError as exc:
                source, metadata = admitted.record.source, runner.metadata
                event_id = admitted.event.event_id
                fields = record_fields(
                    *source, event_id, error_class=exc.error_class, model=metadata.name, version=metadata.version
                )
                log.warning("shadow %s failed on %s: %s", runner.key, source, exc.reason, extra=fields)
                self._stage_metrics.on_shadow_failed(runner)
                continue
            finally:
                self._owed(runner)
            confirmation, outbound = self._outputs.shadow(admitted, runner, output)
            confirmations.append(confirmation)
            outbounds.append(outbound)

    # Ack.

    def _done(self, confirmations: list[Confirmation]) -> None:
        """The broker acknowledged these outputs: their inputs are acked once the statistics have them too."""
        durable = None
        if self._observe is not None:
            durable = self._observe([c.observation() for c in confirmations if not isinstance(c, ShadowResult)])
        self._to_ack.put_nowait((confirmations, durable))

    async def _ack_forever(self) -> None:
        """Ack in confirmation order, each group once its statistics are durable (the confirmer moves on)."""
        while True:
            confirmations, durable = await self._to_ack.get()
            if durable is not None:
                await durable
            await self._ack(confirmations)

    async def _ack(self, confirmations: list[Confirmation]) -> None:
        """Ack the inputs of delivered outputs, and count them."""
        done = 0
        for confirmation in confirmations:
            if isinstance(confirmation, ShadowResult):
                continue
            done += 1
            acked = confirmation.ack()
            if inspect.isawaitable(acked):
                await acked
        self._stage_metrics.on_delivered(confirmations)
        self._in_flight -= done
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


def _collect(rows: dict[Runner, _Rows], runner: Runner, position: int, admitted: Admitted, context: Any) -> None:
    group = rows.get(runner)
    if group is None:
        group = rows[runner] = ([], [], [])
    group[0].append(position)
    group[1].append(admitted.event.input)
    group[2].append(context)
