"""Windowed statistics agents: what each model version is doing right now.

Statistics are computed in three stages:

1. The inference pipeline hands ``record`` one observation per input record once its
   prediction or dead letter is acknowledged by the broker, and before the input is acked.
   Each is folded into a partial ``WindowAggregate`` per (model, version, window, input
   partition), kept in the ``stats-partials`` table whose changelog partition is the input
   partition, so each partial has exactly one writer: the input partition's owner. A partial
   remembers the highest input offset it applied: replays after a crash or rebalance never
   count twice. Inputs are acked only after the table's changelog has their observations.
   (Folding in-process, instead of reading the predictions back from Kafka, spares a second
   consumer and a JSON decode per prediction: it cost about a third of the worker's throughput.)
2. Once a second, for each input partition it owns, a worker computes the watermark (the
   highest event time seen; it follows the wall clock once the partition is caught up and idle
   for STATS_IDLE_GRACE_S), sends every partial whose window end plus the allowed lateness the
   watermark passed to the internal feed topic (keyed by model, version and window), then
   reports the watermark itself to every feed partition. An observation that arrives after its
   partial was handed over is late: it is counted in ``inference_stats_dropped_observations_total``.
3. ``stats-merge`` keeps, per window, the partials of every source in the ``stats-windows``
   table. When every source partition has reported, on the window's own feed partition, a
   watermark past the window's end plus lateness, it publishes exactly one WindowStats record
   and marks the window closed. Watermarks count per feed partition: a source's partial and
   its watermark are ordered only within one partition (docs/design.md).

faust's ``on_window_close`` is not used: it fires from a wall-clock timer and windows restored
from the changelog after a restart may never fire.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, cast

import faust
import orjson

from app.errors import ModelLoadError
from app.kafka.delivery import OutboundRecord, Send, publish, sent_and_acknowledged, until_acknowledged
from app.kafka.transport import BatchingConsumer, WorkerApp
from app.metrics import Metrics
from app.models.registry import ModelRegistry
from app.records.observations import Observation, source_name
from app.records.wire_format import Encode
from app.settings import StatsSettings, TopicSettings
from app.stats.windows import PartialKey, WindowAggregate, WindowKey, window_start_ms, window_stats

log = logging.getLogger(__name__)

TICK_INTERVAL_S = 1.0
CLOSED_WINDOWS_KEPT = 10
"""Closed windows stay in the tables (and /stats) for this many window lengths."""


class SourceClock:
    """Per source partition: the highest event time seen, and when the last record was seen."""

    def __init__(self, idle_grace_s: float) -> None:
        self._idle_grace_ms = idle_grace_s * 1000.0
        self._event_ms: dict[str, float] = {}
        self._seen_at_ms: dict[str, float] = {}

    def observe(self, source: str, event_time_ms: float, now_ms: float) -> None:
        self._event_ms[source] = max(self._event_ms.get(source, event_time_ms), event_time_ms)
        self._seen_at_ms[source] = now_ms

    def watermark(self, source: str, now_ms: float, caught_up: bool) -> float | None:
        """Event time only, until the source is caught up and idle past the grace: then the wall clock."""
        event_ms = self._event_ms.get(source)
        # A source never seen counts as seen when first asked about: a (re)started worker waits a grace.
        idle = now_ms - self._seen_at_ms.setdefault(source, now_ms) >= self._idle_grace_ms
        if caught_up and idle:
            wall_ms = now_ms - self._idle_grace_ms
            return wall_ms if event_ms is None else max(event_ms, wall_ms)
        return event_ms


def partial_key(observation: Observation, start_ms: int) -> bytes:
    window = WindowKey(observation.model_name, observation.model_version, start_ms)
    return PartialKey(window, observation.source).encode()


class StatsAgents:
    def __init__(
        self,
        app: WorkerApp,
        settings: StatsSettings,
        topics: TopicSettings,
        registry: ModelRegistry,
        send: Send,
        metrics: Metrics,
        partitions: int,
        backoff_s: float,
        encode: Encode = orjson.dumps,
    ) -> None:
        """``partitions``: the input topic's partition count, which the tables and feed share;
        ``registry``: where the models' reference distributions are read; ``backoff_s``: the first
        pause before re-sending a write the broker did not acknowledge; ``encode``: how WindowStats
        records are written (OUTPUT_FORMAT)."""
        self._encode = encode
        self.app = app
        self.metrics = metrics
        self.size_ms = int(settings.stats_window_s * 1000)
        self.lateness_ms = int(settings.stats_lateness_s * 1000)
        self.registry = registry
        self._backoff_s = backoff_s
        self.clock = SourceClock(settings.stats_idle_grace_s)
        self._send = send
        self._pending: dict[str, int] = {}  # source -> records submitted to the pipeline, not yet folded in
        self._to_fold: list[tuple[list[Observation], asyncio.Future[None]]] = []
        self._folding_wanted = asyncio.Event()
        self._folder: asyncio.Future[None] | None = None
        self._source_topic = topics.input_topic
        self.partitions = partitions
        # Fold and hand-over both read and write partials across awaits: one at a time, or a fold
        # could add to a partial being handed over, or a hand-over report a watermark past a
        # window whose observations a fold has taken in but not yet stored.
        self._partials_lock = asyncio.Lock()
        self._handed_over: dict[str, float] = {}  # source -> watermark its due partials were handed over at
        self._watermarks: dict[int, dict[str, float]] = {}  # merge stage: feed partition -> source -> watermark
        self.partials = app.Table("stats-partials", partitions=partitions, key_type=bytes)
        self.windows = app.Table("stats-windows", partitions=partitions, key_type=bytes)
        self.feed = app.topic(
            f"{app.conf.id}-stats-feed",
            partitions=partitions,
            internal=True,
            key_serializer="raw",
            value_serializer="raw",
        )
        self.stats_topic = app.topic(topics.stats_topic, key_serializer="raw", value_serializer="raw")
        app.agent(self.feed, name="stats-merge")(self._merge)
        app.timer(TICK_INTERVAL_S)(self._tick)

    # -- stage 1: fold observations into per-source partials --------------------------------

    def submitted(self, partitions: Iterable[int]) -> None:
        """Records of these input partitions entered the pipeline: their partition is not caught up."""
        for partition, count in Counter(partitions).items():
            source = source_name(self._source_topic, partition)
            self._pending[source] = self._pending.get(source, 0) + count

    def record(self, observations: list[Observation]) -> asyncio.Future[None]:
        """Queue observations; the future resolves once the changelog has them, so their inputs may be acked.

        One task folds whatever queued while its previous changelog write was in flight: a
        write per group of outputs would cap the worker at about one group per broker round trip.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._to_fold.append((observations, done))
        self._folding_wanted.set()
        if self._folder is None or self._folder.done():
            self._folder = asyncio.ensure_future(self._fold_forever())
        return done

    async def _fold_forever(self) -> None:
        while True:
            await self._folding_wanted.wait()
            self._folding_wanted.clear()
            queued, self._to_fold = self._to_fold, []
            observations = [observation for group, _ in queued for observation in group]
            try:
                await self._fold(observations)
            except Exception as exc:  # handed to the waiting pipeline too, which then crashes the worker
                for _, done in queued:
                    done.set_exception(exc)
                raise
            finally:
                for observation in observations:
                    self._pending[observation.source] -= 1
            for _, done in queued:
                done.set_result(None)

    async def _fold(self, observations: list[Observation]) -> None:
        async with self._partials_lock:
            now_ms = time.time() * 1000.0
            touched: dict[bytes, WindowAggregate] = {}
            keys: dict[tuple[str, str, int, str], bytes] = {}  # a fold's observations share a few windows
            edges: dict[tuple[str, str], list[float] | None] = {}
            for observation in observations:
                self.clock.observe(observation.source, observation.event_time_ms, now_ms)
                start = window_start_ms(observation.event_time_ms, self.size_ms)
                model = (observation.model_name, observation.model_version)
                key = keys.get((*model, start, observation.source))
                if key is None:
                    key = keys[(*model, start, observation.source)] = partial_key(observation, start)
                partial = touched.get(key) or self._load(self.partials, key)
                if partial is None:
                    partial = WindowAggregate(
                        observation.model_name, observation.model_version, start, start + self.size_ms
                    )
                if partial.has_applied(observation):
                    self.metrics.stats_dropped.labels("duplicate").inc()
                    continue
                if partial.closed or partial.end_ms + self.lateness_ms <= self._handed_over.get(observation.source, -1):
                    self.metrics.stats_dropped.labels("late").inc()
                    continue
                if model not in edges:
                    reference = self.reference(*model)
                    edges[model] = reference.get("bin_edges") if reference else None
                partial.apply(observation, edges[model])
                touched[key] = partial
            await asyncio.gather(*(self._store_partial(key, partial) for key, partial in touched.items()))

    async def _store_partial(self, key: bytes, partial: WindowAggregate | None) -> None:
        """Write a partial (None deletes it) and wait until its changelog record is acknowledged.

        A changelog write the broker rejects is re-sent with backoff: the records folded into it
        are acked only after it lands, so a broker outage pauses statistics instead of losing them.
        """
        partition = PartialKey.decode(key).partition
        value = None if partial is None else partial.to_dict()
        if value is None:
            self.partials.data.pop(key, None)
        else:
            self.partials.data[key] = value

        async def write() -> Awaitable[Any]:
            if value is None:
                return self.partials.send_changelog(partition, key, None, value_serializer="raw")
            return self.partials.send_changelog(partition, key, value)

        backoff_s = self._backoff_s
        first = sent_and_acknowledged(write)
        await until_acknowledged(first, write, backoff_s, f"changelog write of {key.decode()}")

    @staticmethod
    def _load(table: Any, key: bytes) -> WindowAggregate | None:
        stored = table.data.get(key)
        return None if stored is None else WindowAggregate.from_dict(stored)

    # -- stage 2: once a second, hand due partials and watermarks to the merge stage --------

    async def _tick(self) -> None:
        consumer = cast(BatchingConsumer, self.app.consumer)
        now_ms = time.time() * 1000.0
        for tp in sorted(consumer.assignment()):
            if tp.topic != self._source_topic:
                continue
            source = source_name(tp.topic, tp.partition)
            async with self._partials_lock:
                caught_up = self._pending.get(source, 0) == 0 and consumer.caught_up(tp)
                watermark = self.clock.watermark(source, now_ms, caught_up)
                if watermark is None:
                    continue
                await self._hand_over_due(source, watermark)
                self._handed_over[source] = watermark
            # After its partials: on each feed partition, a source's watermark follows what it handed over.
            report = orjson.dumps({"source": source, "watermark": watermark})
            await asyncio.gather(
                *(
                    publish(
                        self._send,
                        OutboundRecord(self.feed.get_topic_name(), b"watermark", report, [], None, p),
                        self._backoff_s,
                        f"watermark of {source}",
                    )
                    for p in range(self.partitions)
                )
            )

    async def _hand_over_due(self, source: str, watermark: float) -> None:
        for key in [k for k in list(self.partials.data.keys()) if PartialKey.decode(k).source == source]:
            partial = self._load(self.partials, key)
            if partial is None:
                continue
            if partial.is_due(watermark, self.lateness_ms):
                window = WindowKey(partial.model_name, partial.model_version, partial.start_ms).encode()
                body = orjson.dumps({"source": source, "partial": partial.to_dict()})
                await publish(
                    self._send,
                    OutboundRecord(self.feed.get_topic_name(), window, body, []),
                    self._backoff_s,
                    f"partial {key.decode()}",
                )
                partial.closed = True
                await self._store_partial(key, partial)
            elif partial.closed and partial.end_ms < watermark - CLOSED_WINDOWS_KEPT * self.size_ms:
                await self._store_partial(key, None)

    # -- stage 3: merge partials; publish a window once every source is past it -------------

    async def _merge(self, stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            document = orjson.loads(event.value)
            feed_partition = event.message.partition
            if "watermark" in document:
                self._watermarks.setdefault(feed_partition, {})[document["source"]] = document["watermark"]
                await self._close_due(feed_partition)
                continue
            self._add_partial(event.key, document["source"], document["partial"], feed_partition)

    def _add_partial(self, key: bytes, source: str, partial: dict[str, Any], feed_partition: int) -> None:
        window = self.windows.get(key)
        arrived = partial["count"] + partial["dead_letters"]
        if window is None:
            low_watermark = self._low_watermark(feed_partition)
            if low_watermark is not None and low_watermark >= partial["end_ms"] + self.lateness_ms:
                # Its window closed long enough ago to be forgotten here: publishing it again would
                # report a second, partial window.
                self.metrics.stats_dropped.labels("late").inc(arrived)
                return
            window = {"parts": {}, "closed": False, "feed_partition": feed_partition}
        if window["closed"]:
            # A partial sent again (its source handed it over twice, around a crash or a rebalance)
            # adds only what the published one lacked.
            published = window["parts"].get(source)
            counted = 0 if published is None else published["count"] + published["dead_letters"]
            if arrived > counted:
                self.metrics.stats_dropped.labels("late").inc(arrived - counted)
            return
        window["parts"][source] = partial  # a re-sent partial replaces itself: idempotent
        window.setdefault("end_ms", partial["end_ms"])
        self.windows[key] = window

    def _low_watermark(self, feed_partition: int) -> float | None:
        """The lowest watermark of all source partitions as reported on this feed partition, once all have."""
        reported = self._watermarks.get(feed_partition, {})
        sources = [source_name(self._source_topic, partition) for partition in range(self.partitions)]
        if any(source not in reported for source in sources):
            return None
        return min(reported[source] for source in sources)

    async def _close_due(self, feed_partition: int) -> None:
        low_watermark = self._low_watermark(feed_partition)
        if low_watermark is None:
            return
        for key, window in list(self.windows.items()):
            if window is None or window["feed_partition"] != feed_partition:
                continue
            if not window["closed"] and low_watermark >= window["end_ms"] + self.lateness_ms:
                await self._publish(key, window)
            elif window["closed"] and window["end_ms"] < low_watermark - CLOSED_WINDOWS_KEPT * self.size_ms:
                del self.windows[key]

    def merged(self, window: Mapping[str, Any]) -> WindowAggregate:
        parts = [WindowAggregate.from_dict(part) for part in window["parts"].values()]
        total = WindowAggregate(parts[0].model_name, parts[0].model_version, parts[0].start_ms, parts[0].end_ms)
        for part in parts:
            total.merge(part)
        return total

    async def _publish(self, key: bytes, window: dict[str, Any]) -> None:
        total = self.merged(window)
        stats = window_stats(total, self.reference(total.model_name, total.model_version), time.time() * 1000.0)
        outbound = OutboundRecord(self.stats_topic.get_topic_name(), key, self._encode(stats), [])
        await publish(self._send, outbound, self._backoff_s, f"window {key.decode()}")
        # Marked closed only once the broker has the record: a crash in between re-publishes it.
        window["closed"] = True
        self.windows[key] = window
        self.metrics.stats_windows_closed.labels(total.model_name, total.model_version).inc()
        log.info("window %s closed: %d predictions, %d dead letters", key.decode(), total.count, total.dead_letters)

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one StatsAgents per process; the cache is bounded
    def reference(self, name: str, version: str) -> Mapping[str, Any] | None:
        try:
            reference: Mapping[str, Any] | None = self.registry.metadata(name, version).extra.get(
                "reference_distribution"
            )
        except ModelLoadError:
            return None
        return reference

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Windows whose merge this worker owns (closed ones), and the partials it is folding (open)."""
        now_ms = time.time() * 1000.0
        views: dict[str, list[dict[str, Any]]] = {"open": [], "closed": []}
        for window in self.windows.values():
            if window is not None and window["closed"]:
                total = self.merged(window)
                views["closed"].append(
                    window_stats(total, self.reference(total.model_name, total.model_version), now_ms)
                )
        for stored in self.partials.data.values():
            partial = WindowAggregate.from_dict(stored)
            if not partial.closed:
                views["open"].append(
                    window_stats(partial, self.reference(partial.model_name, partial.model_version), now_ms)
                )
        for group in views.values():
            group.sort(key=lambda s: (s["model_name"], s["model_version"], s["window_start"]))
        return views
