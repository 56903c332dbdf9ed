"""PredictionResult records (schemas/prediction_result.schema.json) and their encoding."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson

from app.models.metadata import ModelMetadata
from app.models.runner import ModelOutput
from app.records.events import PredictionEvent, SourceRef

SCHEMA_VERSION = 1


def build_result(
    event: PredictionEvent,
    output: ModelOutput,
    model: ModelMetadata,
    batch_size: int,
    source: SourceRef,
    cache_hit: bool = False,
    now_s: float | None = None,
) -> dict[str, Any]:
    """The result for one event; ``latency_ms`` runs from the event time to this moment of publishing."""
    now_s = time.time() if now_s is None else now_s
    result: dict[str, Any] = {
        "event_id": event.event_id,
        "user_id": event.user_id,
        "prediction": output.prediction,
        "model_name": model.name,
        "model_version": model.version,
        "schema_version": SCHEMA_VERSION,
        "timestamp": event.timestamp,
        "predicted_at": iso_milliseconds(now_s),
        "latency_ms": round(now_s * 1000.0 - event.event_time_ms, 3),
        "batch_size": batch_size,
        "cache_hit": cache_hit,
        "topic": source.topic,
        "partition": source.partition,
        "offset": source.offset,
    }
    members = model.extra.get("members") if model.format == "ensemble" else None
    if members is not None:
        result["members"] = members
    if output.label is not None:
        result["label"] = output.label
        result["probabilities"] = output.probabilities
    if output.embedding is not None:
        result["embedding"] = output.embedding
        result["dimension"] = len(output.embedding)
    return result


_last_iso: tuple[int, str] = (-1, "")


def iso_milliseconds(now_s: float) -> str:
    """``now_s`` as ISO-8601 UTC to the millisecond; the last one is kept, since the results of a batch
    are built within the same millisecond or two (formatting is a third of building a result)."""
    global _last_iso
    millis = round(now_s * 1_000_000) // 1000  # as datetime rounds: to the microsecond
    if _last_iso[0] != millis:
        moment = datetime.fromtimestamp(millis // 1000, UTC).replace(microsecond=millis % 1000 * 1000)
        _last_iso = (millis, moment.isoformat(timespec="milliseconds"))
    return _last_iso[1]


def encode_result(result: dict[str, Any]) -> bytes:
    return orjson.dumps(result)
