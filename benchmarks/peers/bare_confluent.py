"""The bare confluent-kafka ceiling (librdkafka): wait for one record, take what else is buffered
without waiting, one batched forward per 256 records, produce; about once a second flush the producer
and commit what was consumed (at least once, as the worker)."""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer

from benchmarks.peers.common import COMMIT_INTERVAL_S, LIBRDKAFKA_PRODUCER, arguments, librdkafka_turn, load_runner


def main() -> None:
    args = arguments(__doc__ or "")
    runner = load_runner(args.model)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    producer = Producer({"bootstrap.servers": args.bootstrap, **LIBRDKAFKA_PRODUCER})
    failures: list[Any] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(error)

    consumer.subscribe([args.input])
    uncommitted = False
    last_commit = time.monotonic()
    try:
        while True:
            records = librdkafka_turn(consumer, producer, runner, args.output, delivered)
            uncommitted = uncommitted or bool(records)
            if uncommitted and time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                producer.flush()
                if failures:
                    raise KafkaException(failures[0])
                consumer.commit(asynchronous=False)
                uncommitted, last_commit = False, time.monotonic()
    finally:
        consumer.close()


if __name__ == "__main__":
    main()
