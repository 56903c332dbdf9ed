"""Results and dead-letter headers the code builds validate against schemas/."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import orjson
import pytest
from jsonschema import Draft202012Validator

from app.errors import InvalidRecord, ModelError
from app.models.metadata import ModelMetadata
from app.models.runner import ModelOutput
from app.records.dead_letters import dead_letter_headers
from app.records.events import ERROR_CLASSES, SourceRef, parse_event
from app.records.results import build_result, encode_result

SOURCE = SourceRef("events", 3, 99)
CLASSIFIER = ModelMetadata("m", "7", "torch.export", "model.pt2", "classifier", 2, labels=("no", "yes"))
REGRESSOR = ModelMetadata("r", "2", "torch.export", "model.pt2", "regressor", 2)


def event_with(timestamp: object) -> object:
    document = {"event_id": "e", "user_id": "u", "features": [1.0, 2.0], "timestamp": timestamp}
    return parse_event(orjson.dumps(document), SOURCE, 1 << 16)


@pytest.mark.parametrize("timestamp", ["2026-11-21T10:00:00Z", 1795255200000])
def test_classifier_result_validates(timestamp: object, result_schema: Draft202012Validator) -> None:
    output = ModelOutput(0.8, "yes", {"no": 0.2, "yes": 0.8})
    result = build_result(event_with(timestamp), output, CLASSIFIER, 32, SOURCE, now_s=1795255200.25)  # type: ignore[arg-type]
    result_schema.validate(orjson.loads(encode_result(result)))
    assert result["latency_ms"] == 250.0
    assert result["timestamp"] == timestamp
    assert (result["model_name"], result["model_version"], result["batch_size"]) == ("m", "7", 32)
    assert (result["topic"], result["partition"], result["offset"]) == ("events", 3, 99)


def test_regressor_result_validates_without_label(result_schema: Draft202012Validator) -> None:
    result = build_result(event_with(0), ModelOutput(12.5), REGRESSOR, 1, SOURCE)  # type: ignore[arg-type]
    result_schema.validate(result)
    assert "label" not in result and "probabilities" not in result


def test_result_schema_rejects_unknown_fields(result_schema: Draft202012Validator) -> None:
    result = build_result(event_with(0), ModelOutput(1.0), REGRESSOR, 1, SOURCE)  # type: ignore[arg-type]
    assert not result_schema.is_valid({**result, "surprise": 1})
    assert not result_schema.is_valid({k: v for k, v in result.items() if k != "model_version"})


@pytest.mark.parametrize("error", [InvalidRecord("invalid_json", "bad"), ModelError("boom")])
def test_dead_letter_envelope_validates(error: InvalidRecord, dead_letter_schema: Draft202012Validator) -> None:
    original = [("trace-id", b"abc")]
    headers = dead_letter_headers(error, SOURCE, original, CLASSIFIER)
    assert headers[0] == ("trace-id", b"abc")  # the record's own headers come first, untouched
    envelope = {
        "key": base64.b64encode(b"k").decode(),
        "value": None,
        "headers": {name: value.decode() for name, value in headers},
    }
    dead_letter_schema.validate(envelope)
    assert envelope["headers"]["dlq.error.class"] == error.error_class
    assert envelope["headers"]["dlq.source.offset"] == "99"
    assert (envelope["headers"]["dlq.model.name"], envelope["headers"]["dlq.model.version"]) == ("m", "7")


def test_dead_letter_schema_lists_every_error_class(dead_letter_schema: Draft202012Validator) -> None:
    listed = dead_letter_schema.schema["properties"]["headers"]["properties"]["dlq.error.class"]["enum"]
    assert sorted(listed) == sorted(ERROR_CLASSES)


@pytest.mark.parametrize("now_s", [0.0, 1795255200.25, 1795255200.2509, 1795255200.9999, 1795255201.0004])
def test_predicted_at_is_the_moment_to_the_millisecond(now_s: float) -> None:
    first = build_result(event_with(0), ModelOutput(1.0), REGRESSOR, 1, SOURCE, now_s=now_s)  # type: ignore[arg-type]
    again = build_result(event_with(0), ModelOutput(1.0), REGRESSOR, 1, SOURCE, now_s=now_s + 1.0)  # type: ignore[arg-type]
    expected = datetime.fromtimestamp(now_s, UTC).isoformat(timespec="milliseconds")
    assert first["predicted_at"] == expected
    assert again["predicted_at"] == datetime.fromtimestamp(now_s + 1.0, UTC).isoformat(timespec="milliseconds")
