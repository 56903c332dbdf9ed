"""Quix Streams as its docs recommend for batch work. A StreamingDataFrame has no batching step: its
functions get one row each, and its count windows are per message key and state-backed and only close
when full (the last events of each key would never come out). For "batching messages in memory before
processing them" the docs point to the Application's own low-level clients ("Using Producer &
Consumer", docs/advanced/producer-consumer-lowlevel.md): ``Application.get_consumer()``, "the
recommended way to create a Consumer", and ``Application.get_producer()``, configured by the same
Application (here the shared producer settings, as ``producer_extra_config``). The loop is the bare
confluent-kafka one through Quix's clients: wait for one record, take what else is buffered without
waiting, one batched forward per 256 records, produce; about once a second (COMMIT_INTERVAL_S) flush
the producer, then commit the offsets of what was processed, as a Quix checkpoint does (at least
once)."""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from benchmarks.peers.common import COMMIT_INTERVAL_S, arguments, librdkafka_turn, load_runner
from benchmarks.peers.quix_app import quix_application


def main() -> None:
    args = arguments(__doc__ or "")
    runner = load_runner(args.model)
    app = quix_application(args)
    failures: list[Any] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(error)

    with app.get_consumer(auto_commit_enable=False) as consumer, app.get_producer() as producer:
        producer.poll(0)  # Quix creates its librdkafka producer on first use: connect now, as the other loops do
        consumer.subscribe([args.input])
        processed: dict[tuple[str, int], int] = {}
        last_commit = time.monotonic()
        while True:
            records = librdkafka_turn(consumer, producer, runner, args.output, delivered)
            for message in records:
                processed[(message.topic(), message.partition())] = message.offset() + 1
            if processed and time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                producer.flush()
                if failures:
                    raise KafkaException(failures[0])
                offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in processed.items()]
                consumer.commit(offsets=offsets, asynchronous=False)
                processed, last_commit = {}, time.monotonic()


if __name__ == "__main__":
    main()
