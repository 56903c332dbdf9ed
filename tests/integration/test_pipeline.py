"""A worker process against the real broker: a mix of valid and malformed events in, and
exactly one prediction or dead letter out per event, nothing else, offsets committed."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from prometheus_client.parser import text_string_to_metric_families

from app.errors import ERROR_CLASSES
from tests.integration.conftest import Names, WorkerProcess, create_topics, running_worker, worker_env
from tests.integration.streams import Output, Record, committed_to_end, keyed_by_user, produce, read_outputs

USERS = 20
EVENTS_PER_USER = 25
FEATURES = 30
MAX_RECORD_BYTES = 4096


def valid_event(user: int, seq: int) -> dict[str, Any]:
    return {
        "event_id": f"user-{user}-{seq}",
        "user_id": f"user-{user}",
        "features": [float((user * 7 + seq * 3 + i) % 50) for i in range(FEATURES)],
        "timestamp": int(time.time() * 1000),
    }


def malformed_records() -> list[tuple[str, bytes | None]]:
    """(expected error class, value) for every way an input can be unusable."""
    good = valid_event(0, 0)
    return [
        ("empty_value", None),
        ("oversized", orjson.dumps({**good, "padding": "x" * MAX_RECORD_BYTES})),
        ("not_utf8", b"\xff\xfe\xfa" + orjson.dumps(good)),
        ("invalid_json", b'{"user_id": "u", "features": [1, 2'),
        ("schema_violation", orjson.dumps({k: v for k, v in good.items() if k != "user_id"})),
        ("schema_violation", orjson.dumps({**good, "features": "1,2,3"})),
        ("schema_violation", orjson.dumps({**good, "timestamp": "last tuesday"})),
        ("non_finite", json.dumps({**good, "features": [math.nan] * FEATURES}).encode()),
        ("wrong_feature_count", orjson.dumps({**good, "features": good["features"][:-3]})),
        ("unknown_model", orjson.dumps({**good, "model": "no-such-model"})),
    ]


@dataclass
class Run:
    names: Names
    worker: WorkerProcess
    produced_valid: dict[str, tuple[int, int]] = field(default_factory=dict)  # event_id -> (partition, offset)
    produced_bad: dict[bytes, tuple[str, bytes | None, int, int]] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    result_keys: list[bytes | None] = field(default_factory=list)
    result_partitions: list[int] = field(default_factory=list)
    dead_letters: list[Output] = field(default_factory=list)
    committed: dict[int, int] = field(default_factory=dict)
    end_offsets: dict[int, int] = field(default_factory=dict)
    metrics_before: Samples = field(default_factory=dict)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(worker: WorkerProcess) -> Samples:
    status, body = worker.get("/metrics")
    assert status == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, metric: str, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


async def produce_inputs(bootstrap: str, run: Run) -> None:
    """Every user's events in turn, a malformed record after each round while there are some left."""
    bad = malformed_records()
    records: list[Record] = []
    sent: list[tuple[str, Any]] = []  # ("valid", event_id) or ("bad", key), one per record
    for seq in range(EVENTS_PER_USER):
        for user in range(USERS):
            event = valid_event(user, seq)
            records.append(keyed_by_user(event))
            sent.append(("valid", event["event_id"]))
        if seq < len(bad):
            key = f"bad-{seq}".encode()
            records.append(Record(bad[seq][1], key, headers=(("trace-id", f"trace-{seq}".encode()),)))
            sent.append(("bad", key))
    acknowledged = await produce(bootstrap, run.names.input_topic, records)
    for (kind, ident), metadata in zip(sent, acknowledged, strict=True):
        if kind == "valid":
            run.produced_valid[ident] = (metadata.partition, metadata.offset)
        else:
            error_class, value = bad[int(ident.decode().split("-")[1])]
            run.produced_bad[ident] = (error_class, value, metadata.partition, metadata.offset)


async def collect(bootstrap: str, run: Run, timeout_s: float = 120.0, settle_s: float = 5.0) -> None:
    expected = len(run.produced_valid) + len(run.produced_bad)
    topics = (run.names.output_topic, run.names.dead_letter_topic)
    for output in await read_outputs(bootstrap, topics, lambda seen: len(seen) >= expected, timeout_s, settle_s):
        if output.topic == run.names.output_topic:
            run.results.append(output.result)
            run.result_keys.append(output.key)
            run.result_partitions.append(output.partition)
        else:
            run.dead_letters.append(output)


@pytest.fixture(scope="module")
def run(bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    import uuid

    names = Names(uuid.uuid4().hex[:10])
    tmp = tmp_path_factory.mktemp("pipeline")
    create_topics(bootstrap_servers, names)
    env = worker_env(bootstrap_servers, names, tmp, MAX_RECORD_BYTES=str(MAX_RECORD_BYTES), MAX_WAIT_MS="20")
    with running_worker(env, tmp / "worker.log") as worker:
        result = Run(names, worker)
        result.metrics_before = scrape(worker)
        asyncio.run(produce_inputs(bootstrap_servers, result))
        asyncio.run(collect(bootstrap_servers, result))
        result.committed, result.end_offsets = asyncio.run(
            committed_to_end(bootstrap_servers, names.app_id, names.input_topic, timeout_s=30.0)
        )
        yield result


def test_every_valid_event_gets_exactly_one_prediction(run: Run) -> None:
    counts: dict[str, int] = defaultdict(int)
    for result in run.results:
        counts[result["event_id"]] += 1
    assert set(counts) == set(run.produced_valid), "predictions for events never sent, or events without one"
    assert {event_id: n for event_id, n in counts.items() if n != 1} == {}


def test_results_validate_and_point_back_at_their_source(run: Run, result_schema: Draft202012Validator) -> None:
    for result in run.results:
        result_schema.validate(result)
        assert (result["partition"], result["offset"]) == run.produced_valid[result["event_id"]]
        assert result["topic"] == run.names.input_topic
        assert result["label"] in ("malignant", "benign")
        assert 1 <= result["batch_size"] <= 256
    assert run.result_keys == [r["user_id"].encode() for r in run.results]  # same key as the input


def test_results_land_on_the_partition_their_key_hashes_to(run: Run) -> None:
    """The inputs were produced keyed by user with the default (murmur2) partitioner, and input and output
    topics have the same partition count: a result's partition is its input's, as any Kafka client
    partitioning by key would place it."""
    assert run.result_partitions == [result["partition"] for result in run.results]


def test_model_version_matches_the_loaded_model(run: Run) -> None:
    status, body = run.worker.get("/models")
    assert status == 200
    loaded = orjson.loads(body)["breast-cancer"]
    assert {(r["model_name"], r["model_version"]) for r in run.results} == {("breast-cancer", loaded["version"])}
    assert loaded["warm"] is True and loaded["input_size"] == FEATURES


def test_per_key_order_is_preserved(run: Run) -> None:
    sequences: dict[str, list[int]] = defaultdict(list)
    for result in run.results:
        sequences[result["user_id"]].append(int(result["event_id"].rsplit("-", 1)[1]))
    assert len(sequences) == USERS
    for user, seqs in sequences.items():
        assert seqs == sorted(seqs), f"{user}'s predictions arrived out of order: {seqs}"


def test_every_malformed_record_is_dead_lettered_once_and_untouched(
    run: Run, dead_letter_schema: Draft202012Validator
) -> None:
    assert sorted(r.key for r in run.dead_letters) == sorted(run.produced_bad)
    for record in run.dead_letters:
        error_class, value, partition, offset = run.produced_bad[record.key]
        headers = {name: raw.decode() for name, raw in record.headers}
        assert record.value == value, "the dead letter's value must be the original bytes"
        assert headers["dlq.error.class"] == error_class, headers["dlq.error.reason"]
        assert headers["dlq.source.topic"] == run.names.input_topic
        assert (int(headers["dlq.source.partition"]), int(headers["dlq.source.offset"])) == (partition, offset)
        assert headers["trace-id"] == f"trace-{record.key.decode().split('-')[1]}"
        envelope = {
            "key": base64.b64encode(record.key).decode(),
            "value": None if record.value is None else base64.b64encode(record.value).decode(),
            "headers": headers,
        }
        dead_letter_schema.validate(envelope)


def test_offsets_are_committed_to_the_end_after_outputs_are_acknowledged(run: Run) -> None:
    assert sum(run.end_offsets.values()) == len(run.produced_valid) + len(run.produced_bad)
    assert run.committed == run.end_offsets


def test_health_and_readiness_endpoints(run: Run) -> None:
    assert run.worker.get("/health") == (200, b'{"status":"ok"}')
    status, body = run.worker.get("/ready")
    ready = orjson.loads(body)
    assert status == 200 and ready["ready"] is True
    assert ready["input_partitions"] == [0, 1, 2, 3]  # the only worker owns every input partition
    assert run.worker.process.poll() is None, "bad input must not take the worker down"


def test_the_worker_log_names_each_dead_letter(run: Run) -> None:
    log = Path(run.worker.log).read_text()
    for _key, (error_class, _value, partition, offset) in run.produced_bad.items():
        assert f"{run.names.input_topic}[{partition}]@{offset}: {error_class}" in log


def test_metrics_count_what_flowed(run: Run) -> None:
    before, after = run.metrics_before, scrape(run.worker)
    valid, bad = len(run.produced_valid), len(run.produced_bad)
    served = json.loads(run.worker.get("/models")[1])["breast-cancer"]["version"]
    version = {"model": "breast-cancer", "version": served}
    # The served version's series and the input topic's exist at 0 before the first record.
    assert value(before, "inference_predictions_total", **version) == 0
    assert value(before, "inference_end_to_end_latency_seconds_count", **version) == 0
    assert value(before, "inference_events_consumed_total", topic=run.names.input_topic) == 0
    for reason in ERROR_CLASSES:
        assert value(before, "inference_dead_letters_total", **version, reason=reason) == 0
    assert value(after, "inference_predictions_total", **version) == valid
    assert value(after, "inference_events_consumed_total", topic=run.names.input_topic) == valid + bad
    expected_reasons: dict[str, int] = defaultdict(int)
    for error_class, *_ in run.produced_bad.values():
        expected_reasons[error_class] += 1
    for reason in ERROR_CLASSES:  # dead letters name the version they were meant for: here the served one
        assert value(after, "inference_dead_letters_total", **version, reason=reason) == expected_reasons[reason]
    assert value(after, "inference_queue_wait_seconds_count", **version) == valid
    assert value(after, "inference_end_to_end_latency_seconds_count", **version) == valid
    batches = value(after, "inference_batch_size_count", **version)
    assert batches is not None and 1 <= batches <= valid
    assert value(after, "inference_batch_size_sum", **version) == valid
    assert value(after, "inference_model_compute_seconds_count", **version) == batches
    assert value(after, "inference_records_in_flight") == 0
    assert value(after, "inference_worker_up") == 1
    assert value(after, "inference_model_info", **version, device="cpu") == 1
    assert value(after, "process_resident_memory_bytes") is not None  # the standard process collector
    assert value(after, "python_info", **python_labels(after)) == 1


def python_labels(samples: Samples) -> dict[str, str]:
    return next(dict(labels) for name, labels in samples if name == "python_info")


def test_consumer_lag_is_exported_per_partition_and_drains_to_zero(run: Run) -> None:
    deadline = time.monotonic() + 30
    while True:
        lags = {
            dict(labels)["partition"]: sample
            for (name, labels), sample in scrape(run.worker).items()
            if name == "inference_consumer_lag"
        }
        if set(lags) == {"0", "1", "2", "3"} and all(lag == 0 for lag in lags.values()):
            return
        assert time.monotonic() < deadline, f"lag never drained to 0: {lags}"
        time.sleep(1)
