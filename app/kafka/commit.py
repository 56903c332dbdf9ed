"""The commit policy: the one owner of when input offsets are committed, chosen once at start.

``AtLeastOnce``: outputs go through one producer; the pipeline acks an input once the broker
acknowledged its output, and faust commits acked offsets (contiguous ones only) on its timer.
A crash re-reads what was not committed: duplicates possible, losses not.

``ExactlyOnce``: outputs and the offsets of the inputs they answer commit in one Kafka
transaction per input partition (``app.kafka.transactions``); faust's own commits skip the
input topic, and every consumer reads read_committed. A record's delivery resolves only when
its transaction commits, so the pipeline's "ack after delivery" is the same in both modes.

The consumer (``app.kafka.transport``) and the worker receive the policy as a collaborator;
nothing else decides about commits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

from app.kafka.delivery import OutboundRecord
from app.kafka.producer import OutputProducer, producer_options
from app.kafka.security import client_config
from app.kafka.transactions import TransactionalPublisher
from app.settings import KafkaSettings


class Publisher(Protocol):
    """Where the pipeline's outputs go: each send returns an awaitable that resolves once the
    output may be taken as delivered (acknowledged, or committed in a transaction)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, record: OutboundRecord) -> Awaitable[Any]: ...

    async def send_many(self, records: Sequence[OutboundRecord]) -> list[Awaitable[Any]]: ...


class CommitPolicy(Protocol):
    guarantee: str
    """``at_least_once`` or ``exactly_once``, as PROCESSING_GUARANTEE names them."""
    read_committed: bool
    """Whether the worker's consumers read with isolation.level=read_committed."""

    @property
    def publisher(self) -> Publisher:
        """Where the pipeline sends outputs; taken once the event loop runs (aiokafka needs it)."""
        ...

    def commits_offsets_of(self, topic: str) -> bool:
        """Whether faust's offset commits cover this topic (else transactions commit its offsets)."""
        ...

    async def on_assigned(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Called with each new assignment, before faust seeks to the committed offsets."""
        ...


class AtLeastOnce:
    guarantee = "at_least_once"
    read_committed = False

    def __init__(self, bootstrap_servers: str, **client_config: Any) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._client_config = client_config
        self._producer: OutputProducer | None = None

    @property
    def publisher(self) -> Publisher:
        if self._producer is None:  # created in the running loop: aiokafka's producer binds to it
            self._producer = OutputProducer(self._bootstrap_servers, **self._client_config)
        return self._producer

    def commits_offsets_of(self, topic: str) -> bool:
        return True

    async def on_assigned(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Nothing to do: offsets of what was acked are committed by faust."""


class ExactlyOnce:
    guarantee = "exactly_once"
    read_committed = True

    def __init__(self, input_topic: str, transactions: TransactionalPublisher) -> None:
        self._input_topic = input_topic
        self._transactions = transactions

    @property
    def publisher(self) -> Publisher:
        return self._transactions

    def commits_offsets_of(self, topic: str) -> bool:
        # A commit of offsets acked a moment ago could land after a newer transaction's commit
        # and move the offset back.
        return topic != self._input_topic

    async def on_assigned(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Start a transactional producer per input partition now: that fences its previous owner
        and ends its open transaction before faust reads the committed offsets."""
        await self._transactions.assign((topic, p) for topic, p in partitions if topic == self._input_topic)


def commit_policy(
    kafka: KafkaSettings, group_id: str, input_topic: str, on_fatal: Callable[[BaseException], Any]
) -> CommitPolicy:
    """The policy PROCESSING_GUARANTEE asks for. ``on_fatal`` stops the worker (exactly-once:
    a fenced or broken transactional producer)."""
    config = {**client_config(kafka), **producer_options(kafka)}
    if kafka.exactly_once:
        interval_s = kafka.transaction_interval_ms / 1000.0
        backoff_s = kafka.publish_retry_backoff_s
        transactions = TransactionalPublisher(
            kafka.bootstrap_servers, group_id, interval_s, backoff_s, on_fatal, **config
        )
        return ExactlyOnce(input_topic, transactions)
    return AtLeastOnce(kafka.bootstrap_servers, enable_idempotence=kafka.enable_idempotence, **config)
