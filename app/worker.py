"""The Faust app: the inference agent, the statistics agents, and the web endpoints.

``create_app`` loads and warms the models before Faust starts, so a worker that joins the
consumer group can predict at once, and a model that cannot load stops the start with one line.
After that the model catalog reloads versions and routes at run time (``app.models.catalog``).
The ``predict`` agent receives the input topic's raw records a fetch at a time (see
``app.kafka.transport``; faust's decoding and ``take()`` lose or stall records) and hands them to the
``InferencePipeline``, which acks each only after its output is acknowledged by the broker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, cast

import faust
from faust.web import Request, Response, View

from app.kafka.commit import commit_policy
from app.kafka.delivery import OutboundRecord
from app.kafka.producer import producer_options
from app.kafka.security import broker_credentials
from app.kafka.topics import TopicLayout, worker_topics
from app.kafka.transport import BatchingConsumer, InputBatch, WorkerApp
from app.metrics import Metrics
from app.models.catalog import ModelCatalog
from app.models.registry import ModelRegistry, local_model_dir
from app.pipeline.inference import InboundRecord, InferencePipeline
from app.pipeline.tracing import start_tracing
from app.records.events import SourceRef
from app.records.wire_format import RecordFormats
from app.settings import Settings
from app.stats.agents import StatsAgents

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 30.0
LAG_INTERVAL_S = 5.0
OUTPUTS_STALLED_S = 15.0
"""An output unacknowledged this long makes the worker not ready: the brokers take no writes."""
INPUT_BATCHES_BUFFERED = 4
"""Fetched batches waiting for the agent; beyond this the fetcher waits (backpressure)."""


def load_catalog(settings: Settings, metrics: Metrics) -> ModelCatalog:
    """Load and warm every routed model version; raises ModelLoadError or ConfigError with one line."""
    import torch

    if settings.models.torch_threads:
        torch.set_num_threads(settings.models.torch_threads)
    catalog = ModelCatalog(settings.models, settings.batching.max_batch_size, metrics)
    catalog.load()
    return catalog


class WorkerState:
    """What /ready reports: models warm, this worker's consumer group membership settled, and the
    brokers taking its outputs."""

    def __init__(self, catalog: ModelCatalog, input_topic: str) -> None:
        self.catalog = catalog
        self.input_topic = input_topic
        self.rebalanced = False
        self.assigned: set[Any] = set()
        self.unacknowledged_s: Callable[[], float] = lambda: 0.0
        """How long the oldest output has waited for the brokers (the pipeline's, once it runs)."""

    @property
    def ready(self) -> bool:
        return self.rebalanced and self.catalog.all_warm and self.unacknowledged_s() < OUTPUTS_STALLED_S

    def readiness(self) -> dict[str, Any]:
        waited = self.unacknowledged_s()
        body = {
            "ready": self.ready,
            "models_warm": {str(key): runner.warm for key, runner in self.catalog.runners.items()},
            "partitions_assigned": self.rebalanced,
            "input_partitions": sorted(tp.partition for tp in self.assigned if tp.topic == self.input_topic),
            "outputs_unacknowledged_s": round(waited, 1),
        }
        if waited >= OUTPUTS_STALLED_S:
            body["waiting_for"] = (
                f"the brokers: an output has waited {waited:.0f} s for its acknowledgement (are enough brokers "
                "up for min.insync.replicas?); consumption waits, nothing is lost"
            )
        return body


def create_app(
    settings: Settings,
    layout: TopicLayout,
    catalog: ModelCatalog | None = None,
    metrics: Metrics | None = None,
    formats: RecordFormats | None = None,
) -> faust.App:
    """``layout``: the topics as the worker found or made them (``ensure_worker_topics``); faust's
    tables and the statistics feed are partitioned as the input topic (a changelog partition per
    input partition) and replicated as the worker's other topics. ``formats``: the topics' record
    formats, their schemas registered (``app.kafka.schema_registry.record_formats``); JSON by default."""
    input_partitions = layout.partitions[settings.topics.input_topic]
    metrics = metrics or Metrics()
    formats = formats or RecordFormats()
    tracer = start_tracing(settings.tracing)  # before the models load: a missing tracing extra is one line
    catalog = load_catalog(settings, metrics) if catalog is None else catalog
    settings.worker.data_dir.mkdir(parents=True, exist_ok=True)  # faust creates only the last level
    crashes: set[asyncio.Future[None]] = set()

    def crash(exc: BaseException) -> None:
        future = asyncio.ensure_future(app.crash(exc))
        crashes.add(future)  # keep a reference until it ran
        future.add_done_callback(crashes.discard)

    policy = commit_policy(settings.kafka, settings.worker.app_id, settings.topics.input_topic, crash)
    app = WorkerApp(
        settings.worker.app_id,
        broker=[f"kafka://{server.strip()}" for server in settings.kafka.bootstrap_servers.split(",")],
        broker_credentials=broker_credentials(settings.kafka),
        datadir=str(settings.worker.data_dir),
        topic_partitions=input_partitions,
        key_serializer="raw",
        value_serializer="raw",
        topic_replication_factor=layout.replication_factor,
        consumer_auto_offset_reset=settings.kafka.auto_offset_reset,
        producer_compression_type=producer_options(settings.kafka)["compression_type"],
        producer_request_timeout=30.0,
        broker_commit_interval=1.0,
        # faust reads ~70 variables of its own from the environment, over these arguments (BROKER_URL,
        # CONSUMER_AUTO_OFFSET_RESET, PROCESSING_GUARANTEE, ...): a leftover one would silently change
        # the consumer but not the worker's other clients. It gets none: only what is set here.
        env={},
        broker_session_timeout=settings.kafka.session_timeout_s,
        broker_heartbeat_interval=settings.kafka.session_timeout_s / 10,
        web_host=settings.web.web_host,
        web_bind=settings.web.web_host,
        web_port=settings.web.web_port,
        web_in_thread=False,
        commit_policy=policy,
    )
    state = WorkerState(catalog, settings.topics.input_topic)
    input_topic = app.topic(settings.topics.input_topic, key_serializer="raw", value_serializer="raw")
    sink_topics = [
        app.topic(name, key_serializer="raw", value_serializer="raw")
        for name in worker_topics(settings.topics)
        if name != settings.topics.input_topic
    ]

    async def send(record: OutboundRecord) -> Awaitable[Any]:
        timestamp_s = None if record.timestamp_ms is None else record.timestamp_ms / 1000.0
        return await app.producer.send(
            record.topic, record.key, record.value, record.partition, timestamp_s, record.headers
        )

    stats = None
    if settings.stats.stats_enabled:
        registry = ModelRegistry(local_model_dir(settings.models))  # the served versions' metadata
        backoff_s = settings.kafka.publish_retry_backoff_s
        stats = StatsAgents(
            app, settings.stats, settings.topics, registry, send, metrics, input_partitions, backoff_s, formats.stats
        )
    input_batches = app.route_batches(input_topic, maxsize=INPUT_BATCHES_BUFFERED)

    @app.agent(input_batches, name="predict")
    async def predict(stream: faust.StreamT[InputBatch]) -> None:
        for topic in sink_topics:
            await topic.maybe_declare()
        producer = policy.publisher
        await producer.start()
        observe = stats.record if stats is not None else None
        pipeline = InferencePipeline(
            settings.batching,
            settings.topics,
            catalog,
            producer,
            settings.kafka.publish_retry_backoff_s,
            on_crash=crash,
            metrics=metrics,
            observe=observe,
            tracing=settings.tracing,
            tracer=tracer,
            formats=formats,
        )
        pipeline.start()
        state.unacknowledged_s = pipeline.unacknowledged_s
        metrics.output_unacknowledged.set_function(pipeline.unacknowledged_s)
        consumer = cast(BatchingConsumer, app.consumer)
        ack = consumer.ack
        try:
            async for batch in stream:
                if not consumer.taken(batch):
                    continue  # routed before a rebalance's seek, which reads its records again
                if stats is not None:
                    stats.submitted(m.partition for m in batch.messages)
                await pipeline.submit_many([(inbound_record(m), partial(ack, m)) for m in batch.messages])
                if not consumer.batches_waiting():
                    pipeline.input_idle()  # nothing more to batch with: forward now, not after MAX_WAIT_MS
        finally:
            try:
                await asyncio.wait_for(asyncio.shield(pipeline.stop()), DRAIN_TIMEOUT_S)
            finally:
                await producer.stop()

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]  # faust types its receivers too narrowly
    async def on_rebalance_complete(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        state.assigned = set(app.consumer.assignment())
        state.rebalanced = True
        log.info("rebalance complete; assigned: %s", ", ".join(sorted(map(str, state.assigned))) or "nothing")

    async def report_lag() -> None:
        update_consumer_lag(app, metrics, settings.topics.input_topic)

    app.timer(LAG_INTERVAL_S)(report_lag)

    if settings.models.model_poll_interval_s:

        async def refresh_models() -> None:
            await catalog.refresh()

        app.timer(settings.models.model_poll_interval_s)(refresh_models)

    metrics.worker_up.set(1)
    metrics.add_input_topic(settings.topics.input_topic)
    register_views(app, state, stats, metrics)
    return app


def internal_topics(app: faust.App) -> dict[str, int]:
    """The topics faust creates for this app (table changelogs, agent channels), with the partition
    count each is used with."""
    topics = [table.changelog_topic for table in app.tables.values()]
    topics += [agent.channel for agent in app.agents.values() if getattr(agent.channel, "internal", False)]
    return {name: topic.partitions or app.conf.topic_partitions for topic in topics for name in topic.topics}


def inbound_record(message: Any) -> InboundRecord:
    headers = message.headers
    return InboundRecord(
        SourceRef(message.topic, message.partition, message.offset),
        message.key,
        message.value,
        # isinstance against collections.abc.Mapping costs more than the rest of this function.
        list(headers.items()) if isinstance(headers, dict) else headers or [],
        None if message.timestamp is None else int(message.timestamp * 1000),
    )


def update_consumer_lag(app: faust.App, metrics: Metrics, topic: str) -> None:
    """Lag = the partition's high watermark minus this group's committed offset, per assigned partition."""
    consumer: Any = app.consumer
    metrics.consumer_lag.clear()
    for tp in consumer.assignment():
        if tp.topic != topic:
            continue
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        committed = consumer.committed_offset(tp)
        lag = highwater - (committed if committed is not None else 0)
        metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(lag, 0))


def register_views(app: faust.App, state: WorkerState, stats: StatsAgents | None, metrics: Metrics) -> None:
    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok"})

    @app.page("/ready")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            body = state.readiness()
            return self.json(body, status=200 if body["ready"] else 503)

    @app.page("/models")
    class Models(View):
        async def get(self, request: Request) -> Response:
            return self.json(state.catalog.snapshot())

    @app.page("/models/reload")
    class ReloadModels(View):
        """Admin: look for new versions and routing changes now (as the MODEL_POLL_INTERVAL_S timer does)."""

        async def post(self, request: Request) -> Response:
            changes = await state.catalog.refresh()
            return self.json({"changes": changes, "models": state.catalog.snapshot()})

    @app.page("/stats")
    class Stats(View):
        async def get(self, request: Request) -> Response:
            if stats is None:
                return self.json({"error": "statistics agents are off here (STATS_ENABLED=false)"}, status=404)
            return self.json(stats.snapshot())

    @app.page("/metrics")
    class PrometheusMetrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(metrics.exposition(), content_type=metrics.content_type)
