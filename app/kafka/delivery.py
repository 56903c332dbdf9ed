"""Confirming deliveries in order: a record's input is acked only after the broker took its output.

Used by the inference pipeline and the statistics agents alike. Outputs are confirmed in the
order they were enqueued; one the broker rejects (or that times out) is re-sent with
exponential backoff and is never reported done until it is acknowledged.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, NamedTuple, TypeVar

from app.logs import record_fields
from app.records.dead_letters import Headers
from app.records.events import SourceRef

log = logging.getLogger(__name__)

MAX_RESEND_BACKOFF_S = 30.0
T = TypeVar("T")


class OutboundRecord(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int | None = None
    partition: int | None = None
    """None lets the producer's partitioner pick (by key hash)."""
    source: SourceRef | None = None
    """The input record this output answers; exactly-once mode commits its offset with it."""
    event_id: str | None = None
    """That input's event id, for log lines about this output."""


Send = Callable[[OutboundRecord], Awaitable[Awaitable[Any]]]
"""Enqueue a record with the producer; the returned awaitable completes on the broker's ack."""


class InOrderConfirmer(Generic[T]):
    """Confirms groups of outputs in the order they were put; ``on_confirmed`` hears each group once."""

    def __init__(self, send: Send, on_confirmed: Callable[[list[T]], Any], backoff_s: float, name: str) -> None:
        self._send = send
        self._on_confirmed = on_confirmed
        self._backoff_s = backoff_s
        self._name = name
        self._queue: asyncio.Queue[list[tuple[T, OutboundRecord, Awaitable[Any]]]] = asyncio.Queue()
        self._waiting_since: float | None = None

    @property
    def unacknowledged_s(self) -> float:
        """How long the output confirmed next has been waited for (0 when none is): it grows while
        the brokers take no writes."""
        since = self._waiting_since
        return 0.0 if since is None else time.monotonic() - since

    def put(self, group: list[tuple[T, OutboundRecord, Awaitable[Any]]]) -> None:
        self._queue.put_nowait(group)

    async def run_forever(self) -> None:
        while True:
            self._waiting_since = None
            group = await self._queue.get()
            for item, outbound, delivery in group:
                if succeeded(delivery):  # records of a batch share its delivery: most find it settled
                    continue
                self._waiting_since = time.monotonic()
                if not await acknowledged(delivery):
                    await confirm(self._send, outbound, delivery, self._backoff_s, f"{self._name}: output for {item}")
            done = self._on_confirmed([item for item, _, _ in group])
            if inspect.isawaitable(done):
                await done


def succeeded(delivery: Awaitable[Any]) -> bool:
    """Whether ``delivery`` is a producer's future the broker already acknowledged (no waiting)."""
    return (
        isinstance(delivery, asyncio.Future)
        and delivery.done()
        and not delivery.cancelled()
        and (delivery.exception() is None)
    )


async def acknowledged(delivery: Awaitable[Any]) -> bool:
    """Wait for a producer's delivery future; whether the broker took it. False for any other awaitable,
    which ``confirm`` then awaits (and re-sends on failure) as usual."""
    if not isinstance(delivery, asyncio.Future):
        return False
    if not delivery.done():
        await asyncio.wait((delivery,))
    return succeeded(delivery)


async def until_acknowledged(
    delivery: Awaitable[Any],
    resend: Callable[[], Awaitable[Awaitable[Any]]],
    backoff_s: float,
    what: str,
    fields: dict[str, Any] | None = None,
) -> None:
    """Wait for a broker ack, calling ``resend`` with exponential backoff until one comes. ``fields``: the
    log record's (``app.logs.record_fields``)."""
    while True:
        try:
            await delivery
            return
        except Exception as exc:  # noqa: BLE001 - never report done what the broker did not take
            log.error("%s not acknowledged (%r); re-sending in %.1fs", what, exc, backoff_s, extra=fields)
        await asyncio.sleep(backoff_s)
        backoff_s = min(backoff_s * 2, MAX_RESEND_BACKOFF_S)
        delivery = sent_and_acknowledged(resend)


async def sent_and_acknowledged(send: Callable[[], Awaitable[Awaitable[Any]]]) -> None:
    """Enqueue with ``send``, then wait for the ack: one awaitable that fails if either does."""
    await (await send())


async def confirm(send: Send, outbound: OutboundRecord, delivery: Awaitable[Any], backoff_s: float, what: str) -> None:
    """Wait for the broker's ack of ``outbound``, re-sending it with backoff until one comes."""
    source = outbound.source
    fields = None if source is None else record_fields(*source, outbound.event_id)
    await until_acknowledged(delivery, lambda: send(outbound), backoff_s, f"{what} to {outbound.topic}", fields)


async def publish(send: Send, outbound: OutboundRecord, backoff_s: float, what: str) -> None:
    """Send one record and wait until the broker acknowledged it."""
    await confirm(send, outbound, sent_and_acknowledged(lambda: send(outbound)), backoff_s, what)
