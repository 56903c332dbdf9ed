"""The README's demo: a worker with the default model, sample events in, predictions out.

Starts ``python -m app worker`` as a child process, waits for /ready, produces events (a few
of them malformed), follows the predictions and dead-letter topics until every event is
accounted for, prints a summary, and stops the worker with SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from app.kafka.schema_registry import event_encoder, result_decoder
from app.kafka.security import client_config
from app.kafka.topics import ensure_worker_topics
from app.models.registry import open_registry
from app.settings import Settings
from app.tools.produce import EventFactory, produce_events
from app.tools.tail import describe, follow

READY_TIMEOUT_S = 180.0
SHOWN_PREDICTIONS = 12
SHOWN_DEAD_LETTERS = 3
"""The first predictions and dead letters are printed as they arrive; then only the summary."""


def wait_ready(port: int, worker: subprocess.Popen[bytes], log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"demo: the worker exited with {worker.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"demo: the worker was not ready after {timeout_s:.0f}s; see {log_path}")


async def run_demo(settings: Settings, count: int, rate: float, malformed: float) -> int:
    await ensure_worker_topics(settings)
    log_path = Path(settings.worker.data_dir) / "demo-worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log_file:
        worker = subprocess.Popen(  # noqa: ASYNC220 - starting the child is quick
            [sys.executable, "-m", "app", "worker"], stdout=log_file, stderr=subprocess.STDOUT, env=os.environ.copy()
        )
        try:
            print(f"demo: worker starting (pid {worker.pid}, log {log_path})")
            await asyncio.to_thread(wait_ready, settings.web.web_port, worker, log_path, READY_TIMEOUT_S)
            print(f"demo: worker ready; /models at http://{settings.web.web_host}:{settings.web.web_port}/models")
            return await _feed_and_watch(settings, count, rate, malformed)
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()


async def _feed_and_watch(settings: Settings, count: int, rate: float, malformed: float) -> int:
    metadata = open_registry(settings.models).metadata(settings.models.default_model, settings.models.model_version)
    factory = EventFactory(metadata)
    encode = event_encoder(settings.schema_registry, settings.topics.input_topic)
    decode = result_decoder(settings.schema_registry)
    watched = (settings.topics.output_topic, settings.topics.dead_letter_topic)
    config = client_config(settings.kafka)
    records = follow(settings.kafka.bootstrap_servers, watched, from_beginning=False, idle_timeout_s=60, **config)
    first = asyncio.ensure_future(anext(records))  # subscribe before producing, so nothing is missed
    await asyncio.sleep(2.0)
    report = await produce_events(
        settings.kafka.bootstrap_servers,
        settings.topics.input_topic,
        factory,
        count,
        rate,
        malformed,
        progress=False,
        encode=encode,
        **config,
    )
    print(f"demo: produced {report.sent} events ({report.malformed.total()} malformed) in {report.seconds:.1f}s")
    expected_results = set(report.valid_event_ids)
    expected_dead = report.malformed.total()
    seen_results: set[str] = set()
    dead = 0
    batch_sizes: Counter[int] = Counter()
    latencies: list[float] = []
    shown_predictions = shown_dead_letters = 0
    record = await first
    while True:
        if record.topic == settings.topics.dead_letter_topic:
            ours = (record.key or b"").startswith(b"bad-")
            dead += 1 if ours else 0
            show = ours and shown_dead_letters < SHOWN_DEAD_LETTERS
            shown_dead_letters += show
        else:
            result = decode(record.value)
            ours = result["event_id"] in expected_results
            if ours:
                seen_results.add(result["event_id"])
                batch_sizes[result["batch_size"]] += 1
                latencies.append(result["latency_ms"])
            show = ours and shown_predictions < SHOWN_PREDICTIONS
            shown_predictions += show
        if show:
            print("  " + describe(record, settings.topics.dead_letter_topic, decode))
        if seen_results == expected_results and dead >= expected_dead:
            break
        try:
            record = await anext(records)
        except StopAsyncIteration:
            break
    await records.aclose()
    missing = len(expected_results - seen_results)
    print(
        f"demo: {len(seen_results)}/{len(expected_results)} predictions, {dead}/{expected_dead} dead letters, "
        f"{missing} missing"
    )
    if latencies:
        print(
            f"demo: latency p50 {statistics.median(latencies):.1f} ms, max {max(latencies):.1f} ms; "
            f"batch sizes seen: {dict(sorted(batch_sizes.items()))}"
        )
    return 0 if missing == 0 and dead >= expected_dead else 1
