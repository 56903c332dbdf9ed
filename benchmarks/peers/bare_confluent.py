"""The bare confluent-kafka ceiling (librdkafka): consume, one batched forward, produce, flush, commit."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer

from app.records.events import SourceRef
from benchmarks.peers.common import MAX_BATCH_SIZE, arguments, decode, load_runner, result_bytes


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
    producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 5, "acks": "all"})
    failures: list[Any] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(error)

    consumer.subscribe([args.input])
    try:
        while True:
            records = [m for m in consumer.consume(2000, timeout=0.1) if m.error() is None]
            if not records:
                continue
            for start in range(0, len(records), MAX_BATCH_SIZE):
                chunk = records[start : start + MAX_BATCH_SIZE]
                events = [decode(m.value(), m.topic(), m.partition(), m.offset()) for m in chunk]
                outputs = runner.predict([event.input for event in events])
                for message, event, output in zip(chunk, events, outputs, strict=True):
                    source = SourceRef(message.topic(), message.partition(), message.offset())
                    value = result_bytes(runner, event, output, len(chunk), source)
                    producer.produce(args.output, value, key=message.key(), on_delivery=delivered)
                    producer.poll(0)
            producer.flush()
            if failures:
                raise KafkaException(failures[0])
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()


if __name__ == "__main__":
    main()
