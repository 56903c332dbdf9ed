"""Backpressure: with a model slower than the input, the worker reads only as fast as it predicts.

A warm, idle worker whose model takes ~0.15 s per batch of 256 receives a burst of 100k large
events (~160 MiB) far faster than it can predict them. While the backlog stays large, records in
flight never exceed MAX_IN_FLIGHT and the worker's resident memory grows by a bounded read-ahead
only, nowhere near the backlog's size: the backlog waits in Kafka, not in the worker.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from torch import nn

from tests.integration.conftest import Names, create_topics, running_worker, worker_env
from tests.integration.streams import (
    PARTITIONS,
    committed_offsets,
    delete_topics,
    event_value,
    gauge,
    in_background,
    produce,
    rss_bytes,
    write_model,
)

BACKLOG = 100_000
PADDING = 1500  # bytes of an extra field the worker ignores: ~1.6 kB per event
MAX_IN_FLIGHT = 512
WIDTH = 4096  # 30 -> 4096 -> 4096 -> 4096 -> 2: ~0.1-0.2 s per batch of 256 on one CPU thread
WARM_UP = 2000
PREDICTED = 'inference_predictions_total{model="slow",version="1"}'
SAMPLE_S = 20.0
MiB = 1 << 20
# What the worker may read ahead of MAX_IN_FLIGHT: the fetches queued for the agent (app/worker.py's
# INPUT_BATCHES_BUFFERED, 4) plus one being handed over and one buffered in aiokafka, each at most
# 1 MiB per partition: 24 MiB of records here, plus their Python objects. Measured: +34 MiB.
READ_AHEAD_BOUND = 64 * MiB


def slow_model() -> nn.Module:
    hidden = [nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU()]
    return nn.Sequential(nn.Linear(30, WIDTH), nn.ReLU(), *hidden, nn.Linear(WIDTH, 2))


@pytest.mark.timeout(180)
def test_a_slow_model_pauses_consumption_instead_of_growing_memory(bootstrap_servers: str, tmp_path: Path) -> None:
    names = Names(uuid.uuid4().hex[:10])
    create_topics(bootstrap_servers, names, PARTITIONS)
    write_model(tmp_path / "models", "slow", slow_model())
    backlog_bytes = BACKLOG * len(event_value(0, PADDING))
    env = worker_env(
        bootstrap_servers,
        names,
        tmp_path,
        MODEL_DIR=str(tmp_path / "models"),
        MODEL_NAMES="slow",
        MAX_IN_FLIGHT=str(MAX_IN_FLIGHT),
        TORCH_THREADS="1",  # the model's compute stays off the second core, which the producer needs
        STATS_ENABLED="false",
    )
    try:
        with running_worker(env, tmp_path / "worker.log") as worker:
            pid = worker.process.pid
            idle = rss_bytes(pid)
            # A first, small burst warms the processing path (the model thread's allocations, producer
            # buffers), so what the big burst adds on top is what scales with the input, if anything.
            asyncio.run(produce(bootstrap_servers, names.input_topic, lambda i: event_value(i, PADDING), WARM_UP))
            deadline = time.monotonic() + 60
            while gauge(worker, PREDICTED, default=0) < WARM_UP:
                assert time.monotonic() < deadline, "the warm-up burst was not predicted in 60 s"
                time.sleep(0.2)
            warm = rss_bytes(pid)
            burst = in_background(
                produce(bootstrap_servers, names.input_topic, lambda i: event_value(WARM_UP + i, PADDING), BACKLOG)
            )
            samples: list[tuple[float, int, float]] = []  # (seconds, RSS, records in flight)
            started = time.monotonic()
            produced_s: float | None = None
            while (elapsed := time.monotonic() - started) < SAMPLE_S:
                samples.append((elapsed, rss_bytes(pid), gauge(worker, "inference_records_in_flight")))
                if produced_s is None and burst.done():
                    produced_s = elapsed
                time.sleep(0.5)
            burst.result(timeout=60)
            predicted = gauge(worker, PREDICTED) - WARM_UP
            committed = asyncio.run(committed_offsets(bootstrap_servers, names.app_id, names.input_topic))
    finally:
        asyncio.run(delete_topics(bootstrap_servers, names.topics))  # 164 MiB that no other test needs

    lag = WARM_UP + BACKLOG - sum(max(offset, 0) for offset in committed.values())
    peak = max(rss for _, rss, _ in samples)
    most_in_flight = max(in_flight for *_, in_flight in samples)
    print(
        f"\nbackpressure: {BACKLOG} events ({backlog_bytes / MiB:.0f} MiB) produced in {produced_s or SAMPLE_S:.0f}s; "
        f"after {SAMPLE_S:.0f}s {predicted:.0f} predicted, lag {lag}; "
        f"in flight <= {most_in_flight:.0f} (MAX_IN_FLIGHT {MAX_IN_FLIGHT})"
        f"\n  RSS MiB: idle {idle / MiB:.0f}, warm {warm / MiB:.0f}, peak {peak / MiB:.0f}; "
        + " ".join(f"{t:.0f}s={rss / MiB:.0f}" for t, rss, _ in samples[::4])
    )
    assert lag > BACKLOG // 2, "the model was meant to be slower than the input"
    assert most_in_flight <= MAX_IN_FLIGHT
    assert peak - warm < READ_AHEAD_BOUND, "memory grows with the backlog"
