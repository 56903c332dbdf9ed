"""A Faust transport that hands the records of chosen topics to agents one fetch at a time; and
the one door to faust's and aiokafka's private APIs.

Every use of a private faust or aiokafka name in the worker is in this module (a unit test and
an import-linter contract keep it so), listed in ``UPSTREAM_PINS``: a faust or aiokafka upgrade
that removes or reshapes one fails ``tests/unit/test_upstream_pins.py`` instead of misbehaving.

faust routes every record through its conductor, a channel queue and the Stream iterator, with
a task or two per record: at small models that machinery, not the model, sets the pace. For
topics registered in ``app.batch_routes``, ``BatchingConsumer`` keeps faust's fetching (flow
control, rebalances, highwater tracking, gap and commit bookkeeping) but collects the records
of one fetch into a list and puts it, once, on the topic's ``BatchChannel`` (see
``WorkerApp.route_batches``), so the agent receives whole batches. The agent acks each record with
``consumer.ack(message)`` when its output is delivered; faust commits contiguous acked offsets
as usual. Records of other topics take faust's normal per-record path.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, cast

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.protocol.metadata import MetadataRequest
from faust.transport.drivers import aiokafka as aiokafka_driver
from mode.threads import WorkerThread

log = logging.getLogger(__name__)


class ConsumerCommits(Protocol):
    """What the consumer needs of the commit policy (``app.kafka.commit``)."""

    read_committed: bool

    def commits_offsets_of(self, topic: str) -> bool: ...

    async def on_assigned(self, partitions: Iterable[tuple[str, int]]) -> None: ...


@dataclass(frozen=True, slots=True)
class InputBatch:
    """The records of one topic from one fetch."""

    messages: list[Any]


BatchRoute = Callable[[InputBatch], Awaitable[Any]]


class BatchChannel(faust.Channel):  # type: ignore[type-arg]  # faust.Channel is generic only in its stubs
    """An agent channel that faust never empties by itself.

    faust clears its agents' channels when a rebalance starts and again whenever flow resumes,
    which it does just after seeking to the committed offsets: a batch routed in that moment
    would vanish with its read offsets already past it (docs/design.md). Which queued batches
    are obsolete, BatchingConsumer decides.
    """

    @property
    def queue(self) -> Any:
        if self._queue is None:
            maxsize = self.maxsize if self.maxsize is not None else self.app.conf.stream_buffer_maxsize
            self._queue = self.app.FlowControlQueue(maxsize=maxsize, clear_on_resume=False)
        return self._queue


class BatchingConsumer(aiokafka_driver.Consumer):
    """Routed records are tracked like faust's own, so a rebalance or a shutdown waits (in
    ``wait_empty``) until the batches an agent has taken are acked.

    Around a rebalance, what is routed follows one rule: records routed before the seek to the
    committed offsets are read again after it, so batches not yet taken by then are obsolete
    (``taken`` says so), and from the start of a revocation's wait, or an assignment, until the
    seek nothing is routed (``stale``): records routed while faust awaits the committed offsets
    would be predicted twice, or taken for a gap and committed past (docs/design.md).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queued: dict[int, InputBatch] = {}
        self._last_routed: dict[Any, int] = {}  # tp -> offset of the last routed record
        self._seek_pending = False  # a revocation began or partitions were assigned; not yet seeked
        self._seeks_done = 0  # the consumer thread's seek count when the last perform_seek ended

    def taken(self, batch: InputBatch) -> bool:
        """An agent calls this for each batch it receives. True: process it and ack its records.
        False: it was routed before a seek and its records will be read again."""
        return self._queued.pop(id(batch), None) is not None

    def batches_waiting(self) -> int:
        """Batches routed to an agent and not yet taken: 0 means the agent has all the input there is
        for now (records still on their way from the broker are not counted)."""
        return len(self._queued)

    def on_assignment(self) -> None:
        """A rebalance assigned partitions: route nothing until ``perform_seek``."""
        self._route_nothing_until_seek()

    async def wait_empty(self) -> None:
        """Wait for the acks of the batches an agent has taken; route nothing more until the next seek.

        A revocation (or a stop) waits here with faust's flow control suspended, and a routed batch
        put on the agent's channel then waits for the flow to resume, which comes only after the
        rebalance: waiting for its records' acks too deadlocked the rebalance until the session
        expired (a fetch round that was still collecting when the wait began routed its records
        afterwards). Records not taken are read again after the seek.
        """
        self._route_nothing_until_seek()
        report = asyncio.ensure_future(_report_stall(STALL_REPORT_S))
        try:
            await super().wait_empty()
        finally:
            report.cancel()

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        """Commit what is done before faust forgets it.

        faust drops the revoked partitions' acked offsets first and only then runs the app's
        revocation step, whose commit so finds nothing to commit for them: everything acked since
        the last periodic commit (up to ``broker_commit_interval``, a second of records) was
        predicted again by the partitions' next owner (3,600-7,700 duplicates of 30,000 when a
        second replica joined). So, as the app's step would: stop the flow, wait until the records
        taken are acked, and commit (``wait_empty``), then let faust go on.
        """
        if not self.app.should_stop and self.assignment():
            self.stop_flow()
            self.app.flow_control.suspend()
            self.pause_partitions(self.assignment())
            await self.wait_empty()  # commits the acked offsets, the revoked partitions' included
        await super().on_partitions_revoked(revoked)

    async def perform_seek(self) -> None:
        """Seek to the committed offsets with the routed topics' partitions paused meanwhile.

        faust seeks while fetching (it resumes the partitions first): records fetched from the new
        positions before it resets the read offsets must not be delivered, or the reset makes their
        successors look like a gap. Nor may records collected from the old positions before the
        seek, which the consumer thread can hand over after it: ahead of the committed offsets,
        they would make the records between look like a gap, which faust commits past (``stale``).
        """
        routes = self._routes()
        paused = {tp for tp in self._get_active_partitions() if tp.topic in routes}
        self.pause_partitions(paused)
        self._seek_pending = True  # until the read offsets are reset too
        try:
            await super().perform_seek()
        finally:
            self._seeks_done = self._consumer_thread().seeks
            self._seek_pending = False
            self.resume_partitions(paused)

    def stale(self) -> bool:
        """Whether the fetch round being delivered is to be dropped: collected before the last seek to
        the committed offsets (its records are read again after it), or a seek is pending."""
        return self._seek_pending or self._consumer_thread().collected_after_seeks < self._seeks_done

    def _consumer_thread(self) -> BatchingConsumerThread:
        return cast(BatchingConsumerThread, self._thread)

    def _route_nothing_until_seek(self) -> None:
        """Drop the batches routed and not yet taken, and route nothing more until ``perform_seek``
        (their records, and those fetched meanwhile, are read again after it)."""
        self._seek_pending = True
        for batch in self._queued.values():
            self._untrack(batch.messages)
        self._queued.clear()

    def _untrack(self, messages: list[Any]) -> None:
        for message in messages:
            self._unacked_messages.discard(message)  # do not wait for acks that will not come

    def _routes(self) -> dict[str, BatchRoute]:
        return getattr(self.app, "batch_routes", {})

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - exercised via integration tests
        routes = self._routes()
        callback = self.callback
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        acks_enabled_for = self.app.topics.acks_enabled_for
        stopped = self._stopped.is_set
        fetcher_stopped = fetcher._stopped.is_set
        stale = self.stale
        try:
            while not (stopped() or fetcher_stopped()):
                batches: dict[str, list[Any]] = defaultdict(list)
                await self.sleep(0)
                if self.should_stop:
                    break
                async for tp, message in self.getmany(timeout=1.0):
                    routed = tp.topic in routes
                    if routed and stale():
                        continue  # fetched before the seek to the committed offsets, read again after it
                    offset = message.offset
                    read_offset = get_read_offset(tp)
                    if read_offset is not None and offset < read_offset:
                        continue  # already delivered before a seek
                    if read_offset and offset - read_offset > 1 and acks_enabled_for(message.topic):
                        await self._add_gap(tp, read_offset + 1, offset)
                    if routed:
                        self.track_message(message)
                        batches[tp.topic].append(message)
                        self._last_routed[tp] = offset
                    else:
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                    set_read_offset(tp, offset)
                for topic, messages in batches.items():
                    if stale():  # a seek came while the round was routing: read again after it
                        self._untrack(messages)
                        continue
                    batch = InputBatch(messages)
                    self._queued[id(batch)] = batch
                    await routes[topic](batch)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise

    def _new_consumer_thread(self) -> aiokafka_driver.AIOKafkaConsumerThread:
        return BatchingConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _commit(self, offsets: Any) -> bool:
        policy = cast(WorkerApp, self.app).commit_policy
        kept = {tp: offset for tp, offset in offsets.items() if policy.commits_offsets_of(tp.topic)}
        return await super()._commit(kept) if kept else True

    def committed_offset(self, tp: Any) -> int | None:
        """The group's last committed offset of ``tp`` as this consumer knows it (no request)."""
        committed: int | None = self._committed_offset.get(tp)  # faust keeps no public accessor for it
        return committed

    def caught_up(self, tp: Any) -> bool:
        """True when every record below the partition's high watermark was routed or committed.

        Uses bookkeeping only: asking aiokafka for the position spins on metadata requests
        (about ten thousand a second, each logged) while the broker is unreachable.
        """
        highwater = self.highwater(tp)
        if highwater is None:
            return False
        routed = self._last_routed.get(tp, -1) + 1
        if cast(WorkerApp, self.app).commit_policy.read_committed:
            routed = max(routed, self._local_position(tp))  # past transaction markers, which are never routed
        committed = self.committed_offset(tp) or 0
        return max(routed, committed) >= highwater

    def _local_position(self, tp: Any) -> int:
        """The consumer's fetch position as kept in memory (no request), or -1."""
        consumer = self._thread._consumer
        state = None if consumer is None else consumer._subscription.subscription
        tp_state = None if state is None else state.assignment.state_value(tp)
        return tp_state.position if tp_state is not None and tp_state.has_valid_position else -1


STALL_REPORT_S = 15.0
"""A rebalance or stop still waiting this long for acks logs what every task awaits."""


async def _report_stall(after_s: float) -> None:
    await asyncio.sleep(after_s)
    stacks = []
    for task in asyncio.all_tasks():
        stacks.append(f"{task.get_name()}: {' -> '.join(_awaiting(task.get_coro()))}")
    log.warning("still waiting for acks after %.0fs; tasks:\n%s", after_s, "\n".join(sorted(stacks)))


def _awaiting(coro: Any) -> list[str]:
    """The chain of coroutines ``coro`` is suspended in, outermost first (a Task's own stack shows one frame)."""
    chain: list[str] = []
    while coro is not None and len(chain) < 40:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        chain.append(f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_code.co_name}:{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None) or getattr(coro, "gi_yieldfrom", None)
    return chain


class DaemonWorkerThread(WorkerThread):
    """The consumer's thread, as a daemon: when it cannot stop (a group join it waits in outlasts
    faust's stop timeout), the stopped worker still exits instead of hanging in interpreter
    shutdown; the group coordinator then drops the member at its session timeout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemon = True


class BatchingConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Counts its seeks to the committed offsets, and stamps each fetch round with the count at the
    moment it collected its records: seek and collection both run on this thread's loop, so the stamp
    says exactly whether a round's records come from before a seek (``BatchingConsumer.stale``)."""

    Worker: type[WorkerThread] = DaemonWorkerThread
    seeks = 0
    collected_after_seeks = 0

    async def seek_to_committed(self) -> Any:
        return await self.call_thread(self._seek_to_committed_counted)

    async def _seek_to_committed_counted(self) -> Any:
        offsets = await self._ensure_consumer().seek_to_committed()
        self.seeks += 1  # no await since the last position was reset: no round collected in between
        return offsets

    async def _fetch_records(self, *args: Any, **kwargs: Any) -> Any:
        records = await super()._fetch_records(*args, **kwargs)
        self.collected_after_seeks = self.seeks  # no await since the records were collected
        return records

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        if cast(WorkerApp, self.app).commit_policy.read_committed:
            # faust reads read_committed only with its own exactly_once guarantee; set before start().
            consumer._isolation_level = "read_committed"
        return consumer


class BatchingTransport(aiokafka_driver.Transport):
    Consumer: ClassVar[type] = BatchingConsumer


class WorkerApp(faust.App):
    """A faust App whose consumer can deliver whole fetches of ``batch_routes`` topics, and
    commits as its ``commit_policy`` says."""

    def __init__(self, *args: Any, commit_policy: ConsumerCommits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_routes: dict[str, BatchRoute] = {}
        self.commit_policy = commit_policy

    async def _on_partitions_assigned(self, assigned: set[Any], generation_id: int = 0) -> None:
        if not self.should_stop:
            cast(BatchingConsumer, self.consumer).on_assignment()
            try:
                await self.commit_policy.on_assigned((tp.topic, tp.partition) for tp in assigned)
            except Exception as exc:  # noqa: BLE001 - as faust does for its own rebalance steps
                await self.crash(exc)
                return
        await super()._on_partitions_assigned(assigned, generation_id)

    def _new_transport(self) -> BatchingTransport:
        return BatchingTransport(self.conf.broker_consumer, self)

    def route_batches(self, topic: faust.TopicT, maxsize: int) -> BatchChannel:
        """Subscribe to ``topic``; its records arrive, as InputBatch values, on the channel returned
        (for one agent), at most ``maxsize`` batches waiting there."""
        channel = BatchChannel(self, maxsize=maxsize)
        self.topics.add(topic)
        for name in topic.topics:
            self.batch_routes[name] = cast(BatchRoute, channel.put)
        return channel


def refuse_topic_auto_creation() -> None:
    """Make every aiokafka client in this process ask the broker not to auto-create topics.

    aiokafka's metadata requests for named topics allow auto-creation unless told otherwise, so
    on a broker with auto.create.topics.enable a consumer that subscribes (``tail``, or faust)
    before the worker has created its topics would create them with the broker's default width.
    The worker creates what it owns, explicitly (``app.kafka.topics``). Idempotent."""
    original = MetadataRequest.__init__
    if getattr(original, "refuses_auto_creation", False):
        return

    def refusing(
        self: MetadataRequest, topics: list[str] | None = None, allow_auto_topic_creation: bool = False
    ) -> None:
        original(self, topics, allow_auto_topic_creation)

    refusing.refuses_auto_creation = True  # type: ignore[attr-defined]
    MetadataRequest.__init__ = refusing


async def probe_connection(host: str, port: int, timeout_s: float, **config: Any) -> None:
    """Open one connection to a broker as a client configured so would (TLS, SASL), ask it for
    metadata, and close it; raises what went wrong. No public aiokafka API opens a single
    authenticated connection, and its bootstrap logs the cause but raises only "Unable to bootstrap"."""
    from aiokafka.conn import create_conn

    conn: Any = None
    try:
        conn = await asyncio.wait_for(
            create_conn(host, port, request_timeout_ms=int(timeout_s * 1000), **config), timeout_s
        )
        await asyncio.wait_for(conn.send(MetadataRequest([])), timeout_s)
    finally:
        if conn is not None:
            conn.close()


def default_partition(producer: AIOKafkaProducer, topic: str, key: bytes | None, value: bytes | None) -> int:
    """The partition aiokafka would pick for a record (the key's murmur2 hash); the topic's
    metadata must be known (``await producer.partitions_for(topic)``)."""
    partition: int = producer._partition(topic, None, None, None, key, value)
    return partition


def transactions_failed_fatally(producer: AIOKafkaProducer) -> bool:
    """Whether the producer's transaction manager is in a state no abort recovers from."""
    manager = producer._txn_manager
    return manager is not None and bool(manager.is_fatal_error())


Pin = tuple[Any, str, tuple[str, ...] | None]
"""(owner, private name, the parameter names it must take or None for an attribute)."""

UPSTREAM_PINS: tuple[Pin, ...] = (
    (aiokafka_driver.Consumer, "_drain_messages", ("self", "fetcher")),
    (aiokafka_driver.Consumer, "_commit", ("self", "offsets")),
    (aiokafka_driver.Consumer, "_new_consumer_thread", ("self",)),
    (aiokafka_driver.Consumer, "_add_gap", ("self", "tp", "offset_from", "offset_to")),
    (aiokafka_driver.Consumer, "_get_active_partitions", ("self",)),
    (aiokafka_driver.Consumer, "perform_seek", ("self",)),
    (aiokafka_driver.Consumer, "on_partitions_revoked", ("self", "revoked")),
    (aiokafka_driver.AIOKafkaConsumerThread, "_create_worker_consumer", ("self", "transport")),
    (
        aiokafka_driver.AIOKafkaConsumerThread,
        "_fetch_records",
        ("self", "consumer", "active_partitions", "timeout", "max_records"),
    ),
    (aiokafka_driver.AIOKafkaConsumerThread, "_ensure_consumer", ("self",)),
    (faust.App, "_on_partitions_assigned", ("self", "assigned", "generation_id")),
    (faust.App, "_new_transport", ("self",)),
    (faust.Channel, "_queue", None),
    (
        AIOKafkaProducer,
        "_partition",
        ("self", "topic", "partition", "key", "value", "serialized_key", "serialized_value"),
    ),
    (AIOKafkaProducer, "_txn_manager", None),
    (MetadataRequest, "__init__", ("self", "topics", "allow_auto_topic_creation")),
)
"""The private ``aiokafka.conn.create_conn`` is pinned by ``tests/unit/test_upstream_pins.py``."""
"""Every private faust/aiokafka method this module overrides or calls, with its signature.

Attributes set in constructors (``Consumer._read_offset``, ``_committed_offset``,
``_unacked_messages``, ``_stopped``, ``_thread``; aiokafka's ``AIOKafkaConsumer._subscription``
and ``_isolation_level``) are pinned by ``tests/unit/test_upstream_pins.py`` on live objects."""


def missing_pins(pins: Iterable[Pin] = UPSTREAM_PINS) -> list[str]:
    """The pinned names that are gone or take other parameters, as readable lines."""
    problems = []
    for owner, name, parameters in pins:
        where = f"{owner.__module__}.{owner.__qualname__}.{name}"
        found = inspect.getattr_static(owner, name, None)
        if found is None and name not in getattr(owner, "__annotations__", {}) and name not in _slots(owner):
            if not _set_in_init(owner, name):
                problems.append(f"{where} is gone")
            continue
        if parameters is not None:
            actual = tuple(inspect.signature(found).parameters)
            if actual != parameters:
                problems.append(f"{where} takes {actual}, pinned {parameters}")
    return problems


def _slots(owner: type) -> set[str]:
    return {slot for cls in owner.__mro__ for slot in getattr(cls, "__slots__", ())}


def _set_in_init(owner: type, name: str) -> bool:
    """Whether some __init__ in the class's hierarchy assigns ``self.<name>``."""
    for cls in owner.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        try:
            source = inspect.getsource(init)
        except (OSError, TypeError):
            continue
        if f"self.{name} =" in source or f"self.{name}:" in source:
            return True
    return False
