"""What every peer shares: arguments, the model, and building one result."""

from __future__ import annotations

import argparse
from typing import Any

import orjson
import torch

from app.models.registry import ModelRegistry
from app.models.runner import ModelOutput, ModelRunner
from app.records.events import PredictionEvent, SourceRef, parse_event
from app.records.results import build_result, encode_result
from app.settings import REPO_ROOT

MAX_BATCH_SIZE = 256


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--model", default="breast-cancer", help="breast-cancer (features) or minilm (text)")
    return parser.parse_args()


def load_runner(name: str = "breast-cancer") -> ModelRunner:
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


def result_dict(runner: ModelRunner, event: PredictionEvent, output: ModelOutput, source: SourceRef) -> dict[str, Any]:
    return build_result(event, output, runner.metadata, 1, source)


def loads(value: bytes) -> Any:
    return orjson.loads(value)
