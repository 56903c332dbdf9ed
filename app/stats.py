"""Windowed statistics agents: what each model version is doing right now.

Two Faust agents run beside the inference agent in the same app:

1. ``stats-observe`` reads the predictions and dead-letter topics, reduces each record to an
   ``Observation`` and forwards it to an internal feed topic keyed by model and version, so
   every window of one model version is owned by one feed partition (and one worker).
2. ``stats-windows`` applies observations to ``WindowAggregate``s in a changelog-backed Faust
   table. Each aggregate remembers the highest offset it applied per source partition, so a
   restarted or rebalanced worker replays without counting twice. Once a second, a tick per
   feed partition closes the windows whose end plus the allowed lateness the watermark has
   passed, publishing exactly one WindowStats record each.

faust's ``on_window_close`` is not used: it fires from a wall-clock timer and windows restored
from the changelog after a restart may never fire.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping
from typing import Any, cast

import faust
import orjson

from app.delivery import InOrderConfirmer, OutboundRecord, Send, publish
from app.errors import ModelLoadError, RecordError
from app.events import parse_timestamp_ms
from app.metrics import Metrics
from app.registry import ModelRegistry
from app.settings import Settings
from app.windows import Observation, WindowAggregate, window_key, window_start_ms, window_stats

log = logging.getLogger(__name__)

TICK_INTERVAL_S = 1.0
CLOSED_WINDOWS_KEPT = 10
"""Closed windows stay in the table (and /stats) for this many window lengths."""


def observation_from(message: Any, settings: Settings) -> Observation:
    """Reduce a predictions or dead-letter record to an Observation; raises ValueError if unreadable."""
    source = f"{message.topic}:{message.partition}"
    if message.topic == settings.dead_letter_topic:
        headers = {name: value.decode() for name, value in (message.headers or [])}
        return Observation(
            model_name=headers["dlq.model.name"],
            model_version=headers["dlq.model.version"],
            event_time_ms=message.timestamp * 1000.0,
            source=source,
            offset=message.offset,
            dead_letter=True,
        )
    result = orjson.loads(message.value)
    return Observation(
        model_name=result["model_name"],
        model_version=result["model_version"],
        event_time_ms=parse_timestamp_ms(result["timestamp"]),
        source=source,
        offset=message.offset,
        prediction=float(result["prediction"]),
        label=result.get("label"),
        latency_ms=float(result["latency_ms"]),
        batch_size=int(result["batch_size"]),
    )


class Watermarks:
    """Per feed partition: the highest event time seen, advancing with the wall clock when idle."""

    def __init__(self, idle_grace_s: float) -> None:
        self._idle_grace_ms = idle_grace_s * 1000.0
        self._event_ms: dict[int, float] = {}
        self._seen_at_ms: dict[int, float] = {}

    def observe(self, partition: int, event_time_ms: float, now_ms: float) -> None:
        self._event_ms[partition] = max(self._event_ms.get(partition, event_time_ms), event_time_ms)
        self._seen_at_ms[partition] = now_ms

    def current(self, partition: int, now_ms: float) -> float | None:
        if partition not in self._event_ms:
            return None
        idle_ms = now_ms - self._seen_at_ms[partition]
        drift = idle_ms if idle_ms >= self._idle_grace_ms else 0.0
        return self._event_ms[partition] + drift


class StatsAgents:
    def __init__(self, app: faust.App, settings: Settings, send: Send, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.size_ms = int(settings.stats_window_s * 1000)
        self.lateness_ms = int(settings.stats_lateness_s * 1000)
        self.registry = ModelRegistry(settings.model_dir)
        self.watermarks = Watermarks(settings.stats_idle_grace_s)
        self.feed = app.topic(
            f"{settings.app_id}-stats-feed",
            partitions=settings.topic_partitions,
            key_serializer="raw",
            value_serializer="raw",
            internal=True,
        )
        self.stats_topic = app.topic(settings.stats_topic, key_serializer="raw", value_serializer="raw")
        self.windows = app.Table(
            "stats-windows",
            partitions=settings.topic_partitions,
            key_type=bytes,  # faust picks the changelog's key codec from this (raw); values are JSON
        )
        self.observed = app.topic(
            settings.output_topic, settings.dead_letter_topic, key_serializer="raw", value_serializer="raw"
        )
        self._send = send
        app.agent(self.observed, name="stats-observe")(self._observe)
        app.agent(self.feed, name="stats-windows")(self._aggregate)
        app.timer(TICK_INTERVAL_S)(self._tick)

    async def _observe(self, stream: faust.StreamT[bytes]) -> None:
        """Forward observations; each input is acked once the broker has its feed record."""
        manual = cast(faust.Stream[bytes], stream).noack()
        forwarded = InOrderConfirmer[Any](
            self._send, manual.ack, self.settings.publish_retry_backoff_s, "stats-observe"
        )
        confirming = asyncio.ensure_future(forwarded.run_forever())
        try:
            async for event in manual.events():
                try:
                    observation = observation_from(event.message, self.settings)
                except (ValueError, KeyError, TypeError, RecordError) as exc:
                    log.warning(
                        "statistics skip unreadable record %s[%d]@%d: %r",
                        event.message.topic,
                        event.message.partition,
                        event.message.offset,
                        exc,
                    )
                    self.metrics.stats_skipped.inc()
                    await manual.ack(event)
                    continue
                key = f"{observation.model_name}|{observation.model_version}".encode()
                outbound = OutboundRecord(self.feed.get_topic_name(), key, orjson.dumps(observation.to_dict()), [])
                forwarded.put(event, outbound, await self._send(outbound))
        finally:
            confirming.cancel()

    async def _tick(self) -> None:
        now_ms = time.time() * 1000.0
        tick = orjson.dumps({"tick_ms": now_ms})
        for partition in range(self.settings.topic_partitions):
            await self.feed.send(key=b"tick", value=tick, partition=partition)

    async def _aggregate(self, stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            partition = event.message.partition
            document = orjson.loads(event.value)
            if "tick_ms" in document:
                await self._close_due(partition, time.time() * 1000.0)
                continue
            observation = Observation.from_dict(document)
            self.watermarks.observe(partition, observation.event_time_ms, time.time() * 1000.0)
            self._apply(observation, partition)

    def _apply(self, observation: Observation, partition: int) -> None:
        start = window_start_ms(observation.event_time_ms, self.size_ms)
        key = window_key(observation.model_name, observation.model_version, start).encode()
        stored = self.windows.get(key)
        if stored is None:
            aggregate = WindowAggregate(
                observation.model_name, observation.model_version, start, start + self.size_ms, partition
            )
        else:
            aggregate = WindowAggregate.from_dict(stored)
        if aggregate.closed:
            self.metrics.stats_late.inc()
            return
        reference = self.reference(observation.model_name, observation.model_version)
        if aggregate.apply(observation, reference.get("bin_edges") if reference else None):
            self.windows[key] = aggregate.to_dict()

    async def _close_due(self, partition: int, now_ms: float) -> None:
        watermark = self.watermarks.current(partition, now_ms)
        if watermark is None:
            return
        for key, stored in list(self.windows.items()):
            if stored is None or stored["feed_partition"] != partition:
                continue
            aggregate = WindowAggregate.from_dict(stored)
            if aggregate.is_due(watermark, self.lateness_ms):
                await self._publish(key, aggregate, now_ms)
            elif aggregate.closed and aggregate.end_ms < watermark - CLOSED_WINDOWS_KEPT * self.size_ms:
                del self.windows[key]

    async def _publish(self, key: bytes, aggregate: WindowAggregate, now_ms: float) -> None:
        stats = window_stats(aggregate, self.reference(aggregate.model_name, aggregate.model_version), now_ms)
        outbound = OutboundRecord(self.stats_topic.get_topic_name(), key, orjson.dumps(stats), [])
        await publish(self._send, outbound, self.settings.publish_retry_backoff_s, f"window {key.decode()}")
        # Marked closed only once the broker has the record: a crash in between re-publishes it.
        aggregate.closed = True
        self.windows[key] = aggregate.to_dict()
        self.metrics.stats_windows_closed.labels(aggregate.model_name, aggregate.model_version).inc()
        log.info(
            "window %s closed: %d predictions, %d dead letters", key.decode(), aggregate.count, aggregate.dead_letters
        )

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
        """Open and recently closed windows held by this worker, as /stats shows them."""
        now_ms = time.time() * 1000.0
        views: dict[str, list[dict[str, Any]]] = {"open": [], "closed": []}
        for stored in self.windows.values():
            if stored is None:
                continue
            aggregate = WindowAggregate.from_dict(stored)
            stats = window_stats(aggregate, self.reference(aggregate.model_name, aggregate.model_version), now_ms)
            views["closed" if aggregate.closed else "open"].append(stats)
        for group in views.values():
            group.sort(key=lambda s: (s["model_name"], s["model_version"], s["window_start"]))
        return views
