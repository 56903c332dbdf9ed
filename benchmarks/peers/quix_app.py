"""The Quix Streams peers' Application: the shared producer settings and commit interval, as Quix
names them (``producer_extra_config`` goes to librdkafka as is)."""

from __future__ import annotations

import argparse

from quixstreams import Application

from benchmarks.peers.common import COMMIT_INTERVAL_S, LIBRDKAFKA_PRODUCER


def quix_application(args: argparse.Namespace) -> Application:
    return Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        loglevel="WARNING",
        use_changelog_topics=False,
        commit_interval=COMMIT_INTERVAL_S,
        producer_extra_config=LIBRDKAFKA_PRODUCER,
    )
