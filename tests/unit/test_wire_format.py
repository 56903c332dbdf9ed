"""Registry formats without a registry: the Avro schemas generated from schemas/ agree with them, and
framed records encode and decode (writer schemas given by hand, as the registry would give them)."""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
import orjson
import pytest
from jsonschema import Draft202012Validator

from app.errors import InvalidRecord
from app.models.metadata import ModelMetadata
from app.models.runner import ModelOutput
from app.records.avro_schemas import avro_schema, avro_schema_of, json_schema
from app.records.events import ERROR_CLASSES, SourceRef, parse_event
from app.records.observations import Observation
from app.records.results import build_result
from app.records.wire_format import (
    FieldMapping,
    FramedEventDecoder,
    FramedResultDecoder,
    avro_encoder,
    frame,
    json_schema_encoder,
    schema_id_of,
    writer_schema,
)
from app.stats.windows import WindowAggregate, window_stats

SOURCE = SourceRef("events", 1, 5)
CLASSIFIER = ModelMetadata("m", "7", "torch.export", "model.pt2", "classifier", 2, labels=("no", "yes"))
ENSEMBLE = ModelMetadata(
    "e",
    "1",
    "ensemble",
    "",
    "classifier",
    2,
    labels=("no", "yes"),
    extra={"members": [{"name": "a", "version": "1", "weight": 1.0}]},
)
EVENT_V1 = {
    "type": "record",
    "name": "Event",
    "fields": [
        {"name": "user_id", "type": "string"},
        {"name": "features", "type": {"type": "array", "items": "double"}},
        {"name": "timestamp", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}
EVENT_V2 = {  # a compatible evolution: an optional field with a default, and an unrelated extra one
    **EVENT_V1,
    "fields": [
        *EVENT_V1["fields"],
        {"name": "event_id", "type": ["null", "string"], "default": None},
        {"name": "channel", "type": "string", "default": "web"},
    ],
}


def avro_bytes(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), record)
    return buffer.getvalue()


def read_avro(schema: dict[str, Any], value: bytes) -> Any:
    return fastavro.schemaless_reader(io.BytesIO(value[5:]), fastavro.parse_schema(schema), None)


def results() -> list[dict[str, Any]]:
    event = parse_event(
        orjson.dumps({"user_id": "u", "features": [1.0, 2.0], "timestamp": 1795255200000}), SOURCE, 1 << 16
    )
    text = parse_event(
        orjson.dumps({"user_id": "u", "text": "hi", "timestamp": "2026-11-21T10:00:00Z"}), SOURCE, 1 << 16
    )
    classified = build_result(event, ModelOutput(0.8, "yes", {"no": 0.2, "yes": 0.8}), CLASSIFIER, 3, SOURCE)
    shadow = {**build_result(event, ModelOutput(0.1), CLASSIFIER, 1, SOURCE, cache_hit=True), "shadow": True}
    embedder = ModelMetadata("t", "1", "sentence-transformers", "", "embedding", 0, input="text")
    embedded = build_result(text, ModelOutput(1.0, embedding=[0.6, 0.8]), embedder, 2, SOURCE)
    ensemble = build_result(event, ModelOutput(0.5, "yes", {"no": 0.5, "yes": 0.5}), ENSEMBLE, 4, SOURCE)
    return [classified, shadow, embedded, ensemble]


def without_nulls(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if value is not None}


@pytest.mark.parametrize("name", ["prediction_result", "window_stats"])
def test_avro_fields_are_the_json_schema_properties(name: str) -> None:
    schema = json_schema(name)
    converted = avro_schema_of(name)
    fastavro.parse_schema(converted)
    assert converted["name"] == schema["title"]
    assert [field["name"] for field in converted["fields"]] == list(schema["properties"])
    for field in converted["fields"]:
        optional = field["name"] not in schema["required"]
        nullable = isinstance(field["type"], list) and field["type"][0] == "null"
        assert not optional or (nullable and field["default"] is None), field


def test_types_convert() -> None:
    schema = {
        "title": "T",
        "type": "object",
        "required": ["s", "n", "i", "b", "c", "m", "a", "u", "r"],
        "$defs": {"maybe": {"type": ["number", "null"]}},
        "properties": {
            "s": {"type": "string"},
            "n": {"type": "number"},
            "i": {"type": "integer"},
            "b": {"type": "boolean"},
            "c": {"const": 1},
            "m": {"type": "object", "additionalProperties": {"type": "integer"}},
            "a": {"type": "array", "items": {"type": "string"}},
            "u": {"oneOf": [{"type": "string"}, {"type": "number"}]},
            "r": {"$ref": "#/$defs/maybe"},
            "o": {"type": "object", "properties": {"x": {"type": "string"}}},
        },
    }
    types = {field["name"]: field["type"] for field in avro_schema(schema)["fields"]}
    assert types == {
        "s": "string",
        "n": "double",
        "i": "long",
        "b": "boolean",
        "c": "long",
        "m": {"type": "map", "values": "long"},
        "a": {"type": "array", "items": "string"},
        "u": ["string", "double"],
        "r": ["null", "double"],
        "o": [
            "null",
            {"type": "record", "name": "O", "fields": [{"name": "x", "type": ["null", "string"], "default": None}]},
        ],
    }


def test_results_round_trip_through_avro(result_schema: Draft202012Validator) -> None:
    encode = avro_encoder(42, avro_schema_of("prediction_result"))
    for result in results():
        result_schema.validate(result)
        value = encode(result)
        assert schema_id_of(value) == 42
        decoded = read_avro(avro_schema_of("prediction_result"), value)
        assert without_nulls(decoded) == result
        result_schema.validate(without_nulls(decoded))


def test_window_stats_round_trip_through_avro(window_stats_schema: Draft202012Validator) -> None:
    window = WindowAggregate("m", "1", 0, 60_000)
    window.apply(
        Observation("m", "1", 1_000.0, "events:0", 0, prediction=0.4, label="yes", latency_ms=5.0, batch_size=2), []
    )
    for stats in (window_stats(window, None, 61_000), window_stats(WindowAggregate("m", "1", 0, 60_000), None, 61_000)):
        window_stats_schema.validate(stats)
        decoded = read_avro(avro_schema_of("window_stats"), avro_encoder(3, avro_schema_of("window_stats"))(stats))
        assert decoded == stats


def test_json_schema_framing_is_plain_json_after_the_header() -> None:
    value = json_schema_encoder(7)({"a": 1})
    assert value[:5] == b"\x00\x00\x00\x00\x07" and json.loads(value[5:]) == {"a": 1}


def decoder(schemas: dict[int, dict[str, Any] | None], mapping: dict[str, str] | None = None) -> FramedEventDecoder:
    decoding = FramedEventDecoder("avro", FieldMapping(mapping), 1 << 16)
    for schema_id, schema in schemas.items():
        decoding.add_schema(schema_id, None if schema is None else writer_schema("AVRO", json.dumps(schema)))
    return decoding


def error_class(decoding: FramedEventDecoder, value: bytes) -> str:
    with pytest.raises(InvalidRecord) as caught:
        decoding.decode(value, SOURCE)
    assert caught.value.error_class in ERROR_CLASSES
    return caught.value.error_class


def test_decodes_two_compatible_writer_versions() -> None:
    decoding = decoder({1: EVENT_V1, 2: EVENT_V2})
    v1 = frame(1, avro_bytes(EVENT_V1, {"user_id": "u1", "features": [1.0, 2.0], "timestamp": 1795255200000}))
    v2 = frame(
        2, avro_bytes(EVENT_V2, {"user_id": "u2", "features": [3.0], "timestamp": 1795255200001, "event_id": "e2"})
    )
    first, second = decoding.decode(v1, SOURCE), decoding.decode(v2, SOURCE)
    assert (first.user_id, first.features, first.event_id, first.timestamp) == (
        "u1",
        [1.0, 2.0],
        "events-1-5",
        1795255200000,
    )
    assert (second.user_id, second.features, second.event_id, second.event_time_ms) == (
        "u2",
        [3.0],
        "e2",
        1795255200001,
    )


def test_unknown_ids_are_those_not_given() -> None:
    decoding = decoder({1: EVENT_V1, 9: None})
    assert decoding.unknown_ids([frame(1, b""), frame(9, b""), frame(3, b"x"), b"{}", None]) == {3}
    assert error_class(decoding, frame(9, b"\x02u")) == "unknown_schema"


def test_corrupt_or_unframed_records_are_schema_mismatches() -> None:
    decoding = decoder({1: EVENT_V1})
    good = frame(1, avro_bytes(EVENT_V1, {"user_id": "u", "features": [1.0], "timestamp": 1}))
    assert error_class(decoding, good[:-3]) == "schema_mismatch"  # truncated
    assert error_class(decoding, good + b"\x00") == "schema_mismatch"  # bytes left over
    assert error_class(decoding, frame(1, b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")) == "schema_mismatch"
    assert error_class(decoding, b'{"user_id": "u"}') == "schema_mismatch"  # plain JSON, no frame
    assert error_class(decoding, b"\x00\x00") == "schema_mismatch"  # shorter than a header
    assert error_class(decoding, b"") == "empty_value"


def test_a_writer_schema_without_a_needed_field_is_a_mismatch() -> None:
    other = {"type": "record", "name": "Click", "fields": [{"name": "page", "type": "string"}]}
    decoding = decoder({4: other})
    assert error_class(decoding, frame(4, avro_bytes(other, {"page": "/"}))) == "schema_mismatch"


def test_a_json_schema_writer_is_a_mismatch_for_avro_input() -> None:
    decoding = decoder({})
    decoding.add_schema(5, writer_schema("JSON", "{}"))
    assert error_class(decoding, frame(5, b"{}")) == "schema_mismatch"


def test_field_mapping_reads_nested_fields_of_a_users_schema() -> None:
    own = {
        "type": "record",
        "name": "Scored",
        "fields": [
            {
                "name": "customer",
                "type": {"type": "record", "name": "Customer", "fields": [{"name": "id", "type": "string"}]},
            },
            {"name": "vector", "type": {"type": "array", "items": "float"}},
            {"name": "at", "type": "string"},
        ],
    }
    decoding = decoder({6: own}, {"user_id": "customer.id", "features": "vector", "timestamp": "at"})
    record = {"customer": {"id": "c-9"}, "vector": [0.5, 1.5], "at": "2026-11-21T10:00:00Z"}
    event = decoding.decode(frame(6, avro_bytes(own, record)), SOURCE)
    assert (event.user_id, event.features, event.timestamp) == ("c-9", [0.5, 1.5], "2026-11-21T10:00:00Z")


def test_contract_violations_keep_their_classes() -> None:
    decoding = decoder({1: EVENT_V1})
    empty_user = frame(1, avro_bytes(EVENT_V1, {"user_id": "", "features": [1.0], "timestamp": 1}))
    assert error_class(decoding, empty_user) == "schema_violation"


def test_json_schema_input_decodes_framed_json() -> None:
    decoding = FramedEventDecoder("jsonschema", FieldMapping(), 1 << 16)
    decoding.add_schema(8, writer_schema("JSON", "{}"))
    event = decoding.decode(frame(8, orjson.dumps({"user_id": "u", "features": [1.0], "timestamp": 3})), SOURCE)
    assert (event.user_id, event.features) == ("u", [1.0])
    assert error_class_json(decoding, frame(8, b"{not json")) == "schema_mismatch"


def error_class_json(decoding: FramedEventDecoder, value: bytes) -> str:
    with pytest.raises(InvalidRecord) as caught:
        decoding.decode(value, SOURCE)
    return caught.value.error_class


def test_events_written_with_the_generated_event_schema_decode() -> None:
    """What ``produce`` writes with INPUT_FORMAT=avro (schemas/prediction_event.schema.json as Avro)."""
    schema = avro_schema_of("prediction_event")
    decoding = decoder({11: schema})
    encode = avro_encoder(11, schema)
    features = {"event_id": "e-1", "user_id": "u", "features": [1.0, 2.5], "timestamp": "2026-11-21T10:00:00Z"}
    text = {"user_id": "u", "text": "hello", "timestamp": 1795255200000, "model": "minilm"}
    first, second = decoding.decode(encode(features), SOURCE), decoding.decode(encode(text), SOURCE)
    assert (first.event_id, first.features, first.text, first.timestamp) == (
        "e-1",
        [1.0, 2.5],
        None,
        features["timestamp"],
    )
    assert (second.event_id, second.text, second.model, second.event_time_ms) == (
        "events-1-5",
        "hello",
        "minilm",
        1795255200000,
    )


def test_results_read_back_by_the_tools() -> None:
    schema = avro_schema_of("prediction_result")
    result = results()[0]
    reader = FramedResultDecoder({42: writer_schema("AVRO", json.dumps(schema)), 43: writer_schema("JSON", "{}")})
    assert reader.decode(avro_encoder(42, schema)(result)) == result
    assert reader.decode(json_schema_encoder(43)(result)) == result
    with pytest.raises(ValueError, match="schema id 44"):
        reader.decode(frame(44, b""))
