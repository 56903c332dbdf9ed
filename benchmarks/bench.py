"""End-to-end benchmark: this worker against its peers, in one run, on one broker.

Every system consumes the same events (same seed, same partition count) and writes the same
PredictionResult JSON through the same model, with the same producer settings (the worker's: acks=all,
linger 5 ms, 1 MiB batches, no compression, idempotent) and offsets committed about once a second
(``benchmarks/peers/common.py``). Output topics use LogAppendTime, so a result's timestamp is the
moment the broker acknowledged it; end-to-end latency is that minus the event's timestamp (set when it
was produced). Throughput is the rate of acknowledged outputs after the first burst of them
(``steady_rate``), so start-up and a first batch do not count.

    python -m benchmarks.bench [--events 60000] [--quick] [--systems a,b] [--repeats 3] [--models model,noop]
                               [--low-rate 1000] [--seconds 10] [--out benchmarks]

For each model cost (``model``: the real forward; ``noop``: the same outputs, no forward, so the
framework's own cost shows): (1) throughput over a backlog, ``--repeats`` rounds, each running every
system in a new shuffled order; (2) latency, again in shuffled rounds, at 50% of each system's own
median throughput and at one shared low rate (``--low-rate``), in one start of the system each round;
the worker also runs with FLUSH_WHEN_INPUT_IDLE=false at the low rate, to show what closing a batch
when the input runs dry buys. A run whose counts in and out differ fails the benchmark (exit status 1);
a latency row whose offered rate was not reached, or whose outputs fell behind it, is marked. Without
``--quick``: (3) this worker's throughput against MAX_BATCH_SIZE; (4) every system's latency at 25, 75
and 90% of its own maximum; (5) one against two replicas; (6) the text-embedding model (minilm, text
events; needs the text extra), one round. Writes results.json (every run), RESULTS.md and plots.

    python -m benchmarks.bench --formats [--events 20000] [--rounds 2] [--registry-url URL]

instead measures this worker's throughput with Avro in and out (Confluent wire format, through the
Schema Registry; the registry extra) against JSON in and out, over the same events, alternating
the two ``--rounds`` times; it prints the ratio and writes formats.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import torch
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.models.registry import ModelRegistry
from app.models.runner import ModelRunner, pick_device
from app.settings import REPO_ROOT
from app.tools.produce import EventFactory
from benchmarks.peers.common import NOOP_MODEL_ENV
from benchmarks.workload import text_event

PARTITIONS = 4
SYSTEMS = ("inference-worker", "naive-faust", "faust-take", "quix-streams", "bare-aiokafka", "bare-confluent-kafka")
PEER_MODULES = {
    "naive-faust": "benchmarks.peers.naive_faust",
    "faust-take": "benchmarks.peers.faust_take",
    "quix-streams": "benchmarks.peers.quix",
    "bare-aiokafka": "benchmarks.peers.bare_aiokafka",
    "bare-confluent-kafka": "benchmarks.peers.bare_confluent",
}
WORKER_MAX_WAIT_MS = 10.0
FIRST_BURST_MS = 100
TABULAR, TEXT = "breast-cancer", "minilm"
"""The models of the two workloads: feature events and text events."""


@dataclass
class Run:
    system: str
    events: int
    received: int = 0
    unique: int = 0
    events_per_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    offered_per_s: float = 0.0
    settings: dict[str, str] = field(default_factory=dict)
    output: str = ""
    """The topic the system wrote its results to."""
    model: str = "model"
    """``model`` (the real forward) or ``noop`` (BENCH_NOOP_MODEL: same outputs, no forward)."""
    phase: str = "throughput"
    """``throughput`` (a backlog), ``half-load`` (50% of the system's own median throughput) or ``low-rate``."""
    produced_per_s: float = 0.0
    """The rate the load generator reached (latency phases)."""
    output_per_s: float = 0.0
    """Outputs over the span from the first event produced to the last result acknowledged (latency phases)."""
    problems: list[str] = field(default_factory=list)
    """Why the run fails (counts in and out differ) or its latency is not at the offered rate."""

    @property
    def duplicates(self) -> int:
        return self.received - self.unique

    @property
    def failed(self) -> bool:
        """Counts in and out differ: the benchmark fails."""
        return self.unique != self.events

    def check(self) -> None:
        if self.unique != self.events:
            self.problems.append(f"received {self.unique} of {self.events} events")
        if self.phase == "throughput" and not self.events_per_s:
            self.problems.append("no rate: every output came in the first burst (more events needed)")
        if self.phase != "throughput":
            if self.produced_per_s < 0.9 * self.offered_per_s:
                self.problems.append(f"offered rate not reached ({self.produced_per_s:,.0f}/s produced)")
            if self.output_per_s < 0.9 * self.offered_per_s:
                self.problems.append(f"fell behind ({self.output_per_s:,.0f}/s out)")


class Bench:
    def __init__(self, bootstrap: str, workdir: Path) -> None:
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.run_id = uuid.uuid4().hex[:6]
        metadata = ModelRegistry(REPO_ROOT / "models").metadata("breast-cancer")
        self.factory = EventFactory(metadata, seed=11, run_id=self.run_id)
        self._topics = 0
        self.noop = False
        self.last_started_ms = 0.0
        """When the last ``produce`` sent its first event (epoch ms)."""
        """Run every system with the no-op model (``benchmarks.peers.common.noop_model``)."""
        self.decode_result: Callable[[bytes], dict[str, Any]] = orjson.loads
        """How results are read back: JSON, unless the worker writes another OUTPUT_FORMAT."""

    def topic(self, purpose: str) -> str:
        self._topics += 1
        return f"bench-{self.run_id}-{self._topics}-{purpose}"

    # -- Kafka helpers -------------------------------------------------------------------

    async def create(self, *names: str, log_append_time: bool = False) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            configs = {"message.timestamp.type": "LogAppendTime"} if log_append_time else {}
            await admin.create_topics([NewTopic(n, PARTITIONS, 1, topic_configs=configs) for n in names])
        finally:
            await admin.close()

    async def produce(
        self,
        topic: str,
        count: int,
        rate: float = 0.0,
        prefix: str = "",
        model: str = TABULAR,
        encode: Callable[[dict[str, Any]], bytes] = orjson.dumps,
    ) -> float:
        """``encode``: the value's format (JSON by default). Returns the rate reached, events/s.

        The events are built first; a librdkafka producer (on a thread, so it does not hold up the event
        loop) then stamps and sends them at ``rate`` (0: as fast as it can): a Python producer stalls at a
        few thousand events/s on this machine, below the rates the faster systems are offered."""
        events = [
            self.factory.event(index) if model == TABULAR else text_event(index, self.run_id, model)
            for index in range(count)
        ]
        for event in events:
            event["event_id"] = f"{prefix}{event['event_id']}"
        return await asyncio.to_thread(self._send_paced, topic, events, rate, encode)

    def _send_paced(
        self, topic: str, events: list[dict[str, Any]], rate: float, encode: Callable[[dict[str, Any]], bytes]
    ) -> float:
        from confluent_kafka import KafkaException, Producer

        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5, "acks": "all"})
        failures: list[Any] = []

        def delivered(error: Any, _message: Any) -> None:
            if error is not None:
                failures.append(error)

        started = time.perf_counter()
        self.last_started_ms = time.time() * 1000
        for index, event in enumerate(events):
            if rate:
                ahead = started + index / rate - time.perf_counter()
                if ahead > 0.001:
                    time.sleep(ahead)
            event["timestamp"] = int(time.time() * 1000)
            while True:
                try:
                    producer.produce(topic, encode(event), key=event["user_id"].encode(), on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.01)  # the local queue is full: let deliveries drain it
            producer.poll(0)
        producer.flush()
        elapsed = time.perf_counter() - started
        if failures:
            raise KafkaException(failures[0])
        return len(events) / elapsed if elapsed > 0 else 0.0

    async def wait_consumed(self, group: str, topic: str, timeout_s: float) -> None:
        """Wait until `group` has committed everything in `topic` (polling is cheap: no record is read)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None)
        await admin.start()
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            ends = await consumer.end_offsets(partitions)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                committed = await admin.list_consumer_group_offsets(group, partitions=partitions)
                if all(tp in committed and committed[tp].offset >= ends[tp] for tp in partitions):
                    return
                await asyncio.sleep(0.5)
            print(f"  ! {group} did not finish {topic} in {timeout_s:.0f} s", flush=True)
        finally:
            await consumer.stop()
            await admin.close()

    async def collect(self, topic: str, prefix: str = "") -> list[tuple[str, int, int]]:
        """(event_id, event timestamp ms, broker ack time ms) of every result in `topic` (``decode_result``)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 << 20,
        )
        await consumer.start()
        rows: list[tuple[str, int, int]] = []
        try:
            partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            ends = await consumer.end_offsets(partitions)
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                for batch in (await consumer.getmany(timeout_ms=500, max_records=10000)).values():
                    for record in batch:
                        result = self.decode_result(record.value)
                        if result["event_id"].startswith(prefix):
                            rows.append((result["event_id"], int(result["timestamp"]), record.timestamp))
        finally:
            await consumer.stop()
        return rows

    # -- systems -------------------------------------------------------------------------

    @contextlib.contextmanager
    def system(
        self, name: str, source: str, output: str, group: str, model: str = TABULAR, **settings: str
    ) -> Iterator[None]:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "OMP_NUM_THREADS": "1",
            NOOP_MODEL_ENV: "1" if self.noop else "0",
        }
        if name == "inference-worker":
            env.update(
                {
                    "INPUT_TOPIC": source,
                    "OUTPUT_TOPIC": output,
                    "DEAD_LETTER_TOPIC": f"{output}.dlq",
                    "STATS_TOPIC": f"{output}.stats",
                    "WORKER_APP_ID": group,
                    "WEB_PORT": str(free_port()),
                    "WORKER_DATA_DIR": str(self.workdir / group),
                    "LOG_LEVEL": "warning",
                    "TORCH_THREADS": "1",
                    "MAX_WAIT_MS": str(WORKER_MAX_WAIT_MS),
                    "MODEL_NAMES": model,
                    **settings,
                }
            )
            command = [sys.executable, "-m", "benchmarks.peers.worker" if self.noop else "app", "worker"]
        else:
            command = [
                sys.executable,
                "-m",
                PEER_MODULES[name],
                "--bootstrap",
                self.bootstrap,
                "--input",
                source,
                "--output",
                output,
                "--group",
                group,
                "--model",
                model,
            ]
        replicas = int(settings.get("REPLICAS", "1"))
        processes = []
        for replica in range(replicas):
            log = (self.workdir / f"{group}-{replica}.log").open("wb")
            if name == "inference-worker":
                env = {**env, "WEB_PORT": str(free_port())}
            processes.append(subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT))
        try:
            yield
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    async def throughput(self, name: str, backlog: str, events: int, model: str = TABULAR, **settings: str) -> Run:
        output = self.topic(f"{name}-out")
        await self.create(output, log_append_time=True)
        run = Run(name, events, settings=settings, output=output, model="noop" if self.noop else "model")
        group = f"bench-{self.run_id}-{output}"
        with self.system(name, backlog, output, group=group, model=model, **settings):
            await self.wait_consumed(group, backlog, timeout_s=events / (500 if model == TABULAR else 20) + 120)
        rows = await self.collect(output)
        run.received, run.unique = len(rows), len({row[0] for row in rows})
        run.events_per_s = steady_rate(sorted(row[2] for row in rows))
        run.check()
        print(
            f"  {name:<22} {run.events_per_s:>9,.0f} ev/s  received {run.received}/{events} "
            f"(duplicates {run.duplicates}) {settings or ''} {'; '.join(run.problems)}",
            flush=True,
        )
        return run

    async def latencies(
        self, name: str, rates: dict[str, float], seconds: float, model: str = TABULAR, **settings: str
    ) -> list[Run]:
        """One start of ``name``, then each phase's load in turn (phase -> offered events/s), ``seconds`` each."""
        source, output = self.topic(f"{name}-lat-in"), self.topic(f"{name}-lat-out")
        await self.create(source)
        await self.create(output, log_append_time=True)
        group = f"bench-{self.run_id}-{output}"
        runs = []
        with self.system(name, source, output, group=group, model=model, **settings):
            await self.produce(source, 50, prefix="warm-", model=model)
            await self.wait_consumed(group, source, timeout_s=180)
            for phase, rate in rates.items():
                count = max(1, int(rate * seconds))
                run = Run(name, count, offered_per_s=rate, settings=settings, output=output, phase=phase)
                run.model = "noop" if self.noop else "model"
                run.produced_per_s = await self.produce(source, count, rate=rate, prefix=f"{phase}-", model=model)
                started_ms = self.last_started_ms
                await self.wait_consumed(group, source, timeout_s=count / (500 if model == TABULAR else 20) + 60)
                runs.append((run, started_ms))
        measured = []
        for run, started_ms in runs:
            rows = await self.collect(output, prefix=f"{run.phase}-")
            latencies = sorted(acked - produced for _, produced, acked in rows)
            run.received, run.unique = len(rows), len({row[0] for row in rows})
            if latencies:
                run.latency_ms = {f"p{q}": percentile(latencies, q / 100) for q in (50, 95, 99)}
                span_s = (max(row[2] for row in rows) - started_ms) / 1000
                run.output_per_s = run.unique / span_s if span_s > 0 else 0.0
            run.check()
            print(
                f"  {name:<22} {run.phase:<9} at {run.offered_per_s:>7,.0f} ev/s: "
                f"p50 {run.latency_ms.get('p50', math.nan):.0f} ms p99 {run.latency_ms.get('p99', math.nan):.0f} ms"
                f"  received {run.unique}/{run.events} {settings or ''} {'; '.join(run.problems)}",
                flush=True,
            )
            measured.append(run)
        return measured

    async def latency(self, name: str, rate: float, seconds: float, model: str = TABULAR, **settings: str) -> Run:
        source, output = self.topic(f"{name}-lat-in"), self.topic(f"{name}-lat-out")
        await self.create(source)
        await self.create(output, log_append_time=True)
        count = int(rate * seconds)
        run = Run(name, count, offered_per_s=rate, settings=settings)
        group = f"bench-{self.run_id}-{output}"
        with self.system(name, source, output, group=group, model=model, **settings):
            await self.produce(source, 50, prefix="warm-", model=model)
            await self.wait_consumed(group, source, timeout_s=180)
            await self.produce(source, count, rate=rate, prefix="m-", model=model)
            await self.wait_consumed(group, source, timeout_s=count / (500 if model == TABULAR else 20) + 60)
        rows = await self.collect(output, prefix="m-")
        latencies = sorted(acked - produced for _, produced, acked in rows)
        run.received, run.unique = len(rows), len({row[0] for row in rows})
        if latencies:
            run.latency_ms = {f"p{q}": percentile(latencies, q / 100) for q in (50, 95, 99)}
        print(
            f"  {name:<22} at {rate:>7,.0f} ev/s: p50 {run.latency_ms.get('p50', float('nan')):.0f} ms "
            f"p99 {run.latency_ms.get('p99', float('nan')):.0f} ms  received {run.received}/{count}",
            flush=True,
        )
        return run


def steady_rate(acked_ms: list[int]) -> float:
    """Outputs per second after the first burst of outputs, from broker ack times (sorted).

    Counting from the first output credits a batching system with its first batch for free: a
    backlog of 800 texts in batches of 256 came out in four bursts, and (n - 1) / (last - first)
    overstated its rate by a third. Outputs acked within FIRST_BURST_MS of the first one are the
    first burst; the rate is what came after it over the time after it. For a steady stream of
    outputs this is its rate; for bursts, one burst per batch time.
    """
    if len(acked_ms) < 2:
        return 0.0
    burst_end = max(ack for ack in acked_ms if ack <= acked_ms[0] + FIRST_BURST_MS)
    later = [ack for ack in acked_ms if ack > burst_end]
    if not later:
        return 0.0
    return len(later) / ((later[-1] - burst_end) / 1000) if later[-1] > burst_end else 0.0


def percentile(ordered: list[int], q: float) -> float:
    return float(ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))])


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def model_compute_ms(batch_size: int) -> float:
    """Median time of one forward (outputs back on the host), on the device the worker picks."""
    torch.set_num_threads(1)
    device = pick_device("auto")
    runner = ModelRunner.load(ModelRegistry(REPO_ROOT / "models"), "breast-cancer", "latest", device)
    rows = [[1.0] * runner.metadata.input_size] * batch_size
    runner.predict(rows)
    timings = []
    for _ in range(50):
        started = time.perf_counter()
        runner.predict(rows)  # returns Python floats: includes the device-to-host copy and sync
        timings.append((time.perf_counter() - started) * 1000)
    runner.close()
    return statistics.median(timings)


def model_description() -> str:
    """The model every system runs: the registry's latest breast-cancer version, as the worker serves it."""
    metadata = ModelRegistry(REPO_ROOT / "models").metadata("breast-cancer")
    architecture = metadata.extra.get("description", "").split(" on ")[0]
    return f"breast-cancer/{metadata.version} ({architecture}, {metadata.format})"


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.cuda.get_device_name(0) if pick_device('auto').type == 'cuda' else 'CPU'}), "
        f"Apache Kafka 3.9.2 single node on the same machine"
    )


WAIT_VARIANT = "inference-worker (FLUSH_WHEN_INPUT_IDLE=false)"
"""The worker as it batched before #14: every batch waits out MAX_WAIT_MS; measured at the low rate only."""


async def main(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    bench = Bench(args.bootstrap, workdir)
    systems = args.systems.split(",") if args.systems else list(SYSTEMS)
    shuffle = random.Random(args.seed)
    report: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(["python -m benchmarks.bench", *sys.argv[1:]]),
        "events": args.events,
        "partitions": PARTITIONS,
        "repeats": args.repeats,
        "seconds": args.seconds,
        "low_rate": args.low_rate,
        "model": model_description(),
        "logs": str(workdir),
        "runs": [],
    }
    runs: list[Run] = report["runs"]
    for cost in args.models.split(","):
        bench.noop = cost == "noop"
        print(
            f"== {cost}: throughput over a backlog of {args.events} events, {args.repeats} shuffled rounds", flush=True
        )
        backlog = bench.topic(f"backlog-{cost}")
        await bench.create(backlog)
        await bench.produce(backlog, args.events)
        for _ in range(args.repeats):
            for name in shuffle.sample(systems, len(systems)):
                runs.append(await bench.throughput(name, backlog, args.events))
        maxima = {
            name: median(
                r.events_per_s for r in runs if r.model == cost and r.system == name and r.phase == "throughput"
            )
            for name in systems
        }
        print(
            f"== {cost}: latency at 50% of each system's own median throughput and at {args.low_rate:,.0f} ev/s",
            flush=True,
        )
        variants = [*systems, WAIT_VARIANT] if "inference-worker" in systems and cost == "model" else systems
        for _ in range(args.repeats):
            for name in shuffle.sample(variants, len(variants)):
                if name == WAIT_VARIANT:
                    wait = {"FLUSH_WHEN_INPUT_IDLE": "false"}
                    for run in await bench.latencies(
                        "inference-worker", {"low-rate": args.low_rate}, args.seconds, **wait
                    ):
                        run.system = WAIT_VARIANT
                        runs.append(run)
                    continue
                rates = {"low-rate": args.low_rate}
                if maxima[name]:
                    rates["half-load"] = round(maxima[name] * 0.5, -1)
                runs.extend(await bench.latencies(name, rates, args.seconds))
    bench.noop = False
    report["summary"] = summarise(runs)

    compute_256 = model_compute_ms(256)
    report["model_compute_ms"] = {"batch_256": compute_256, "batch_1": model_compute_ms(1)}
    report["model_device"] = str(pick_device("auto"))
    report["model_only_events_per_s"] = 256 / compute_256 * 1000

    if not args.quick and "inference-worker" in systems:
        worker_max = report["summary"]["model"]["throughput"]["inference-worker"]["median"]
        backlog = bench.topic("backlog-sweep")
        await bench.create(backlog)
        await bench.produce(backlog, args.events)
        print("== this worker: throughput against MAX_BATCH_SIZE", flush=True)
        sweep = {}
        for size in (1, 16, 64, 256, 1024):
            sweep[size] = (
                await bench.throughput("inference-worker", backlog, args.events, MAX_BATCH_SIZE=str(size))
            ).events_per_s
        report["throughput_vs_max_batch_size"] = sweep
        print("== every system: latency against offered load, up to its own saturation", flush=True)
        loads: dict[str, list[dict[str, Any]]] = {}
        for name in systems:
            own_max = report["summary"]["model"]["throughput"][name]["median"]
            shares = {f"{share:.0%}": round(own_max * share, -1) for share in (0.25, 0.75, 0.9)}
            for run in await bench.latencies(name, shares, args.seconds):
                loads.setdefault(name, []).append(
                    {"offered_per_s": run.offered_per_s, **run.latency_ms, "problems": run.problems}
                )
        report["latency_vs_load"] = loads
        print("== this worker: 1 against 2 replicas", flush=True)
        two = await bench.throughput("inference-worker", backlog, args.events, REPLICAS="2")
        report["replicas"] = {"1": worker_max, "2": two.events_per_s}
    if args.text_events:
        report["text"] = await text_workload(bench, systems, args)
    report["failed_runs"] = [asdict(run) for run in runs if run.failed]
    report["runs"] = [asdict(run) | {"duplicates": run.duplicates} for run in runs]
    return report


def median(values: Any) -> float:
    ordered = list(values)
    return statistics.median(ordered) if ordered else 0.0


def spread(values: list[float]) -> list[float]:
    return [min(values), max(values)] if values else []


def summarise(runs: list[Run]) -> dict[str, Any]:
    """Per model cost, phase and system: the median and spread (min, max) of its runs, with each run's problems."""
    summary: dict[str, Any] = {}
    for run in runs:
        group = summary.setdefault(run.model, {}).setdefault(run.phase, {})
        entry = group.setdefault(
            run.system, {"values": [], "p50": [], "p99": [], "offered": [], "problems": [], "marked": 0}
        )
        entry["marked"] += bool(run.problems)
        entry["values"].append(run.events_per_s)
        entry["offered"].append(run.offered_per_s)
        if run.latency_ms:
            entry["p50"].append(run.latency_ms["p50"])
            entry["p99"].append(run.latency_ms["p99"])
        entry["problems"] += run.problems
    for phases in summary.values():
        for systems in phases.values():
            for entry in systems.values():
                entry["runs"] = len(entry["values"])
                entry["median"], entry["spread"] = median(entry["values"]), spread(entry["values"])
                for q in ("p50", "p99"):
                    entry[f"{q}_median"], entry[f"{q}_spread"] = median(entry[q]), spread(entry[q])
    return summary


async def text_workload(bench: Bench, systems: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Phases 1 and 2 with the embedding model: where batching should dominate."""
    print(f"== text embeddings ({TEXT}): throughput over a backlog of {args.text_events} texts", flush=True)
    backlog = bench.topic("text-backlog")
    await bench.create(backlog)
    await bench.produce(backlog, args.text_events, model=TEXT)
    runs = {name: await bench.throughput(name, backlog, args.text_events, model=TEXT) for name in systems}
    worker_max = runs["inference-worker"].events_per_s if "inference-worker" in runs else 100.0
    rate = round(worker_max * 0.5)
    print(f"== text embeddings: latency at {rate:,.0f} texts/s offered, {args.seconds:.0f} s", flush=True)
    latency = {name: await bench.latency(name, rate, args.seconds, model=TEXT) for name in systems}
    int8 = None
    if "inference-worker" in systems and pick_device("auto").type != "cpu":
        print("== text embeddings: MODEL_QUANTIZE=dynamic-int8 skipped (it runs on the CPU only)", flush=True)
    elif "inference-worker" in systems:
        print("== text embeddings: this worker with MODEL_QUANTIZE=dynamic-int8", flush=True)
        quantized = {"MODEL_QUANTIZE": "dynamic-int8"}
        int8 = await bench.throughput("inference-worker", backlog, args.text_events, TEXT, **quantized)
    return {
        "int8_events_per_s": int8.events_per_s if int8 else None,
        "model": f"{TEXT} (all-MiniLM-L6-v2, sentence-transformers, 1 torch thread per system)",
        "events": args.text_events,
        "throughput": {name: asdict(run) | {"duplicates": run.duplicates} for name, run in runs.items()},
        "latency_at_half_load": {name: asdict(run) for name, run in latency.items()},
    }


BENCH_EVENT_SCHEMA = {
    "type": "record",
    "name": "BenchEvent",
    "namespace": "bench",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "user_id", "type": "string"},
        {"name": "features", "type": {"type": "array", "items": "double"}},
        {"name": "timestamp", "type": "long"},
    ],
}


async def formats_workload(args: argparse.Namespace) -> dict[str, Any]:
    """This worker with Avro in and out against JSON in and out: the same events, runs alternating."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    from app.records.avro_schemas import avro_schema_of

    workdir = Path(tempfile.mkdtemp(prefix="bench-formats-"))
    bench = Bench(args.bootstrap, workdir)
    registry = SchemaRegistryClient({"url": args.registry_url})
    json_backlog, avro_backlog = bench.topic("json-backlog"), bench.topic("avro-backlog")
    await bench.create(json_backlog, avro_backlog)
    serialize = AvroSerializer(registry, json.dumps(BENCH_EVENT_SCHEMA))  # registers <topic>-value, as a producer would
    context = SerializationContext(avro_backlog, MessageField.VALUE)

    def avro_event(event: dict[str, Any]) -> bytes:
        value: bytes = serialize(event, context)
        return value

    # The same events (same seed) in both topics; timestamps are epoch ms in both.
    await bench.produce(json_backlog, args.events)
    bench.factory = EventFactory(ModelRegistry(REPO_ROOT / "models").metadata(TABULAR), seed=11, run_id=bench.run_id)
    await bench.produce(avro_backlog, args.events, encode=avro_event)

    import fastavro

    parsed = fastavro.parse_schema(avro_schema_of("prediction_result"))

    def read_avro(value: bytes) -> dict[str, Any]:
        buffer = io.BytesIO(value)
        buffer.seek(5)  # magic byte and schema id: the worker's registered PredictionResult schema
        record = fastavro.schemaless_reader(buffer, parsed, None)
        assert isinstance(record, dict)
        return record

    avro = {"INPUT_FORMAT": "avro", "OUTPUT_FORMAT": "avro", "SCHEMA_REGISTRY_URL": args.registry_url}
    rates: dict[str, list[float]] = {"json": [], "avro": []}
    print(f"== this worker: Avro in and out against JSON, {args.events} events, {args.rounds} rounds", flush=True)
    for _ in range(args.rounds):
        rates["json"].append((await bench.throughput("inference-worker", json_backlog, args.events)).events_per_s)
        bench.decode_result = read_avro
        rates["avro"].append(
            (await bench.throughput("inference-worker", avro_backlog, args.events, **avro)).events_per_s
        )
        bench.decode_result = orjson.loads
    json_rate, avro_rate = statistics.mean(rates["json"]), statistics.mean(rates["avro"])
    ratio = avro_rate / json_rate if json_rate else 0.0
    print(
        f"== Avro/JSON throughput ratio: {ratio:.2f} ({avro_rate:,.0f} vs {json_rate:,.0f} events/s, means)", flush=True
    )
    return {
        "machine": machine(),
        "events": args.events,
        "partitions": PARTITIONS,
        "model": model_description(),
        "registry": args.registry_url,
        "events_per_s": rates,
        "avro_to_json_ratio": ratio,
        "logs": str(workdir),
    }


def write_outputs(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "RESULTS.md").write_text(markdown(report))
    plots(report, out)
    print(f"wrote {out / 'results.json'}, {out / 'RESULTS.md'} and plots", flush=True)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {report['machine']}. Model: {report['model']}. {report['events']} events, "
        f"{report['partitions']} partitions, {report['repeats']} rounds, each running every system alone in "
        f"a new shuffled order; medians with the spread (min-max) of the rounds. Command: `{report['command']}`. "
        "Every system gets the same producer settings (acks=all, linger 5 ms, 1 MiB batches, no compression, "
        "idempotent where the client has the switch) and commits about once a second. Latency (p50/p99) is "
        "the broker's acknowledgement of the result minus the event's time, measured at 50% of each system's "
        f"own median throughput and at one shared low rate ({report['low_rate']:,.0f} ev/s), "
        f"{report['seconds']:.0f} s each; a row is marked where the offered rate was not reached or the "
        "outputs fell behind it. The machine (2 cores) is shared with the broker and the load generator, "
        "and here also with other developers: runs vary by tens of percent in throughput and more in tail latency.",
    ]
    for cost, phases in report["summary"].items():
        title = "the model" if cost == "model" else "the no-op model (same outputs, no forward: framework cost only)"
        lines += ["", f"## With {title}", "", *summary_table(phases)]
    failed = report.get("failed_runs", [])
    lines += [
        "",
        f"Runs whose counts in and out differ: {len(failed)}" + (" (the benchmark FAILED)." if failed else "."),
    ]
    compute = report["model_compute_ms"]
    lines += [
        "",
        f"Model compute: {compute['batch_256']:.2f} ms per batch of 256, {compute['batch_1']:.3f} ms per single "
        f"event, on {report.get('model_device', 'cpu')}.",
    ]
    worker = report["summary"].get("model", {}).get("throughput", {}).get("inference-worker", {}).get("median", 0.0)
    if "model_only_events_per_s" in report:
        model_only = report["model_only_events_per_s"]
        lines += [
            "",
            f"Model only (forwards of 256, no Kafka): {model_only:,.0f} events/s; this worker end to end is "
            f"{worker / model_only:.1%} of that, the share of the hardware's limit it reaches.",
        ]
    if "throughput_vs_max_batch_size" in report:
        lines += [
            "",
            "This worker against MAX_BATCH_SIZE: "
            + ", ".join(f"{size}: {rate_:,.0f} ev/s" for size, rate_ in report["throughput_vs_max_batch_size"].items())
            + ".",
        ]
    if "replicas" in report:
        lines += [
            "",
            f"Replicas on this one machine: 1 worker {report['replicas']['1']:,.0f} ev/s, "
            f"2 workers {report['replicas']['2']:,.0f} ev/s (the broker, the load generator and the "
            "workers share the same cores).",
        ]
    if "text" in report:
        text = report["text"]
        text_rate = next((run["offered_per_s"] for run in text["latency_at_half_load"].values()), 0.0)
        lines += [
            "",
            f"## Text embeddings: {text['model']}",
            "",
            f"{text['events']} text events (5-40 words), {report['partitions']} partitions; latency at "
            f"{text_rate:,.0f} texts/s offered (50% of this worker's throughput).",
            "",
            *systems_table(text["throughput"], text["latency_at_half_load"], unit="texts/s"),
        ]
        quix = text["throughput"].get("quix-streams", {}).get("events_per_s")
        if text.get("int8_events_per_s") and quix:
            lines += [
                "",
                f"This worker with `MODEL_QUANTIZE=dynamic-int8`: {text['int8_events_per_s']:,.0f} texts/s, "
                f"{text['int8_events_per_s'] / quix:.2f}x Quix Streams; the vectors then differ from the fp32 "
                "ones (cosine similarity mean 0.977, min 0.950: see MODEL_FORMATS.md).",
            ]
    return "\n".join(lines) + "\n"


def summary_table(phases: dict[str, Any]) -> list[str]:
    throughput = phases.get("throughput", {})
    worker = throughput.get("inference-worker", {}).get("median", 0.0)
    rows = [
        "| system | events/s, median (spread) | this worker is | p50 / p99 ms at 50% of own max (rate) "
        "| p50 / p99 ms at the low rate | marks |",
        "|---|---|---|---|---|---|",
    ]
    names = sorted({*throughput, *phases.get("low-rate", {})}, key=lambda n: (not n.startswith("inference-worker"), n))
    for name in names:
        run = throughput.get(name)
        half, low = phases.get("half-load", {}).get(name), phases.get("low-rate", {}).get(name)
        marked = sum(entry.get("marked", 0) for entry in (run, half, low) if entry)
        runs = sum(entry["runs"] for entry in (run, half, low) if entry)
        marks = sorted(
            {*(run or {}).get("problems", []), *(half or {}).get("problems", []), *(low or {}).get("problems", [])}
        )
        rate = "n/a"
        ratio = "n/a"
        if run:
            low_, high = run["spread"]
            rate = f"{run['median']:,.0f} ({low_:,.0f}-{high:,.0f})"
            ratio = f"{worker / run['median']:.2f}x" if run["median"] else "n/a"
        rows.append(
            f"| {name} | {rate} | {ratio} | {latency_cell(half, with_rate=True)} | {latency_cell(low)} | "
            f"{f'{marked} of {runs} runs: ' + '; '.join(marks) if marks else 'ok'} |"
        )
    return rows


def latency_cell(entry: dict[str, Any] | None, with_rate: bool = False) -> str:
    if not entry or not entry["p50"]:
        return "n/a"
    p50, p99 = entry["p50_spread"], entry["p99_spread"]
    cell = (
        f"{entry['p50_median']:.0f} ({p50[0]:.0f}-{p50[1]:.0f}) / {entry['p99_median']:.0f} ({p99[0]:.0f}-{p99[1]:.0f})"
    )
    return f"{cell} at {median(entry['offered']):,.0f}/s" if with_rate else cell


def systems_table(throughput: dict[str, Any], latency: dict[str, Any], unit: str = "events/s") -> list[str]:
    worker = throughput.get("inference-worker", {}).get("events_per_s") or 0.0
    rows = [
        f"| system | {unit} | this worker is | received / sent | duplicates | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, run in throughput.items():
        lat = latency.get(name, {}).get("latency_ms", {})
        ratio = f"{worker / run['events_per_s']:.2f}x" if run["events_per_s"] else "n/a"
        rows.append(
            f"| {name} | {run['events_per_s']:,.0f} | {ratio} | {run['unique']} / {run['events']} | "
            f"{run['duplicates']} | {lat.get('p50', float('nan')):.0f} | {lat.get('p95', float('nan')):.0f} | "
            f"{lat.get('p99', float('nan')):.0f} |"
        )
    return rows


def plots(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "throughput_vs_max_batch_size" in report:
        sweep = report["throughput_vs_max_batch_size"]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([int(k) for k in sweep], list(sweep.values()), marker="o")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("MAX_BATCH_SIZE")
        ax.set_ylabel("events/s (end to end)")
        ax.set_title("Throughput against max batch size")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "throughput_vs_batch_size.png", dpi=100)
        plt.close(fig)
    summary = report.get("summary", {})
    if summary:
        costs = list(summary)
        names = list(next(iter(summary.values())).get("throughput", {}))
        fig, ax = plt.subplots(figsize=(7, 4))
        width = 0.8 / max(1, len(costs))
        for index, cost in enumerate(costs):
            entries = [summary[cost].get("throughput", {}).get(name, {}) for name in names]
            medians = [entry.get("median", 0.0) for entry in entries]
            errors = [
                [m - entry.get("spread", [m, m])[0] for m, entry in zip(medians, entries, strict=True)],
                [entry.get("spread", [m, m])[1] - m for m, entry in zip(medians, entries, strict=True)],
            ]
            positions = [n + index * width for n in range(len(names))]
            ax.bar(
                positions, medians, width, yerr=errors, capsize=3, label="no-op model" if cost == "noop" else "model"
            )
        ax.set_xticks([n + width * (len(costs) - 1) / 2 for n in range(len(names))], names, rotation=20, ha="right")
        ax.set_ylabel("events/s (median, min-max)")
        ax.set_title("Throughput per system and model cost")
        ax.legend()
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "throughput_per_system.png", dpi=100)
        plt.close(fig)
        # Latency against offered load, per system, up to its own saturation: every latency run of the real model.
        points: dict[str, list[tuple[float, float]]] = {}
        for run in report.get("runs", []):
            if run["model"] == "model" and run["phase"] != "throughput" and run["latency_ms"]:
                points.setdefault(run["system"], []).append((run["offered_per_s"], run["latency_ms"]["p99"]))
        for name, loads in report.get("latency_vs_load", {}).items():
            points.setdefault(name, []).extend((load["offered_per_s"], load["p99"]) for load in loads if "p99" in load)
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, xy in points.items():
            by_rate: dict[float, list[float]] = {}
            for x, y in xy:
                by_rate.setdefault(x, []).append(y)
            rates = sorted(by_rate)  # the median p99 of the runs at each offered rate
            ax.plot(rates, [median(by_rate[x]) for x in rates], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered load, events/s")
        ax.set_ylabel("p99 end-to-end latency, ms (median of runs)")
        ax.set_title("p99 latency against offered load (each up to its own saturation)")
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "latency_vs_load.png", dpi=100)
        plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    local = f"127.0.0.1:{os.environ.get('KAFKA_LOCAL_PORT', '9092')}"  # make kafka-up's broker
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", local))
    parser.add_argument("--events", type=int, default=60000)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each latency run")
    parser.add_argument("--systems", default="", help=f"comma-separated subset of {','.join(SYSTEMS)}")
    parser.add_argument(
        "--quick", action="store_true", help="only the per-system throughput and latency (no sweeps, no replicas)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds, each running every system in a new shuffled order"
    )
    parser.add_argument("--models", default="model,noop", help="model costs: model (the real forward), noop (none)")
    parser.add_argument(
        "--low-rate", type=float, default=1000.0, help="the shared latency rate, below every system's max"
    )
    parser.add_argument(
        "--replot",
        type=Path,
        default=None,
        help="only rewrite RESULTS.md and the plots in --out from this results.json",
    )
    parser.add_argument("--seed", type=int, default=None, help="the shuffle's seed (default: a new order each time)")
    parser.add_argument("--text-events", type=int, default=2000, help="texts for the embedding workload (0: skip it)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks")
    parser.add_argument("--formats", action="store_true", help="only Avro in and out against JSON (formats.json)")
    parser.add_argument("--rounds", type=int, default=2, help="--formats: runs of each format, alternating")
    parser.add_argument(
        "--registry-url",
        default=os.environ.get("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081/apis/ccompat/v7"),
        help="--formats: the Schema Registry (Confluent API); make bench-formats starts the local one",
    )
    arguments = parser.parse_args()
    if arguments.replot:
        saved = json.loads(arguments.replot.read_text())
        saved["summary"] = summarise(
            [Run(**{k: v for k, v in run.items() if k != "duplicates"}) for run in saved["runs"]]
        )
        write_outputs(saved, arguments.out)
    elif arguments.formats:
        formats = asyncio.run(formats_workload(arguments))
        arguments.out.mkdir(parents=True, exist_ok=True)
        (arguments.out / "formats.json").write_text(json.dumps(formats, indent=2) + "\n")
        print(f"wrote {arguments.out / 'formats.json'}", flush=True)
    else:
        report = asyncio.run(main(arguments))
        write_outputs(report, arguments.out)
        if report["failed_runs"]:
            sys.exit(f"FAILED: {len(report['failed_runs'])} runs whose counts in and out differ (see results.json)")
