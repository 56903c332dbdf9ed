"""Faust as its docs recommend for batch work: ``stream.take_events(256, within=10 ms)`` buffers up to
256 events (or 10 ms, the worker's MAX_WAIT_MS), one batched forward, then one send per result
(faust acks each event once the agent has processed it, not once its result is delivered)."""

from __future__ import annotations

from typing import Any

import faust
from faust.worker import Worker

from app.records.events import SourceRef
from benchmarks.peers.common import MAX_BATCH_SIZE, MAX_WAIT_S, arguments, decode, load_runner, result_bytes
from benchmarks.peers.faust_app import faust_app

args = arguments(__doc__ or "")
runner = load_runner(args.model)
app, source_topic, output_topic = faust_app(args)


@app.agent(source_topic)
async def predict(stream: faust.StreamT[bytes]) -> None:
    batches: Any = stream  # faust's StreamT stub lacks take_events, which faust.Stream has
    async for events in batches.take_events(MAX_BATCH_SIZE, within=MAX_WAIT_S):
        messages = [event.message for event in events]
        parsed = [decode(m.value, m.topic, m.partition, m.offset) for m in messages]
        outputs = runner.predict([event.input for event in parsed])
        for message, event, output in zip(messages, parsed, outputs, strict=True):
            source = SourceRef(message.topic, message.partition, message.offset)
            await output_topic.send(key=message.key, value=result_bytes(runner, event, output, len(messages), source))


if __name__ == "__main__":
    worker = Worker(app, loglevel="warning")
    worker.spinner = None
    worker.execute_from_commandline()
