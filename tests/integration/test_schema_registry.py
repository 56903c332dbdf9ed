"""Avro in and out through a real Schema Registry (Apicurio, Confluent's API) and the real broker.

A producer the project did not write (confluent-kafka's AvroSerializer) sends events with two
compatible versions of its schema, plus a record naming a schema id the registry does not have,
a corrupt frame and an unframed JSON record. A worker with INPUT_FORMAT=avro and OUTPUT_FORMAT=avro
predicts every good event exactly once and dead-letters every bad one with its class, bytes
untouched; a consumer with confluent-kafka's AvroDeserializer reads the predictions (and a
WindowStats record) back, with the schemas registered under the topics' subjects. A second test
does the same, smaller, with JSON Schema (JSONSerializer in, JSONDeserializer out).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from app.records.avro_schemas import avro_schema_of, json_schema_text
from app.records.dead_letters import HEADER_ERROR_CLASS
from app.records.wire_format import frame
from tests.integration.conftest import Names, create_topics, running_worker, worker_env
from tests.integration.streams import Output, read_outputs

FEATURES = 30
EVENTS_PER_VERSION = 150
EVENT_V1 = {
    "type": "record",
    "name": "ScoringEvent",
    "namespace": "com.example",
    "fields": [
        {"name": "user_id", "type": "string"},
        {"name": "features", "type": {"type": "array", "items": "double"}},
        {"name": "timestamp", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}
EVENT_V2 = {  # BACKWARD compatible with v1: new fields with defaults
    **EVENT_V1,
    "fields": [
        *EVENT_V1["fields"],
        {"name": "event_id", "type": ["null", "string"], "default": None},
        {"name": "channel", "type": "string", "default": "web"},
    ],
}
UNKNOWN_SCHEMA_ID = 987_654_321


def event(index: int, version: int) -> dict[str, Any]:
    document: dict[str, Any] = {
        "user_id": f"u-{index % 20}",
        "features": [float((index + i) % 17) for i in range(FEATURES)],
        "timestamp": int(time.time() * 1000),
    }
    if version == 2:
        document.update(event_id=f"v2-{index}", channel="app")
    return document


def produce_avro(
    bootstrap: str, registry: SchemaRegistryClient, topic: str
) -> tuple[set[str], dict[bytes, tuple[str, bytes]]]:
    """Send the good events (v1, then v2) and the bad records.

    Returns the event ids expected (v1 has no event_id: the worker's <topic>-<partition>-<offset>), and
    the bad records: key -> (error class, value)."""
    producer = Producer({"bootstrap.servers": bootstrap})
    context = SerializationContext(topic, MessageField.VALUE)
    delivered: list[tuple[int, int]] = []
    errors: list[Any] = []

    def on_delivery(error: Any, message: Any) -> None:
        if error is not None:
            errors.append(error)
        else:
            delivered.append((message.partition(), message.offset()))

    expected: set[str] = set()
    for version, schema in ((1, EVENT_V1), (2, EVENT_V2)):
        serialize = AvroSerializer(registry, json.dumps(schema))
        for index in range(EVENTS_PER_VERSION):
            document = event(index, version)
            producer.produce(
                topic, key=document["user_id"].encode(), value=serialize(document, context), on_delivery=on_delivery
            )
            if version == 2:
                expected.add(document["event_id"])
        assert producer.flush(60) == 0
    assert not errors, errors
    for partition, offset in delivered[:EVENTS_PER_VERSION]:
        expected.add(f"{topic}-{partition}-{offset}")

    serialize_v1 = AvroSerializer(registry, json.dumps(EVENT_V1))
    good = serialize_v1(event(0, 1), context)
    assert good is not None
    bad = {
        b"bad-unknown-schema": ("unknown_schema", frame(UNKNOWN_SCHEMA_ID, good[5:])),
        b"bad-truncated": ("schema_mismatch", good[:-7]),
        b"bad-unframed-json": ("schema_mismatch", json.dumps(event(1, 1)).encode()),
    }
    for key, (_, value) in bad.items():
        producer.produce(topic, key=key, value=value)
    assert producer.flush(60) == 0
    return expected, bad


def read_predictions(
    bootstrap: str,
    registry: SchemaRegistryClient,
    topic: str,
    expected: int,
    timeout_s: float = 120.0,
    deserialize: Callable[[bytes, SerializationContext], Any] | None = None,
) -> list[dict[str, Any]]:
    """Every record of ``topic`` from the start, decoded with AvroDeserializer, until ``expected`` came
    and 3 s passed without more (so a duplicate would be seen). ``deserialize``: AvroDeserializer by default."""
    deserialize = deserialize or AvroDeserializer(registry)
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if len(results) >= expected and time.monotonic() - quiet_since >= 3.0:
                break
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            results.append(deserialize(message.value(), SerializationContext(topic, MessageField.VALUE)))
            quiet_since = time.monotonic()
    finally:
        consumer.close()
    return results


def test_avro_events_in_avro_predictions_out(
    bootstrap_servers: str, schema_registry_url: str, names: Names, tmp_path: Path
) -> None:
    registry = SchemaRegistryClient({"url": schema_registry_url})
    create_topics(bootstrap_servers, names)
    expected, bad = produce_avro(bootstrap_servers, registry, names.input_topic)
    env = worker_env(
        bootstrap_servers,
        names,
        tmp_path,
        INPUT_FORMAT="avro",
        OUTPUT_FORMAT="avro",
        SCHEMA_REGISTRY_URL=schema_registry_url,
        STATS_WINDOW_S="2",
        STATS_LATENESS_S="0",
        STATS_IDLE_GRACE_S="2",
    )
    with running_worker(env, tmp_path / "worker.log"):
        results = read_predictions(bootstrap_servers, registry, names.output_topic, len(expected))
        dead_letters = asyncio.run(
            read_outputs(bootstrap_servers, (names.dead_letter_topic,), lambda seen: len(seen) >= len(bad), 60.0, 1.0)
        )
        stats = read_predictions(bootstrap_servers, registry, names.stats_topic, 1, timeout_s=60.0)

    counts = Counter(result["event_id"] for result in results)
    assert set(counts) == expected, (
        f"missing {sorted(expected - set(counts))[:5]}, extra {sorted(set(counts) - expected)[:5]}"
    )
    assert max(counts.values()) == 1, [ident for ident, n in counts.items() if n > 1][:5]
    assert all(
        result["model_name"] == "breast-cancer" and result["label"] in ("benign", "malignant") for result in results
    )
    assert all(result["topic"] == names.input_topic and result["schema_version"] == 1 for result in results)

    by_key: dict[bytes | None, Output] = {output.key: output for output in dead_letters}
    assert len(dead_letters) == len(bad) and set(by_key) == set(bad)
    for key, (error_class, value) in bad.items():
        assert by_key[key].value == value, key  # untouched
        assert dict(by_key[key].headers)[HEADER_ERROR_CLASS] == error_class.encode(), key

    # The registered schemas are the ones generated from schemas/, under TopicNameStrategy subjects.
    for topic, name in ((names.output_topic, "prediction_result"), (names.stats_topic, "window_stats")):
        registered = registry.get_latest_version(f"{topic}-value").schema
        assert registered.schema_type in (None, "AVRO")
        assert fastavro.parse_schema(json.loads(registered.schema_str)) == fastavro.parse_schema(avro_schema_of(name))
    assert stats, "no WindowStats record read back"
    assert sum(record["count"] for record in stats) >= 1
    assert all(record["model_name"] == "breast-cancer" for record in stats)


EVENT_JSON_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "ScoringEvent",
    "type": "object",
    "required": ["event_id", "user_id", "features", "timestamp"],
    "properties": {
        "event_id": {"type": "string"},
        "user_id": {"type": "string"},
        "features": {"type": "array", "items": {"type": "number"}},
        "timestamp": {"type": "integer"},
    },
}


def test_json_schema_events_in_json_schema_predictions_out(
    bootstrap_servers: str, schema_registry_url: str, names: Names, tmp_path: Path
) -> None:
    """The same with Confluent's JSONSerializer and JSONDeserializer (which validates each prediction
    against the JSON Schema the worker registered: schemas/prediction_result.schema.json)."""
    registry = SchemaRegistryClient({"url": schema_registry_url})
    create_topics(bootstrap_servers, names)
    producer = Producer({"bootstrap.servers": bootstrap_servers})
    serialize = JSONSerializer(json.dumps(EVENT_JSON_SCHEMA), registry)
    context = SerializationContext(names.input_topic, MessageField.VALUE)
    expected = set()
    for index in range(60):
        document = {**event(index, 1), "event_id": f"js-{index}"}
        producer.produce(names.input_topic, key=document["user_id"].encode(), value=serialize(document, context))
        expected.add(document["event_id"])
    unknown = frame(UNKNOWN_SCHEMA_ID, json.dumps({**event(0, 1), "event_id": "x"}).encode())
    producer.produce(names.input_topic, key=b"bad-unknown-schema", value=unknown)
    assert producer.flush(60) == 0
    env = worker_env(
        bootstrap_servers,
        names,
        tmp_path,
        INPUT_FORMAT="jsonschema",
        OUTPUT_FORMAT="jsonschema",
        SCHEMA_REGISTRY_URL=schema_registry_url,
        STATS_ENABLED="false",
    )
    with running_worker(env, tmp_path / "worker.log"):
        deserialize = JSONDeserializer(None, schema_registry_client=registry)
        results = read_predictions(bootstrap_servers, registry, names.output_topic, len(expected), 120.0, deserialize)
        dead_letters = asyncio.run(
            read_outputs(bootstrap_servers, (names.dead_letter_topic,), lambda seen: len(seen) >= 1, 60.0, 1.0)
        )
    counts = Counter(result["event_id"] for result in results)
    assert set(counts) == expected and max(counts.values()) == 1
    assert [(o.key, o.value, dict(o.headers)[HEADER_ERROR_CLASS]) for o in dead_letters] == [
        (b"bad-unknown-schema", unknown, b"unknown_schema")
    ]
    registered = registry.get_latest_version(f"{names.output_topic}-value").schema
    assert registered.schema_type == "JSON"
    assert json.loads(registered.schema_str) == json.loads(json_schema_text("prediction_result"))


@pytest.fixture(autouse=True)
def _needs_registry(schema_registry_url: str) -> None:
    """Every test here needs the registry: a missing one fails (CI) or skips them."""
