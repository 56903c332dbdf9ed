"""Micro-batching: many awaiting callers, one handler call per batch.

A plain asyncio component with no Kafka or Faust in it. ``submit`` queues one item and
returns a future; a single loop forms batches that close at ``max_batch_size`` items or
``max_wait_s`` after the first item's arrival, whichever comes first, and calls the handler
once per batch (``on_batch`` hears each batch's queue waits first). ``flush()`` says that no more
items are coming for now (the input has nothing buffered): the batch being collected closes at
once with what is queued, instead of waiting out ``max_wait_s``, as Triton's dynamic batcher and
Ray Serve's batch queue do when their queue runs dry. Items submitted after a flush wait as usual,
so under load (input still buffered, no flush) batches fill up to ``max_batch_size``. Every
future gets exactly one outcome:

- the handler's output for that item, with the size of the batch it rode in;
- or, when the handler keeps raising, a ``ModelError``. A failing batch is retried
  ``retries`` times, then bisected, so one poison item fails alone and the rest of its
  batch still gets outputs.

With ``batches_in_flight`` > 1 the next batch is collected and handed over while the one before
is still being handled (a text model tokenizes it meanwhile); handlers still start in batch order.

Items may carry an opaque tag (``submit_many(items, tags)``); a ``scope`` hears each batch's tags
and wraps its handling, retries and isolation included (tracing opens a span there).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

from app.errors import ModelError

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

BatchHandler = Callable[[list[T]], Awaitable[Sequence[R]]]
BatchScope = Callable[[list[Any]], AbstractContextManager[Callable[[int], None]]]
"""Entered around one batch, given its items' tags; yields a function told how many items failed."""


class Batched(NamedTuple, Generic[R]):  # a tuple: built per record, and cheaper than a frozen dataclass
    value: R
    batch_size: int


@dataclass(slots=True)
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[Batched[R]]
    arrived: float
    tag: Any = None


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        handler: BatchHandler[T, R],
        *,
        max_batch_size: int,
        max_wait_s: float,
        retries: int = 1,
        batches_in_flight: int = 1,
        on_batch: Callable[[list[float]], None] | None = None,
        scope: BatchScope | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if batches_in_flight < 1:
            raise ValueError(f"batches_in_flight must be >= 1, got {batches_in_flight}")
        self._handler = handler
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._retries = retries
        self._slots = asyncio.Semaphore(batches_in_flight)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._on_batch = on_batch
        self._scope = scope
        self._queue: deque[_Pending[T, R]] = deque()
        self._submitted = 0
        """Items ever queued; ``_taken`` of them left the queue in batches."""
        self._taken = 0
        self._flushed = 0
        """``_submitted`` at the last ``flush()``: the items up to it close their batch without waiting."""
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run_forever(), name="micro-batcher")

    async def stop(self) -> None:
        """Finish every queued item, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    def submit(self, item: T) -> asyncio.Future[Batched[R]]:
        return self.submit_many([item])[0]

    def submit_many(self, items: Sequence[T], tags: Sequence[Any] | None = None) -> list[asyncio.Future[Batched[R]]]:
        """Queue items in order; one future each. ``tags``, one per item, go to the scope."""
        if self._closing:
            raise RuntimeError("the batcher is stopping and takes no new items")
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures: list[asyncio.Future[Batched[R]]] = [loop.create_future() for _ in items]
        if tags is None:
            self._queue.extend(_Pending(item, future, now) for item, future in zip(items, futures, strict=True))
        else:
            pending = zip(items, futures, tags, strict=True)
            self._queue.extend(_Pending(item, future, now, tag) for item, future, tag in pending)
        self._submitted += len(futures)
        self._wakeup.set()
        return futures

    def flush(self) -> None:
        """No more items are coming for now: close the batch being collected with the items queued so
        far (up to ``max_batch_size`` each) without waiting for ``max_wait_s``."""
        if self._flushed != self._submitted:
            self._flushed = self._submitted
            self._wakeup.set()

    async def _run_forever(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        break
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._slots.acquire()  # a batch in flight ends: collect the next (it grew meanwhile)
                batch = await self._collect()
                task = asyncio.get_running_loop().create_task(self._dispatch(batch), name="micro-batch")
                self._in_flight.add(task)
                task.add_done_callback(self._dispatched)
            await asyncio.gather(*self._in_flight)
        except asyncio.CancelledError:
            for task in self._in_flight:
                task.cancel()
            raise

    def _dispatched(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()

    async def _collect(self) -> list[_Pending[T, R]]:
        loop = asyncio.get_running_loop()
        deadline = self._queue[0].arrived + self._max_wait_s
        while len(self._queue) < self._max_batch_size and not self._closing and self._flushed <= self._taken:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        size = min(len(self._queue), self._max_batch_size)
        self._taken += size
        return [self._queue.popleft() for _ in range(size)]

    async def _dispatch(self, batch: list[_Pending[T, R]]) -> None:
        if self._on_batch is not None:
            now = asyncio.get_running_loop().time()
            self._on_batch([now - pending.arrived for pending in batch])
        if self._scope is None:
            await self._settle(batch, attempts=self._retries + 1)
            return
        with self._scope([pending.tag for pending in batch]) as failed:
            await self._settle(batch, attempts=self._retries + 1)
            failed(sum(1 for pending in batch if _failed(pending.future)))

    async def _settle(self, batch: list[_Pending[T, R]], attempts: int) -> None:
        error: Exception | None = None
        for attempt in range(attempts):
            try:
                outputs = await self._handler([pending.item for pending in batch])
                if len(outputs) != len(batch):
                    raise ValueError(f"handler returned {len(outputs)} outputs for {len(batch)} items")
            except Exception as exc:  # noqa: BLE001 - any handler failure is isolated below
                error = exc
                log.warning("batch of %d failed (attempt %d/%d): %r", len(batch), attempt + 1, attempts, exc)
                continue
            for pending, output in zip(batch, outputs, strict=True):
                if not pending.future.done():
                    pending.future.set_result(Batched(output, len(batch)))
            return
        if len(batch) == 1:
            if not batch[0].future.done():
                batch[0].future.set_exception(ModelError(f"model failed on this record: {error!r}"))
            return
        middle = len(batch) // 2
        # Halves get one try each; a single item gets the full retry budget before it is poison.
        for half in (batch[:middle], batch[middle:]):
            await self._settle(half, attempts=1 if len(half) > 1 else self._retries + 1)


def _failed(future: asyncio.Future[Any]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is not None
