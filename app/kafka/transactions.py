"""Exactly-once publishing: outputs and the input offsets they answer commit in one Kafka transaction.

``TransactionalPublisher`` is a drop-in ``Publisher`` for the pipeline: the awaitable that
``send``/``send_many`` return for a record resolves only once the transaction carrying it
has committed, and that transaction also commits (``send_offsets_to_transaction``) the
consumer group's offset past the record's input. The pipeline acks an input only after that,
so its "ack after delivery" logic is unchanged, and a read_committed consumer of the outputs
sees exactly one result per input even when a worker is killed: the killed worker's open
transaction is aborted, with its offsets, and the new owner predicts those inputs again.

Fencing, the classic (pre-KIP-447) way, as aiokafka sends offsets with a group id only: one
transactional producer per input partition, ``transactional.id = <app id>-<topic>-<partition>``.
A new owner's producer start (InitProducerId) fences the previous owner's producer and aborts
or completes its open transaction. Producers start when partitions are assigned, before faust
seeks to the committed offsets, so the new owner never reads an offset that a transaction
still in flight is about to move. A fenced producer means another worker owns the partition
now: its records are never acked nor re-published (that would fence the owner back), and
``on_fatal`` stops the worker.

Each partition runs one transaction at a time: records are sent as they arrive, and the
transaction commits ``interval_s`` after it began (``KAFKA_TRANSACTION_INTERVAL_MS``); records
that arrive while it commits go into the next one. A transaction that fails is aborted and its
records are sent again in a new one (backoff doubling), before any later record of that partition,
so offsets only ever move forward past committed outputs.

Statistics agents publish through faust's own producer and are not part of these transactions:
their exactly-once counting rests on the per-window source offsets (see ``app.stats.agents``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import ProducerFenced

from app.kafka.delivery import MAX_RESEND_BACKOFF_S, OutboundRecord
from app.kafka.producer import OutputProducer
from app.kafka.transport import transactions_failed_fatally

log = logging.getLogger(__name__)

ABORT_TIMEOUT_S = 60.0
"""An abort that takes longer (the broker unreachable) stops the worker rather than waiting on."""


class NotOwned(RuntimeError):
    """An output whose input partition this worker does not own (or no longer may write for)."""


def transactional_id(group_id: str, topic: str, partition: int) -> str:
    return f"{group_id}-{topic}-{partition}"


@dataclass(slots=True)
class _Transaction:
    records: list[OutboundRecord] = field(default_factory=list)
    committed: list[asyncio.Future[None]] = field(default_factory=list)
    deliveries: list[Awaitable[Any]] = field(default_factory=list)

    def offsets(self, tp: TopicPartition) -> dict[TopicPartition, int]:
        """The group's next offset: past the last input this transaction answers."""
        last = max(record.source.offset for record in self.records if record.source is not None)
        return {tp: last + 1}

    def resolve(self) -> None:
        for future in self.committed:
            if not future.done():
                future.set_result(None)

    def fail(self, exc: BaseException) -> None:
        for future in self.committed:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved here: the confirmer may never await a record it gave up on


class _InputPartition:
    """The transactions of one input partition, one after another, on its own producer."""

    def __init__(self, tp: TopicPartition, producer: OutputProducer, owner: TransactionalPublisher) -> None:
        """``owner``: the publisher whose group, interval, backoff and fatal-error callback apply."""
        self.tp = tp
        self._producer = producer
        self._group_id = owner.group_id
        self._interval_s = owner.interval_s
        self._backoff_s = owner.backoff_s
        self._on_fatal = owner.on_fatal
        self._pending = _Transaction()
        self._arrived = asyncio.Event()
        self._fatal: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the producer: this fences the partition's previous owner and ends its open transaction."""
        await self._producer.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"transactions-{self.tp}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._pending.fail(NotOwned(f"{self.tp} was revoked"))
        await self._producer.stop()

    def add(self, record: OutboundRecord) -> asyncio.Future[None]:
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._fatal is not None:
            committed.set_exception(self._fatal)
            committed.exception()
            return committed
        self._pending.records.append(record)
        self._pending.committed.append(committed)
        self._arrived.set()
        return committed

    async def _run(self) -> None:
        while True:
            await self._arrived.wait()
            txn = _Transaction()
            try:
                await self._producer.client.begin_transaction()
                deadline = asyncio.get_running_loop().time() + self._interval_s
                while await self._take_pending(txn, deadline):
                    pass
                await self._commit(txn)
            except Exception as exc:  # noqa: BLE001 - abort, then the same records again (or give up)
                if not await self._retry(txn, exc):
                    return
            txn.resolve()

    async def _take_pending(self, txn: _Transaction, deadline: float) -> bool:
        """Send what arrived into ``txn``; False once the transaction's time is up."""
        if self._pending.records:
            taken, self._pending = self._pending, _Transaction()
            self._arrived.clear()
            txn.records += taken.records
            txn.committed += taken.committed
            txn.deliveries += await self._producer.send_many(taken.records)
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return False
        try:
            await asyncio.wait_for(self._arrived.wait(), remaining)
        except TimeoutError:
            return False
        return True

    async def _commit(self, txn: _Transaction) -> None:
        """Wait until every record is written, add the input offsets, commit."""
        client = self._producer.client
        await asyncio.gather(*txn.deliveries)
        if txn.records:
            await client.send_offsets_to_transaction(txn.offsets(self.tp), self._group_id)
        await client.commit_transaction()

    async def _retry(self, txn: _Transaction, exc: Exception) -> bool:
        """Abort, then send ``txn``'s records in new transactions until one commits.

        Returns False, having given the records up, when the producer cannot go on: fenced by a
        newer owner, another fatal error, or an abort that does not complete. Replacing the
        producer then could fence the partition's rightful owner, so the worker stops instead.
        """
        client = self._producer.client
        backoff_s = self._backoff_s
        while True:
            if isinstance(exc, ProducerFenced) or transactions_failed_fatally(client):
                self._give_up(txn, exc)
                return False
            log.error("transaction for %s failed (%r); aborting, re-sending in %.1fs", self.tp, exc, backoff_s)
            try:
                await asyncio.wait_for(client.abort_transaction(), ABORT_TIMEOUT_S)
            except Exception as abort_exc:  # noqa: BLE001
                self._give_up(txn, abort_exc)
                return False
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, MAX_RESEND_BACKOFF_S)
            try:
                await client.begin_transaction()
                txn.deliveries = await self._producer.send_many(txn.records)
                await self._commit(txn)
                return True
            except Exception as again:  # noqa: BLE001
                exc = again

    def _give_up(self, txn: _Transaction, exc: BaseException) -> None:
        """Never ack nor re-send these records: the partition's next owner reads them again."""
        fenced = isinstance(exc, ProducerFenced)
        why = "fenced by a newer owner" if fenced else repr(exc)
        log.critical("transactions for %s cannot go on: %s", self.tp, why)
        self._fatal = NotOwned(f"{self.tp}: transactional producer stopped ({exc!r})")
        txn.fail(self._fatal)
        self._pending.fail(self._fatal)
        self._on_fatal(self._fatal)


class TransactionalPublisher:
    """Publishes outputs in transactions per input partition; a record's awaitable resolves on commit."""

    def __init__(
        self,
        bootstrap_servers: str,
        group_id: str,
        interval_s: float,
        backoff_s: float,
        on_fatal: Callable[[BaseException], Any],
        **client_config: Any,
    ) -> None:
        self._bootstrap_servers = bootstrap_servers
        self.group_id = group_id
        self.interval_s = interval_s
        self.backoff_s = backoff_s
        self.on_fatal = on_fatal
        self._client_config = client_config
        self._partitions: dict[TopicPartition, _InputPartition] = {}
        self._assigning = asyncio.Lock()

    async def assign(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Own exactly these input partitions: close the others' producers, start the new ones'."""
        wanted = {TopicPartition(topic, partition) for topic, partition in partitions}
        async with self._assigning:
            gone = [self._partitions.pop(tp) for tp in set(self._partitions) - wanted]
            await asyncio.gather(*(partition.stop() for partition in gone))
            new = [self._input_partition(tp) for tp in wanted - set(self._partitions)]
            await asyncio.gather(*(partition.start() for partition in new))
            self._partitions.update((partition.tp, partition) for partition in new)
        if gone or new:
            log.info("transactional producers: %d closed, %d started", len(gone), len(new))

    async def start(self) -> None:
        """Nothing to start: producers start as input partitions are assigned (``assign``)."""

    async def stop(self) -> None:
        await self.assign(())

    async def send(self, record: OutboundRecord) -> Awaitable[Any]:
        return self._add(record)

    async def send_many(self, records: Sequence[OutboundRecord]) -> list[Awaitable[Any]]:
        return [self._add(record) for record in records]

    def _add(self, record: OutboundRecord) -> asyncio.Future[None]:
        if record.source is None:
            raise ValueError(f"an output for {record.topic} without its input: exactly-once needs the source")
        partition = self._partitions.get(TopicPartition(record.source.topic, record.source.partition))
        if partition is not None:
            return partition.add(record)
        exc = NotOwned(f"output for {record.source}: its partition is not assigned to this worker")
        log.critical("%s", exc)
        self.on_fatal(exc)
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        failed.set_exception(exc)
        return failed

    def _input_partition(self, tp: TopicPartition) -> _InputPartition:
        producer = OutputProducer(
            self._bootstrap_servers,
            transactional_id=transactional_id(self.group_id, tp.topic, tp.partition),
            **self._client_config,
        )
        return _InputPartition(tp, producer, self)
