"""The bare aiokafka ceiling: getmany, one batched forward, produce, await deliveries, commit."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.records.events import SourceRef
from benchmarks.peers.common import MAX_BATCH_SIZE, arguments, decode, load_runner, result_bytes


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
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, linger_ms=5, acks="all")
    await consumer.start()
    await producer.start()
    try:
        while True:
            fetched = await consumer.getmany(timeout_ms=100, max_records=2000)
            records = [record for batch in fetched.values() for record in batch]
            if not records:
                continue
            deliveries = []
            for start in range(0, len(records), MAX_BATCH_SIZE):
                chunk = records[start : start + MAX_BATCH_SIZE]
                events = [decode(r.value, r.topic, r.partition, r.offset) for r in chunk]
                outputs = runner.predict([event.input for event in events])
                for record, event, output in zip(chunk, events, outputs, strict=True):
                    source = SourceRef(record.topic, record.partition, record.offset)
                    value = result_bytes(runner, event, output, len(chunk), source)
                    deliveries.append(await producer.send(args.output, value, key=record.key))
            await asyncio.gather(*deliveries)
            await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(main())
