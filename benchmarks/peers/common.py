"""What every peer shares: arguments, the model, building one result, and the Kafka settings every
system gets alike (the worker's own: acks=all, linger 5 ms, 1 MiB batches, no compression, idempotent
producer, offsets committed about once a second)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import orjson
import torch

from app.models.registry import ModelRegistry
from app.models.runner import ModelOutput, ModelRunner
from app.records.events import PredictionEvent, SourceRef, parse_event
from app.records.results import build_result, encode_result
from app.settings import REPO_ROOT

MAX_BATCH_SIZE = 256
MAX_WAIT_S = 0.010
"""The worker's MAX_WAIT_MS: the longest a loop may wait for more records before it predicts."""
COMMIT_INTERVAL_S = 1.0
"""The worker's faust broker_commit_interval."""
AIOKAFKA_PRODUCER: dict[str, Any] = {
    "acks": "all",
    "linger_ms": 5,
    "max_batch_size": 1 << 20,
    "compression_type": None,
    "enable_idempotence": True,
}
"""The worker's output producer settings (app.kafka.producer), for every aiokafka-based system."""
LIBRDKAFKA_PRODUCER: dict[str, Any] = {
    "acks": "all",
    "linger.ms": 5,
    "batch.size": 1 << 20,
    "compression.type": "none",
    "enable.idempotence": True,
}
"""The same settings for the librdkafka-based systems (confluent-kafka, Quix Streams)."""
NOOP_MODEL_ENV = "BENCH_NOOP_MODEL"
"""Set to 1: every system answers with the model's output for a fixed input and runs no forward."""


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--model", default="breast-cancer", help="breast-cancer (features) or minilm (text)")
    return parser.parse_args()


def noop_model() -> None:
    """Replace ``ModelRunner.predict`` in this process by one that runs no forward: each model's output
    for its first input is computed once and returned for every row, so results have the same fields
    and size and only the model's cost is gone (framework cost against model cost)."""
    forward = ModelRunner.predict
    answers: dict[Any, ModelOutput] = {}

    def predict(self: ModelRunner, rows: Sequence[Any]) -> list[ModelOutput]:
        answer = answers.get(self.key)
        if answer is None:
            answer = answers[self.key] = forward(self, rows[:1])[0]
        return [answer] * len(rows)

    ModelRunner.predict = predict  # type: ignore[method-assign]


def load_runner(name: str = "breast-cancer") -> ModelRunner:
    if os.environ.get(NOOP_MODEL_ENV) == "1":
        noop_model()
    torch.set_num_threads(1)
    runner = ModelRunner.load(ModelRegistry(REPO_ROOT / "models"), name, "latest", torch.device("cpu"))
    runner.warm_up(MAX_BATCH_SIZE)  # as the worker does before it takes traffic
    return runner


def decode(value: bytes, topic: str, partition: int, offset: int) -> PredictionEvent:
    return parse_event(value, SourceRef(topic, partition, offset), 1 << 20)


def result_bytes(
    runner: ModelRunner, event: PredictionEvent, output: ModelOutput, batch_size: int, source: SourceRef
) -> bytes:
    return encode_result(build_result(event, output, runner.metadata, batch_size, source))


def librdkafka_turn(consumer: Any, producer: Any, runner: ModelRunner, topic: str, delivered: Any) -> list[Any]:
    """One turn of the librdkafka loops (confluent-kafka's or Quix Streams' clients): wait up to 100 ms for
    one record, take what else is buffered without waiting (up to 2,000 in all), one batched forward per
    MAX_BATCH_SIZE records, produce each result to ``topic`` (``delivered``: the delivery callback).
    Returns the records taken."""
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
            producer.produce(topic, value, message.key(), on_delivery=delivered)
        producer.poll(0)
    return records


def result_dict(runner: ModelRunner, event: PredictionEvent, output: ModelOutput, source: SourceRef) -> dict[str, Any]:
    return build_result(event, output, runner.metadata, 1, source)


def loads(value: bytes) -> Any:
    return orjson.loads(value)
