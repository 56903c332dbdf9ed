"""The bare aiokafka ceiling, pipelined: getmany, one batched forward per 256 records, produce without
waiting, fetch again; the offsets of fetches whose deliveries are all acknowledged are committed once
a second (at least once, as the worker)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.records.events import SourceRef
from benchmarks.peers.common import (
    AIOKAFKA_PRODUCER,
    COMMIT_INTERVAL_S,
    MAX_BATCH_SIZE,
    arguments,
    decode,
    load_runner,
    result_bytes,
)

MAX_FETCHES_IN_FLIGHT = 16
"""Fetches sent but not yet acknowledged before the loop waits (bounded memory, as MAX_IN_FLIGHT)."""


async def main() -> None:
    args = arguments(__doc__ or "")
    runner = load_runner(args.model)
    consumer = AIOKafkaConsumer(
        args.input,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, **AIOKAFKA_PRODUCER)
    await consumer.start()
    await producer.start()
    in_flight: deque[tuple[dict[TopicPartition, int], list[Any]]] = deque()
    acked: dict[TopicPartition, int] = {}
    committed: dict[TopicPartition, int] = {}
    last_commit = time.monotonic()
    try:
        while True:
            fetched = await consumer.getmany(timeout_ms=100, max_records=2000)
            records = [record for batch in fetched.values() for record in batch]
            if records:
                deliveries = []
                for start in range(0, len(records), MAX_BATCH_SIZE):
                    chunk = records[start : start + MAX_BATCH_SIZE]
                    events = [decode(r.value, r.topic, r.partition, r.offset) for r in chunk]
                    outputs = runner.predict([event.input for event in events])
                    for record, event, output in zip(chunk, events, outputs, strict=True):
                        source = SourceRef(record.topic, record.partition, record.offset)
                        value = result_bytes(runner, event, output, len(chunk), source)
                        deliveries.append(await producer.send(args.output, value, key=record.key))
                in_flight.append(({tp: batch[-1].offset + 1 for tp, batch in fetched.items()}, deliveries))
            if len(in_flight) > MAX_FETCHES_IN_FLIGHT:
                await asyncio.gather(*in_flight[0][1])
            while in_flight and all(delivery.done() for delivery in in_flight[0][1]):
                offsets, deliveries = in_flight.popleft()
                for delivery in deliveries:
                    delivery.result()  # a failed delivery stops the loop before its offset is committed
                acked.update(offsets)
            if acked != committed and time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                await consumer.commit(dict(acked))
                committed, last_commit = dict(acked), time.monotonic()
    finally:
        await producer.stop()
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(main())
