"""Naive Faust: the tutorial agent this product grew from.

One event at a time: decode, one model call, one awaited send per event, faust's auto-ack.
"""

from __future__ import annotations

import faust
from faust.worker import Worker

from app.records.events import SourceRef
from benchmarks.peers.common import AIOKAFKA_PRODUCER, COMMIT_INTERVAL_S, arguments, decode, load_runner, result_bytes

args = arguments(__doc__ or "")
runner = load_runner(args.model)
app = faust.App(
    args.group,
    broker=f"kafka://{args.bootstrap}",
    web_enabled=False,
    consumer_auto_offset_reset="earliest",
    datadir=f"/tmp/bench-{args.group}",
    key_serializer="raw",
    value_serializer="raw",
    # The shared producer settings, as faust names them (it has no idempotence switch outside exactly-once).
    producer_acks=-1,
    producer_linger_ms=AIOKAFKA_PRODUCER["linger_ms"],
    producer_max_batch_size=AIOKAFKA_PRODUCER["max_batch_size"],
    broker_commit_interval=COMMIT_INTERVAL_S,
)
source_topic = app.topic(args.input, key_serializer="raw", value_serializer="raw")
output_topic = app.topic(args.output, key_serializer="raw", value_serializer="raw")


@app.agent(source_topic)
async def predict(stream: faust.StreamT[bytes]) -> None:
    async for event in stream.events():
        message = event.message
        source = SourceRef(message.topic, message.partition, message.offset)
        parsed = decode(message.value, message.topic, message.partition, message.offset)
        output = runner.predict([parsed.input])[0]
        await output_topic.send(key=message.key, value=result_bytes(runner, parsed, output, 1, source))


if __name__ == "__main__":
    worker = Worker(app, loglevel="warning")
    worker.spinner = None
    worker.execute_from_commandline()
