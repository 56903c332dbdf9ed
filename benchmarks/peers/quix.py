"""Quix Streams, its idiomatic way: a StreamingDataFrame with a per-row apply and to_topic."""

from __future__ import annotations

from typing import Any

from quixstreams import Application, message_context

from app.records.events import SourceRef
from benchmarks.peers.common import COMMIT_INTERVAL_S, LIBRDKAFKA_PRODUCER, arguments, decode, load_runner, result_dict

args = arguments(__doc__ or "")
runner = load_runner(args.model)
app = Application(
    broker_address=args.bootstrap,
    consumer_group=args.group,
    auto_offset_reset="earliest",
    loglevel="WARNING",
    use_changelog_topics=False,
    commit_interval=COMMIT_INTERVAL_S,
    producer_extra_config=LIBRDKAFKA_PRODUCER,
)
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
