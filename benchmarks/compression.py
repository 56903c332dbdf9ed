"""What KAFKA_COMPRESSION_TYPE costs: the worker's events/s over one backlog per codec, and how
small a batch of its outputs gets with that codec.

Each codec is run ``--rounds`` times in interleaved order (none, gzip, lz4, zstd, none, ...), so
load from other processes spreads over all of them; the table gives the median and the ratio to
``none`` from the same run. The size ratio compresses batches of 500 PredictionResult values read
back from the ``none`` run's output topic with the codec's library (cramjam, as aiokafka does): the
records part of a Kafka batch, which is what the codec compresses on the wire.

    python -m benchmarks.compression [--events 30000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import cramjam
from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.bench import PARTITIONS, Bench

CODECS = ("none", "gzip", "lz4", "zstd")
BATCH = 500


def compressed_size(codec: str, payload: bytes) -> int:
    if codec == "none":
        return len(payload)
    compress = {"gzip": cramjam.gzip.compress, "lz4": cramjam.lz4.compress, "zstd": cramjam.zstd.compress}[codec]
    return len(compress(payload))


async def output_values(bootstrap: str, topic: str, limit: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    values: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, 0)])
        while len(values) < limit and (batches := await consumer.getmany(timeout_ms=2000, max_records=5000)):
            values += [record.value for records in batches.values() for record in records if record.value]
    finally:
        await consumer.stop()
    return values[:limit]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    bench = Bench(args.bootstrap, Path(tempfile.mkdtemp(prefix="bench-compression-")))
    backlog = bench.topic("backlog")
    await bench.create(backlog)
    await bench.produce(backlog, args.events)
    rates: dict[str, list[float]] = {codec: [] for codec in CODECS}
    outputs = ""
    for _ in range(args.rounds):
        for codec in CODECS:
            run = await bench.throughput("inference-worker", backlog, args.events, KAFKA_COMPRESSION_TYPE=codec)
            assert run.unique == args.events, f"{codec}: {run.unique} of {args.events} events predicted"
            rates[codec].append(run.events_per_s)
            outputs = outputs or run.output
    sample = await output_values(args.bootstrap, outputs, 20 * BATCH)
    batches = [b"".join(sample[i : i + BATCH]) for i in range(0, len(sample), BATCH)]
    report: dict[str, Any] = {"events": args.events, "partitions": PARTITIONS, "rounds": args.rounds, "codecs": {}}
    baseline = statistics.median(rates["none"])
    raw = sum(len(batch) for batch in batches)
    for codec in CODECS:
        median = statistics.median(rates[codec])
        size = sum(compressed_size(codec, batch) for batch in batches) / raw
        report["codecs"][codec] = {"events_per_s": rates[codec], "median": median, "ratio": median / baseline}
        report["codecs"][codec]["size_ratio"] = size
    return report


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['events']} events, {report['partitions']} partitions, median of {report['rounds']} interleaved runs",
        "| codec | events/s (median) | vs none | runs | output size vs none |",
        "|---|---|---|---|---|",
    ]
    for codec, row in report["codecs"].items():
        runs = ", ".join(f"{rate:,.0f}" for rate in row["events_per_s"])
        lines.append(f"| {codec} | {row['median']:,.0f} | {row['ratio']:.2f}x | {runs} | {row['size_ratio']:.0%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--events", type=int, default=30000)
    parser.add_argument("--rounds", type=int, default=3)
    print(table(asyncio.run(main(parser.parse_args()))))
