"""Decoding and validating events; the code and schemas/prediction_event.schema.json agree."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from app.errors import InvalidRecord
from app.records.events import ERROR_CLASSES, ISO_8601_PATTERN, MAX_TEXT_CHARS, SourceRef, parse_event

SOURCE = SourceRef("events", 2, 41)
LIMIT = 4096
VALID: dict[str, Any] = {"event_id": "e-1", "user_id": "u-1", "features": [1, 2.5, -3e-2], "timestamp": 1700000000000}
TEXT: dict[str, Any] = {**{k: v for k, v in VALID.items() if k != "features"}, "text": "a sentence to embed"}
LONG_LIMIT = 1 << 16  # room for texts at the length limit


def error_class_of(value: bytes | None) -> str:
    with pytest.raises(InvalidRecord) as caught:
        parse_event(value, SOURCE, LIMIT)
    assert caught.value.error_class in ERROR_CLASSES
    assert caught.value.reason
    return caught.value.error_class


def test_parses_a_valid_event() -> None:
    event = parse_event(orjson.dumps(VALID), SOURCE, LIMIT)
    assert (event.event_id, event.user_id, event.features) == ("e-1", "u-1", [1, 2.5, -3e-2])
    assert event.event_time_ms == 1700000000000.0
    assert event.model is None


def test_derives_a_stable_event_id_from_the_source_when_absent() -> None:
    document = {k: v for k, v in VALID.items() if k != "event_id"}
    assert parse_event(orjson.dumps(document), SOURCE, LIMIT).event_id == "events-2-41"


@pytest.mark.parametrize(
    ("timestamp", "expected_ms"),
    [
        ("2026-11-21T10:00:00Z", 1795255200000.0),
        ("2026-11-21T10:00:00", 1795255200000.0),
        ("2026-11-21T11:00:00+01:00", 1795255200000.0),
        (1795255200000, 1795255200000.0),
        (1795255200000.5, 1795255200000.5),
    ],
)
def test_accepts_iso_8601_and_epoch_milliseconds(timestamp: Any, expected_ms: float) -> None:
    event = parse_event(orjson.dumps({**VALID, "timestamp": timestamp}), SOURCE, LIMIT)
    assert event.event_time_ms == expected_ms
    assert event.timestamp == timestamp


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "empty_value"),
        (b"", "empty_value"),
        (b"{" + b" " * LIMIT + b"}", "oversized"),
        (b"\xff\xfe{}", "not_utf8"),
        (b'{"user_id": "u"', "invalid_json"),
        (b"[1, 2, 3]", "schema_violation"),
        (b'{"user_id": "u", "features": [NaN], "timestamp": 1}', "non_finite"),
        (b'{"user_id": "u", "features": [Infinity], "timestamp": 1}', "non_finite"),
        (b'{"user_id": "u", "features": [1e999], "timestamp": 1}', "non_finite"),
    ],
)
def test_classifies_undecodable_values(value: bytes | None, expected: str) -> None:
    assert error_class_of(value) == expected


# Documents the schema and the code must judge alike (feature count is checked against the model later).
CASES: list[dict[str, Any]] = [
    VALID,
    {**VALID, "model": "breast-cancer"},
    {**VALID, "model": None},
    {**VALID, "extra": {"anything": True}},
    {**VALID, "timestamp": "2026-11-21T10:00:00.123+00:00"},
    {k: v for k, v in VALID.items() if k != "event_id"},
    {k: v for k, v in VALID.items() if k != "user_id"},
    {k: v for k, v in VALID.items() if k != "features"},
    {k: v for k, v in VALID.items() if k != "timestamp"},
    {**VALID, "user_id": ""},
    {**VALID, "user_id": 12},
    {**VALID, "event_id": ""},
    {**VALID, "event_id": 5},
    {**VALID, "features": []},
    {**VALID, "features": "1,2,3"},
    {**VALID, "features": [1, "2", 3]},
    {**VALID, "features": [1, True, 3]},
    {**VALID, "features": [1, None]},
    {**VALID, "timestamp": -5},
    {**VALID, "timestamp": True},
    {**VALID, "timestamp": None},
    {**VALID, "timestamp": "yesterday"},
    {**VALID, "timestamp": "2026-W47-6"},
    {**VALID, "timestamp": "2026-11-21"},
    {**VALID, "model": ""},
    {**VALID, "model": 3},
    TEXT,
    {**TEXT, "model": "minilm"},
    {**TEXT, "text": "é" * MAX_TEXT_CHARS},
    {**TEXT, "text": "é" * (MAX_TEXT_CHARS + 1)},
    {**TEXT, "text": ""},
    {**TEXT, "text": None},
    {**TEXT, "text": ["a", "b"]},
    {**TEXT, "features": [1.0]},
    {**TEXT, "features": None},
    {**VALID, "text": None},
    {**VALID, "features": {"mean radius": 14.1, "mean texture": 19}},
    {**VALID, "features": {}},
    {**VALID, "features": {"mean radius": "14.1"}},
    {**VALID, "features": {"mean radius": True}},
    {**VALID, "features": {"mean radius": None}},
]


def test_named_features_are_kept_by_name_until_the_model_orders_them() -> None:
    event = parse_event(orjson.dumps({**VALID, "features": {"b": 2, "a": 1.5}}), SOURCE, LIMIT)
    assert (event.features, event.named_features) == ([], {"b": 2, "a": 1.5})
    assert event.with_features([1.5, 2]).features == [1.5, 2]


def test_parses_a_text_event() -> None:
    event = parse_event(orjson.dumps(TEXT), SOURCE, LIMIT)
    assert (event.text, event.features, event.input) == ("a sentence to embed", [], "a sentence to embed")
    features_event = parse_event(orjson.dumps(VALID), SOURCE, LIMIT)
    assert (features_event.text, features_event.input) == (None, [1, 2.5, -3e-2])


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({**TEXT, "features": [1.0]}, "both given"),
        ({k: v for k, v in TEXT.items() if k != "text"}, "'features' (or 'text') is missing"),
        ({**TEXT, "text": "x" * (MAX_TEXT_CHARS + 1)}, f"the limit is {MAX_TEXT_CHARS}"),
    ],
)
def test_exactly_one_of_features_and_text_within_the_limit(document: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidRecord, match=reason.replace("(", r"\(").replace(")", r"\)")) as caught:
        parse_event(orjson.dumps(document), SOURCE, LONG_LIMIT)
    assert caught.value.error_class == "schema_violation"


def test_the_schema_uses_the_codes_text_limit(event_schema: Draft202012Validator) -> None:
    assert event_schema.schema["properties"]["text"]["maxLength"] == MAX_TEXT_CHARS


def test_the_schema_uses_the_codes_timestamp_pattern(event_schema: Draft202012Validator) -> None:
    string_form = event_schema.schema["properties"]["timestamp"]["oneOf"][0]
    assert string_form["pattern"] == ISO_8601_PATTERN


@pytest.mark.parametrize("document", CASES, ids=lambda d: json.dumps(d)[-60:])
def test_code_and_schema_agree(document: dict[str, Any], event_schema: Draft202012Validator) -> None:
    schema_accepts = event_schema.is_valid(document)
    try:
        parse_event(orjson.dumps(document), SOURCE, LONG_LIMIT)
        code_accepts = True
    except InvalidRecord as exc:
        assert exc.error_class == "schema_violation"
        code_accepts = False
    assert code_accepts == schema_accepts
