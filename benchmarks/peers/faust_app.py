"""The Faust peers' app: the shared producer settings and commit interval, as faust names them."""

from __future__ import annotations

import argparse

import faust

from benchmarks.peers.common import AIOKAFKA_PRODUCER, COMMIT_INTERVAL_S


def faust_app(args: argparse.Namespace) -> tuple[faust.App, faust.TopicT, faust.TopicT]:
    """A faust app for the Faust peers, with the shared producer settings as faust names them (it has no
    idempotence switch outside exactly-once), and its input and output topics."""
    app = faust.App(
        args.group,
        broker=f"kafka://{args.bootstrap}",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        datadir=f"/tmp/bench-{args.group}",
        key_serializer="raw",
        value_serializer="raw",
        producer_acks=-1,
        producer_linger_ms=AIOKAFKA_PRODUCER["linger_ms"],
        producer_max_batch_size=AIOKAFKA_PRODUCER["max_batch_size"],
        broker_commit_interval=COMMIT_INTERVAL_S,
    )
    source = app.topic(args.input, key_serializer="raw", value_serializer="raw")
    output = app.topic(args.output, key_serializer="raw", value_serializer="raw")
    return app, source, output
