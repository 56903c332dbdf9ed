"""The bare confluent-kafka ceiling (librdkafka): wait for one record, take what else is buffered
without waiting, one batched forward per 256 records, produce; about once a second flush the producer
and commit what was consumed (at least once, as the worker)."""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer

from app.records.events import SourceRef
from benchmarks.peers.common import (
    COMMIT_INTERVAL_S,
    LIBRDKAFKA_PRODUCER,
    MAX_BATCH_SIZE,
    arguments,
    decode,
    load_runner,
    result_bytes,
)


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
            first = consumer.poll(0.1)
            records = [] if first is None else [first, *consumer.consume(1999, timeout=0)]
            records = [m for m in records if m.error() is None]
            for start in range(0, len(records), MAX_BATCH_SIZE):
                chunk = records[start : start + MAX_BATCH_SIZE]
                events = [decode(m.value(), m.topic(), m.partition(), m.offset()) for m in chunk]
                outputs = runner.predict([event.input for event in events])
                for message, event, output in zip(chunk, events, outputs, strict=True):
                    source = SourceRef(message.topic(), message.partition(), message.offset())
                    value = result_bytes(runner, event, output, len(chunk), source)
                    producer.produce(args.output, value, key=message.key(), on_delivery=delivered)
                producer.poll(0)
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
