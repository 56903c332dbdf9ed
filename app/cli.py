"""The console entry point: ``inference-worker {worker,produce,tail,demo}`` (also ``python -m app``)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys

from aiokafka.errors import KafkaConnectionError

from app.errors import ConfigError, ModelLoadError
from app.kafka.security import client_config, explain_connection_failure, hide_sasl_exchange
from app.kafka.transport import refuse_topic_auto_creation
from app.logs import configure_logging, logging_config
from app.settings import Settings, describe


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inference-worker",
        description="Kafka streaming inference worker: micro-batched PyTorch predictions with Faust.",
        epilog="settings (environment variables):\n" + describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "worker",
        help="start a worker (a Faust worker running the inference agent)",
        epilog="settings (environment variables):\n" + describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    produce = commands.add_parser("produce", help="load generator: send events at a target rate")
    produce.add_argument("-n", "--count", type=int, default=1000, help="events to send (default 1000)")
    produce.add_argument("--rate", type=float, default=0.0, help="events per second; 0 = as fast as possible")
    produce.add_argument("--malformed", type=float, default=0.0, help="fraction of malformed events (0-1)")
    produce.add_argument("--model", default=None, help="set the events' 'model' field")
    produce.add_argument("--seed", type=int, default=None, help="random seed for reproducible events")

    tail = commands.add_parser("tail", help="pretty-print predictions (and dead letters) as they arrive")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest records")
    tail.add_argument("--idle-timeout", type=float, default=None, help="stop after this many idle seconds")

    demo = commands.add_parser("demo", help="start a worker, feed it sample events, show the predictions")
    demo.add_argument("-n", "--count", type=int, default=500, help="events to send (default 500)")
    demo.add_argument("--rate", type=float, default=250.0, help="events per second (default 250)")
    demo.add_argument("--malformed", type=float, default=0.05, help="fraction malformed (default 0.05)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    refuse_topic_auto_creation()
    try:
        settings = Settings.from_env()
        client_config(settings.kafka)  # loads the TLS files: one that does not load stops the start here
    except ConfigError as exc:
        print(f"inference-worker: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.worker.log_format, _log_level(args.command, settings.worker.log_level))
    hide_sasl_exchange()
    try:
        return _run(args, settings)
    except ConfigError as exc:  # found once models or topics are read: routing, partition counts
        print(f"inference-worker: configuration error: {exc}", file=sys.stderr)
        return 2
    except ModelLoadError as exc:
        print(f"inference-worker: model error: {exc}", file=sys.stderr)
        return 1
    except KafkaConnectionError:
        refused = asyncio.run(explain_connection_failure(settings.kafka))
        if refused:
            print(f"inference-worker: {refused}", file=sys.stderr)
            return 1
        print(
            f"inference-worker: cannot reach Kafka at {settings.kafka.bootstrap_servers}: start it (make kafka-up) "
            "or set KAFKA_BOOTSTRAP_SERVERS",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130


TOOLS = frozenset({"produce", "tail", "demo"})
"""Commands whose output is their own lines: their Kafka clients' INFO lines would interleave with them."""


def _log_level(command: str, level: str) -> str:
    """The tools log warnings and errors only, unless LOG_LEVEL=debug asks for everything."""
    if command in TOOLS and level.lower() == "info":
        return "warning"
    return level


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "worker":
        return _worker(settings)
    if args.command == "produce":
        return asyncio.run(_produce(args, settings))
    if args.command == "tail":
        return asyncio.run(_tail(args, settings))
    from app.tools.demo import run_demo

    return asyncio.run(run_demo(settings, args.count, args.rate, args.malformed))


def _worker(settings: Settings) -> int:
    from faust.worker import Worker

    from app.kafka.schema_registry import record_formats
    from app.kafka.topics import check_internal_topics, ensure_worker_topics
    from app.metrics import Metrics
    from app.worker import create_app, internal_topics, load_catalog

    # The registry first (when a format needs it): unreachable, refusing, or holding an incompatible
    # output schema stops the start with one line, before the models take their time to load.
    formats = record_formats(
        settings.schema_registry,
        settings.topics,
        settings.batching.max_record_bytes,
        settings.kafka.publish_retry_backoff_s,
    )
    metrics = Metrics()
    catalog = load_catalog(settings, metrics)  # a model that cannot load stops the start before Kafka is asked
    # Topics next: faust subscribes only to topics that exist when it starts, and its internal topics
    # take the input topic's partition count. The loop stays current: faust's worker runs on it next.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    config = client_config(settings.kafka)
    layout = loop.run_until_complete(ensure_worker_topics(settings))
    app = create_app(settings, layout, catalog, metrics, formats)
    loop.run_until_complete(
        check_internal_topics(settings.kafka.bootstrap_servers, internal_topics(app), settings.worker.app_id, **config)
    )
    # torch and faust leave ~1M long-lived objects; without freezing them every full collection
    # walks them all, a pause of tens of milliseconds on the hot path.
    gc.freeze()
    log_format, level = settings.worker.log_format, settings.worker.log_level
    # faust's worker sets up logging again (coloured text on stdout); for JSON it gets the same setup as here.
    log_config = logging_config(log_format, level, "ext://sys.stdout") if log_format == "json" else None
    worker = Worker(app, loglevel=level, logging_config=log_config)
    # faust's terminal spinner sets the root logger to DEBUG when the level is WARNING or above,
    # so every library's debug record is built: about a sixth of the hot path's time.
    worker.spinner = None
    worker.execute_from_commandline()
    return 0


async def _produce(args: argparse.Namespace, settings: Settings) -> int:
    from app.kafka.schema_registry import event_encoder
    from app.kafka.topics import ensure_worker_topics
    from app.models.registry import open_registry
    from app.tools.produce import EventFactory, produce_events

    config = client_config(settings.kafka)
    encode = event_encoder(settings.schema_registry, settings.topics.input_topic)
    await ensure_worker_topics(settings)
    metadata = open_registry(settings.models).metadata(
        args.model or settings.models.default_model, settings.models.model_version
    )
    factory = EventFactory(metadata, seed=args.seed)
    report = await produce_events(
        settings.kafka.bootstrap_servers,
        settings.topics.input_topic,
        factory,
        args.count,
        args.rate,
        args.malformed,
        args.model,
        encode=encode,
        **config,
    )
    print(
        f"sent {report.sent} events to {settings.topics.input_topic} in {report.seconds:.2f}s "
        f"({report.sent / max(report.seconds, 1e-9):.0f}/s); malformed: {dict(report.malformed)}"
    )
    return 0


async def _tail(args: argparse.Namespace, settings: Settings) -> int:
    from app.kafka.schema_registry import result_decoder
    from app.tools.tail import describe as describe_record
    from app.tools.tail import follow

    decode = result_decoder(settings.schema_registry)
    topics = (settings.topics.output_topic, settings.topics.dead_letter_topic)
    config = client_config(settings.kafka)
    async for record in follow(
        settings.kafka.bootstrap_servers, topics, args.from_beginning, args.idle_timeout, **config
    ):
        print(describe_record(record, settings.topics.dead_letter_topic, decode), flush=True)
    return 0
