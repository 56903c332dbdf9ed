"""Windowed statistics against the real broker, across a worker killed mid-window.

One event-time window gets events before and after a SIGKILL of the worker; a second worker,
with an empty data folder, recovers the window from the table's changelog. The closed window
must be published exactly once, with a count equal to the predictions whose event time lies
in it (including any duplicates at-least-once delivery produced after the kill).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from app.records.events import parse_timestamp_ms
from tests.integration.conftest import Names, create_topics, running_worker, worker_env
from tests.integration.streams import Output, Record, produce, read_outputs

WINDOW_S = 10
LATENESS_S = 2
FEATURES = 30


def event(index: int, timestamp_ms: int) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"e-{index}",
            "user_id": f"user-{index % 7}",
            "features": [float((index + i) % 40) for i in range(FEATURES)],
            "timestamp": timestamp_ms,
        }
    )


def at(value: bytes, timestamp_ms: int) -> Record:
    return Record(value, b"k", timestamp_ms)


async def read_all(bootstrap: str, topic: str, idle_s: float = 3.0) -> list[Output]:
    """Every record on ``topic``, once nothing more came for ``idle_s``."""
    return await read_outputs(bootstrap, (topic,), lambda _: True, settle_s=idle_s)


def wait_for(condition: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.timeout(400)
def test_a_window_survives_a_killed_worker_and_closes_exactly_once(
    bootstrap_servers: str, tmp_path: Path, window_stats_schema: Draft202012Validator
) -> None:
    names = Names(uuid.uuid4().hex[:10])
    stats_topic = names.stats_topic
    create_topics(bootstrap_servers, names)
    window_start = (int(time.time() * 1000) // (WINDOW_S * 1000) - 6) * WINDOW_S * 1000  # a past window
    in_window = [window_start + 100 + i * 20 for i in range(300)]
    settings = {
        "STATS_WINDOW_S": str(WINDOW_S),
        "STATS_LATENESS_S": str(LATENESS_S),
        # Sources without records follow the wall clock once caught up; the one with records must not
        # advance past the window while the killed worker's replacement is still catching up.
        "STATS_IDLE_GRACE_S": "3",
        "KAFKA_SESSION_TIMEOUT_S": "6",
    }

    first = [at(event(i, in_window[i]), in_window[i]) for i in range(150)] + [
        at(b"{not json", in_window[150 + i]) for i in range(4)
    ]
    second = [at(event(i, in_window[i]), in_window[i]) for i in range(160, 260)] + [
        at(b"\xff", in_window[290 + i]) for i in range(3)
    ]
    closing_time = window_start + (WINDOW_S + LATENESS_S + 1) * 1000
    closing = [at(event(999, closing_time), closing_time)]

    env = worker_env(bootstrap_servers, names, tmp_path / "a", **settings)
    with running_worker(env, tmp_path / "worker-a.log") as worker_a:
        asyncio.run(produce(bootstrap_servers, names.input_topic, first))
        wait_for(
            lambda: len(asyncio.run(read_all(bootstrap_servers, names.output_topic, 1.0))) >= 150,
            60,
            "the first predictions",
        )
        time.sleep(2.0)  # let the statistics agents take in part of the window
        worker_a.process.kill()
        worker_a.process.wait()

    env = worker_env(bootstrap_servers, names, tmp_path / "b", **settings)  # empty data folder: recover from Kafka
    with running_worker(env, tmp_path / "worker-b.log", ready_timeout_s=180) as worker_b:
        asyncio.run(produce(bootstrap_servers, names.input_topic, second + closing))
        served = json.loads(worker_b.get("/models")[1])["breast-cancer"]["version"]
        key = f"breast-cancer|{served}|{window_start}".encode()

        def published() -> list[Output]:
            return [r for r in asyncio.run(read_all(bootstrap_servers, stats_topic, 1.0)) if r.key == key]

        wait_for(published, 120, "the window's statistics")
        time.sleep(4.0)  # a second publication, if any, would show up now
        records = published()
        status, body = worker_b.get("/stats")

    assert len(records) == 1, f"expected one WindowStats record, got {len(records)}"
    stats = orjson.loads(records[0].value)
    window_stats_schema.validate(stats)

    end = window_start + WINDOW_S * 1000
    predictions = [orjson.loads(r.value) for r in asyncio.run(read_all(bootstrap_servers, names.output_topic))]
    in_it = [p for p in predictions if window_start <= parse_timestamp_ms(p["timestamp"]) < end]
    dead = [
        r
        for r in asyncio.run(read_all(bootstrap_servers, names.dead_letter_topic))
        if window_start <= r.timestamp < end
    ]
    assert {p["event_id"] for p in in_it} == {f"e-{i}" for i in [*range(150), *range(160, 260)]}
    assert stats["count"] == len(in_it)
    assert stats["dead_letter_count"] == len(dead) >= 7
    assert sum(stats["labels"].values()) == stats["count"]
    assert stats["latency_ms"]["p50"] is not None and stats["drift"]["value"] is not None

    assert status == 200
    closed = orjson.loads(body)["closed"]
    assert any(s["window_start"] == stats["window_start"] and s["count"] == stats["count"] for s in closed)
