"""Naive Faust: the tutorial agent this product grew from.

One event at a time: decode, one model call, one awaited send per event, faust's auto-ack.
"""

from __future__ import annotations

import faust
from faust.worker import Worker

from app.records.events import SourceRef
from benchmarks.peers.common import arguments, decode, load_runner, result_bytes
from benchmarks.peers.faust_app import faust_app

args = arguments(__doc__ or "")
runner = load_runner(args.model)
app, source_topic, output_topic = faust_app(args)


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
