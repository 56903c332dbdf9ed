"""Quix Streams, its idiomatic way: a StreamingDataFrame with a per-row apply and to_topic."""

from __future__ import annotations

from typing import Any

from quixstreams import message_context

from app.records.events import SourceRef
from benchmarks.peers.common import arguments, decode, load_runner, result_dict
from benchmarks.peers.quix_app import quix_application

args = arguments(__doc__ or "")
runner = load_runner(args.model)
app = quix_application(args)
source_topic = app.topic(args.input, value_deserializer="bytes", key_deserializer="bytes")
output_topic = app.topic(args.output, value_serializer="json", key_serializer="bytes")


def predict(value: bytes) -> dict[str, Any]:
    context = message_context()
    event = decode(value, context.topic, context.partition, context.offset)
    output = runner.predict([event.input])[0]
    return result_dict(runner, event, output, SourceRef(context.topic, context.partition, context.offset))


sdf = app.dataframe(source_topic)
sdf = sdf.apply(predict)
sdf.to_topic(output_topic)

if __name__ == "__main__":
    app.run()
