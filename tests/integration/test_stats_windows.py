"""Every closed statistics window counts every prediction whose event time lies in it, from every
input partition, the way a stranger's traffic meets the worker: keys spread over all partitions,
steady bursts with produce-time event timestamps, several windows closing while events flow.

Each published WindowStats record is compared with the outputs read back from the broker:
predictions (counted once per input record, by source partition and offset), their labels and
latencies, and dead letters (by input record time). A mismatch names the counts per partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from jsonschema import Draft202012Validator

from app.records.events import parse_timestamp_ms
from tests.integration.conftest import Names, running_worker, worker_env
from tests.integration.streams import Output, read_outputs

WINDOW_S = 5
SETTINGS = {
    "STATS_WINDOW_S": str(WINDOW_S),
    "STATS_LATENESS_S": "1",
    "STATS_IDLE_GRACE_S": "3",
    "KAFKA_SESSION_TIMEOUT_S": "10",
}
BURST = 50  # events every BURST_EVERY_S: ~100 events/s
BURST_EVERY_S = 0.5
USERS = 100
MALFORMED_EVERY = 40  # every 40th record is not JSON: a dead letter
FEATURES = 30


@dataclass
class Produced:
    records: int = 0
    first_ms: int = 0
    last_ms: int = 0


def stream_bursts(bootstrap: str, topic: str, seconds: float) -> Produced:
    """Bursts of BURST events every BURST_EVERY_S for ``seconds``, keyed by USERS user ids, each event
    stamped with the moment it is produced (the record timestamp too)."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    produced = Produced()
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            burst_at = time.monotonic()
            for _ in range(BURST):
                index = produced.records
                now_ms = int(time.time() * 1000)
                produced.first_ms = produced.first_ms or now_ms
                produced.last_ms = now_ms
                user = f"user-{index % USERS}"
                value = (
                    b"{not json"
                    if index % MALFORMED_EVERY == MALFORMED_EVERY - 1
                    else orjson.dumps(
                        {
                            "event_id": f"e-{index}",
                            "user_id": user,
                            "features": [float((index + i) % 37) for i in range(FEATURES)],
                            "timestamp": now_ms,
                        }
                    )
                )
                producer.produce(topic, value, key=user.encode(), timestamp=now_ms)
                produced.records += 1
            producer.poll(0)
            time.sleep(max(0.0, BURST_EVERY_S - (time.monotonic() - burst_at)))
    finally:
        assert producer.flush(30) == 0, "the producer could not deliver every event"
    return produced


@dataclass
class Expected:
    """What one window must report, kept per input partition so a mismatch says where."""

    predictions: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    dead_letters: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    labels: Counter[str] = field(default_factory=Counter)
    seen: set[tuple[int, int]] = field(default_factory=set)

    @property
    def count(self) -> int:
        return sum(map(len, self.predictions.values()))

    @property
    def dead_letter_count(self) -> int:
        return sum(map(len, self.dead_letters.values()))


def window_of(event_time_ms: float) -> int:
    return int(event_time_ms // (WINDOW_S * 1000)) * WINDOW_S * 1000


def expected_windows(predictions: list[Output], dead_letters: list[Output]) -> dict[int, Expected]:
    """Per window start: the input records predicted (once each, however often re-predicted) and
    dead-lettered, as read back from the output topics."""
    windows: dict[int, Expected] = defaultdict(Expected)
    for output in predictions:
        result = output.result
        window = windows[window_of(parse_timestamp_ms(result["timestamp"]))]
        source = (result["partition"], result["offset"])
        if source in window.seen:
            continue
        window.seen.add(source)
        window.predictions[result["partition"]].add(result["offset"])
        window.labels[result["label"]] += 1
    for output in dead_letters:
        partition, offset = source_of(output, output.topic)
        assert output.timestamp is not None
        windows[window_of(output.timestamp)].dead_letters[partition].add(offset)
    return windows


async def read_window_stats(bootstrap: str, topic: str, windows: set[int], timeout_s: float) -> dict[int, list[Any]]:
    """The WindowStats records by window start, read until every window of ``windows`` has one."""

    def all_closed(records: list[Output]) -> bool:
        return windows <= {window_start_of(record) for record in records}

    published: dict[int, list[Any]] = defaultdict(list)
    for record in await read_outputs(bootstrap, (topic,), all_closed, timeout_s=timeout_s, settle_s=3.0):
        published[window_start_of(record)].append(orjson.loads(record.value or b"null"))
    return published


def window_start_of(record: Output) -> int:
    """The window start in a WindowStats key, ``<model>|<version>|<start ms>``."""
    assert record.key is not None
    return int(record.key.decode().rsplit("|", 1)[1])


def create_input_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """As a user would, with a client the project did not write."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(30)


def mismatches(published: dict[int, list[Any]], expected: dict[int, Expected]) -> list[str]:
    """One line per window whose statistics disagree with the outputs, naming the per-partition counts."""
    problems = []
    for start in sorted(expected):
        want = expected[start]
        records = published.get(start, [])
        per_partition = {p: len(want.predictions.get(p, ())) for p in sorted({*want.predictions, *want.dead_letters})}
        if len(records) != 1:
            problems.append(f"window {start}: {len(records)} WindowStats records, expected 1")
            continue
        stats = records[0]
        got = (stats["count"], stats["dead_letter_count"], dict(stats["labels"]), stats["latency_ms"]["count"])
        wanted = (want.count, want.dead_letter_count, dict(want.labels), want.count)
        if got != wanted:
            problems.append(
                f"window {start}: (count, dead letters, labels, latency count) {got}, outputs say {wanted}; "
                f"predictions per input partition {per_partition}"
            )
    return problems


def report(published: dict[int, list[Any]], expected: dict[int, Expected]) -> str:
    lines = []
    for start in sorted(expected):
        want = expected[start]
        counts = [stats["count"] for stats in published.get(start, [])]
        per_partition = " + ".join(str(len(want.predictions[p])) for p in sorted(want.predictions))
        lines.append(f"  window {start}: count {counts} | predictions {want.count} = {per_partition}")
    return "\n".join(lines)


def check_windows(
    bootstrap: str, names: Names, produced: Produced, schema: Draft202012Validator
) -> dict[int, list[Any]]:
    """Read everything back and compare every window that holds an event with its WindowStats."""

    def all_out(records: list[Output]) -> bool:
        return len({source_of(r, names.dead_letter_topic) for r in records}) >= produced.records

    outputs = asyncio.run(read_outputs(bootstrap, (names.output_topic, names.dead_letter_topic), all_out, 120.0))
    predictions = [o for o in outputs if o.topic == names.output_topic]
    dead_letters = [o for o in outputs if o.topic == names.dead_letter_topic]
    expected = expected_windows(predictions, dead_letters)
    assert sum(w.count + w.dead_letter_count for w in expected.values()) == produced.records, "outputs missing"
    published = asyncio.run(read_window_stats(bootstrap, names.stats_topic, set(expected), 120.0))
    print(f"\n{produced.records} events over {len(expected)} windows of {WINDOW_S} s:\n{report(published, expected)}")
    for records in published.values():
        for stats in records:
            schema.validate(stats)
    problems = mismatches(published, expected)
    assert not problems, "\n".join(problems)
    return published


def source_of(output: Output, dead_letter_topic: str) -> tuple[int, int]:
    """The input record an output came from: (partition, offset)."""
    if output.topic != dead_letter_topic:
        return output.result["partition"], output.result["offset"]
    headers = {name: value.decode() for name, value in output.headers}
    return int(headers["dlq.source.partition"]), int(headers["dlq.source.offset"])


def test_every_window_counts_every_partition_of_one_worker(
    bootstrap_servers: str, tmp_path: Path, window_stats_schema: Draft202012Validator
) -> None:
    names = Names(uuid.uuid4().hex[:10])
    create_input_topic(bootstrap_servers, names.input_topic, 4)
    env = worker_env(bootstrap_servers, names, tmp_path, **SETTINGS)
    with running_worker(env, tmp_path / "worker.log"):
        produced = stream_bursts(bootstrap_servers, names.input_topic, seconds=4 * WINDOW_S)
        published = check_windows(bootstrap_servers, names, produced, window_stats_schema)
    assert len(published) >= 4


def test_every_window_counts_every_partition_across_replicas(
    bootstrap_servers: str, tmp_path: Path, window_stats_schema: Draft202012Validator
) -> None:
    """Six input partitions (no partition setting given: the worker reads the count), a second
    replica joining while events flow."""
    names = Names(uuid.uuid4().hex[:10])
    create_input_topic(bootstrap_servers, names.input_topic, 6)
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            running_worker(worker_env(bootstrap_servers, names, tmp_path / "a", **SETTINGS), tmp_path / "a.log")
        )
        streaming = ThreadPoolExecutor(1).submit(stream_bursts, bootstrap_servers, names.input_topic, 5 * WINDOW_S)
        second = stack.enter_context(
            running_worker(worker_env(bootstrap_servers, names, tmp_path / "b", **SETTINGS), tmp_path / "b.log")
        )
        produced = streaming.result()
        published = check_windows(bootstrap_servers, names, produced, window_stats_schema)
        assert second.process.poll() is None
    assert len(published) >= 5
