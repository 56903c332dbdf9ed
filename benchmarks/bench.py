"""End-to-end benchmark: this worker against its peers, in one run, on one broker.

Every system consumes the same events (same seed, same partition count) and writes the same
PredictionResult JSON through the same model, with the same producer settings (the worker's: acks=all,
linger 5 ms, 1 MiB batches, no compression, idempotent) and offsets committed about once a second
(``benchmarks/peers/common.py``). Output topics use LogAppendTime, so a result's timestamp is the
moment the broker acknowledged it; end-to-end latency is that minus the event's timestamp (set when it
was produced). Throughput is the rate of acknowledged outputs after the first burst of them
(``steady_rate``), so start-up and a first batch do not count.

    python -m benchmarks.bench [--events 30000] [--text-events 800] [--quick] [--systems a,b] [--repeats 3]
                               [--models noop,mlp,mlp-10x,minilm] [--latency-models mlp] [--low-rate 1000]
                               [--seconds 5] [--replicas 2] [--out benchmarks]

For each model size in ``--models`` (``MODEL_SIZES``: ``noop``, the default model's outputs with no
forward, so the framework's own cost shows; ``mlp``, the default model; ``mlp-10x``, an MLP with ten
times its compute per row; ``minilm``, text embeddings over text events): (1) throughput over a
backlog, ``--repeats`` rounds, each running every system in a new shuffled order. For each size in
``--latency-models``: (2) latency, again in shuffled rounds and one start of the system per round, at
50% of each system's own median throughput and at one shared rate below every system's capacity
(``--low-rate``, lowered to half the slowest system's throughput if it is not); the worker also runs
with FLUSH_WHEN_INPUT_IDLE=false at the shared rate, to show what closing a batch when the input runs
dry buys. Without ``--quick`` the first latency round also offers each system 25, 75 and 90% of its own
maximum (the latency-against-load curve, each system up to its own saturation). A run whose counts in
and out differ fails the benchmark (exit status 1); a latency row whose offered rate was not reached,
or whose outputs fell behind it, is marked. With ``minilm``: this worker with MODEL_QUANTIZE=dynamic-int8,
one run. Without ``--quick``: (3) this worker's throughput against MAX_BATCH_SIZE; (4) one replica
against ``--replicas``. Writes results.json (every run), RESULTS.md and the plots; ``--replot FILE``
rewrites RESULTS.md and the plots from a results.json without running anything.

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
from aiokafka.errors import GroupCoordinatorNotAvailableError

from app.models.registry import ModelRegistry
from app.models.runner import ModelRunner, pick_device
from app.settings import REPO_ROOT
from app.tools.produce import EventFactory
from benchmarks.peers.common import NOOP_MODEL_ENV
from benchmarks.workload import text_event

PARTITIONS = 4
SYSTEMS = (
    "inference-worker",
    "naive-faust",
    "faust-take",
    "quix-streams",
    "quix-streams-batched",
    "bare-aiokafka",
    "bare-confluent-kafka",
)
PEER_MODULES = {
    "naive-faust": "benchmarks.peers.naive_faust",
    "faust-take": "benchmarks.peers.faust_take",
    "quix-streams": "benchmarks.peers.quix",
    "quix-streams-batched": "benchmarks.peers.quix_batched",
    "bare-aiokafka": "benchmarks.peers.bare_aiokafka",
    "bare-confluent-kafka": "benchmarks.peers.bare_confluent",
}
WORKER_MAX_WAIT_MS = 10.0
FIRST_BURST_MS = 100
TABULAR, WIDE, TEXT = "breast-cancer", "breast-cancer-wide", "minilm"
"""The registry's models the sweep runs: the default MLP, the ten-times-larger one, text embeddings."""


@dataclass(frozen=True)
class ModelSize:
    """One step of the model-size sweep: which registry model every system loads, over which events."""

    name: str
    model: str
    description: str
    noop: bool = False
    """BENCH_NOOP_MODEL: the model's outputs (computed once), no forward: the framework's cost alone."""
    text: bool = False
    """Text events (``benchmarks.workload``) instead of feature events; rates are texts/s."""


MODEL_SIZES = {
    size.name: size
    for size in (
        ModelSize("noop", TABULAR, "no forward (the default model's output, computed once)", noop=True),
        ModelSize("mlp", TABULAR, "breast-cancer, MLP 30-64-2: 2,048 multiply-adds per row (the default model)"),
        ModelSize("mlp-10x", WIDE, "breast-cancer-wide, MLP 30-128-128-2: 20,480 multiply-adds per row"),
        ModelSize("minilm", TEXT, "all-MiniLM-L6-v2 text embeddings, fp32 (texts/s)", text=True),
    )
}
"""The sweep, cheapest first; ``--models`` and ``--latency-models`` name a subset."""
LEGACY_SIZES = {"model": "mlp"}
"""Model-size names of results.json files written before the sweep (``model``: the default model)."""
CURVE_SHARES = (0.25, 0.5, 0.75, 0.9)
"""Shares of a system's own maximum its latency-against-load curve offers it (without ``--quick``)."""


def parse_models(spec: str) -> list[ModelSize]:
    """The model sizes a comma-separated ``spec`` names, in the sweep's order (cheapest first), each once."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODEL_SIZES]
    if unknown:
        raise ValueError(f"unknown model size {', '.join(unknown)}: choose from {','.join(MODEL_SIZES)}")
    return [size for name, size in MODEL_SIZES.items() if name in names]


def check_sizes(sizes: list[ModelSize], latency_sizes: list[ModelSize], text_events: int) -> None:
    """Refuse (one line) latency sizes that are not run, and the text size with no text events."""
    missing = [size.name for size in latency_sizes if size not in sizes]
    if missing:
        raise ValueError(f"--latency-models {','.join(missing)} not in --models: latency needs the size's throughput")
    if text_events <= 0 and any(size.text for size in sizes):
        raise ValueError("--text-events must be above 0 with minilm in --models (leave minilm out to skip texts)")


def parse_systems(spec: str) -> list[str]:
    """The systems a comma-separated ``spec`` names (all of them when empty), in SYSTEMS' order."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown system {', '.join(unknown)}: choose from {','.join(SYSTEMS)}")
    return [name for name in SYSTEMS if name in names or not names]


def offered_rate(events_per_s: float) -> float:
    """A rate to offer: to the nearest 10 events/s, or 0.1 below 100 (text rates), never 0."""
    return max(0.1, float(round(events_per_s, -1 if events_per_s >= 100 else 1)))


def shared_low_rate(requested: float, maxima: dict[str, float]) -> float:
    """The one rate every system is offered: ``requested``, unless it is above half the slowest system's
    measured throughput (then that half), so it is below every system's capacity."""
    measured = [rate for rate in maxima.values() if rate > 0]
    return min(requested, offered_rate(0.5 * min(measured))) if measured else requested


def phase_name(share: float) -> str:
    return "half-load" if share == 0.5 else f"{share:.0%}"


def latency_phases(own_max: float, low_rate: float, curve: bool) -> dict[str, float]:
    """Phase -> offered events/s for one start of a system, lowest rate first: the shared low rate and 50%
    of its own maximum (``half-load``), and with ``curve`` also 25, 75 and 90% of it."""
    rates = {"low-rate": low_rate}
    if own_max:
        for share in CURVE_SHARES if curve else (0.5,):
            rates[phase_name(share)] = offered_rate(own_max * share)
    return dict(sorted(rates.items(), key=lambda item: item[1]))


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
    model: str = "mlp"
    """The model size (``MODEL_SIZES``): ``noop``, ``mlp``, ``mlp-10x`` or ``minilm``."""
    phase: str = "throughput"
    """``throughput`` (a backlog), ``low-rate`` (the shared rate), ``half-load`` (50% of the system's own
    median throughput) or ``25%``, ``75%``, ``90%`` of it (the latency-against-load curve)."""
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
        self.size = MODEL_SIZES["mlp"]
        """The model size every system runs (its model, the no-op switch, feature or text events)."""
        self.last_started_ms = 0.0
        """When the last ``produce`` sent its first event (epoch ms)."""
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
        encode: Callable[[dict[str, Any]], bytes] = orjson.dumps,
    ) -> float:
        """Feature events, or text events for a text model size. ``encode``: the value's format (JSON by
        default). Returns the rate reached, events/s.

        The events are built first; a librdkafka producer (on a thread, so it does not hold up the event
        loop) then stamps and sends them at ``rate`` (0: as fast as it can): a Python producer stalls at a
        few thousand events/s on this machine, below the rates the faster systems are offered."""
        events = [
            text_event(index, self.run_id, self.size.model) if self.size.text else self.factory.event(index)
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
                try:
                    committed = await admin.list_consumer_group_offsets(group, partitions=partitions)
                except GroupCoordinatorNotAvailableError:  # a fresh broker creates __consumer_offsets first
                    committed = {}
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

    def environment(self) -> dict[str, str]:
        """What every system's process gets: this broker, one thread, the model size's no-op switch."""
        return {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "OMP_NUM_THREADS": "1",
            NOOP_MODEL_ENV: "1" if self.size.noop else "0",
        }

    def worker_settings(self, source: str, output: str, group: str, **settings: str) -> dict[str, str]:
        """This worker's settings for a run from ``source`` to ``output`` as app id ``group``."""
        return {
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
            "MODEL_NAMES": self.size.model,
            **settings,
        }

    @contextlib.contextmanager
    def system(self, name: str, source: str, output: str, group: str, **settings: str) -> Iterator[None]:
        env = self.environment()
        if name == "inference-worker":
            env.update(self.worker_settings(source, output, group, **settings))
            command = [sys.executable, "-m", "benchmarks.peers.worker" if self.size.noop else "app", "worker"]
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
                self.size.model,
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

    def drain_timeout_s(self, events: int) -> float:
        """How long a system may take over ``events``: far longer than the slowest should need."""
        return events / (20 if self.size.text else 500)

    async def throughput(self, name: str, backlog: str, events: int, **settings: str) -> Run:
        output = self.topic(f"{name}-out")
        await self.create(output, log_append_time=True)
        run = Run(name, events, settings=settings, output=output, model=self.size.name)
        group = f"bench-{self.run_id}-{output}"
        with self.system(name, backlog, output, group=group, **settings):
            await self.wait_consumed(group, backlog, timeout_s=self.drain_timeout_s(events) + 120)
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

    async def latencies(self, name: str, rates: dict[str, float], seconds: float, **settings: str) -> list[Run]:
        """One start of ``name``, then each phase's load in turn (phase -> offered events/s), ``seconds`` each."""
        source, output = self.topic(f"{name}-lat-in"), self.topic(f"{name}-lat-out")
        await self.create(source)
        await self.create(output, log_append_time=True)
        group = f"bench-{self.run_id}-{output}"
        runs = []
        with self.system(name, source, output, group=group, **settings):
            await self.produce(source, 50, prefix="warm-")
            await self.wait_consumed(group, source, timeout_s=180)
            for index, (phase, rate) in enumerate(rates.items()):
                count = max(1, int(rate * seconds))
                run = Run(name, count, offered_per_s=rate, settings=settings, output=output, phase=phase)
                run.model = self.size.name
                run.produced_per_s = await self.produce(source, count, rate=rate, prefix=f"p{index}-")
                started_ms = self.last_started_ms
                await self.wait_consumed(group, source, timeout_s=self.drain_timeout_s(count) + 60)
                runs.append((run, started_ms))
        by_phase: dict[str, list[tuple[str, int, int]]] = {}
        for row in await self.collect(output):  # read once: every phase's results are in the one topic
            by_phase.setdefault(row[0].split("-", 1)[0], []).append(row)  # p<index of the phase> or warm
        measured = []
        for index, (run, started_ms) in enumerate(runs):
            rows = by_phase.get(f"p{index}", [])
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


def model_compute_ms(batch_size: int, model: str = TABULAR) -> float:
    """Median time of one forward of ``model`` (outputs back on the host), on the device the worker picks."""
    torch.set_num_threads(1)
    device = pick_device("auto")
    runner = ModelRunner.load(ModelRegistry(REPO_ROOT / "models"), model, "latest", device)
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
    """The default model: the registry's latest breast-cancer version, as the worker serves it."""
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
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    bench = Bench(args.bootstrap, workdir)
    systems = parse_systems(args.systems)
    sizes = parse_models(args.models)
    latency_sizes = {size.name for size in parse_models(args.latency_models)}
    shuffle = random.Random(args.seed)
    report: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(["python -m benchmarks.bench", *sys.argv[1:]]),
        "events": args.events,
        "text_events": args.text_events,
        "partitions": PARTITIONS,
        "repeats": args.repeats,
        "seconds": args.seconds,
        "low_rate": args.low_rate,
        "low_rates": {},
        "model": model_description(),
        "models": [size.name for size in sizes],
        "model_sizes": {size.name: size.description for size in sizes},
        "logs": str(workdir),
        "section_s": {},
        "runs": [],
    }
    runs: list[Run] = report["runs"]
    sections: dict[str, float] = report["section_s"]

    def section_done(name: str, since: float) -> float:
        sections[name] = round(time.monotonic() - since, 1)
        print(f"   ({name}: {sections[name]:.0f} s; {time.monotonic() - began:.0f} s in all)", flush=True)
        return time.monotonic()

    for size in sizes:
        bench.size = size
        since = time.monotonic()
        events = args.text_events if size.text else args.events
        print(
            f"== {size.name}: throughput over a backlog of {events} events, {args.repeats} shuffled rounds", flush=True
        )
        backlog = bench.topic(f"backlog-{size.name}")
        await bench.create(backlog)
        await bench.produce(backlog, events)
        for _ in range(args.repeats):
            for name in shuffle.sample(systems, len(systems)):
                runs.append(await bench.throughput(name, backlog, events))
        if size.text and "inference-worker" in systems and pick_device("auto").type != "cpu":
            print(f"== {size.name}: MODEL_QUANTIZE=dynamic-int8 skipped (it runs on the CPU only)", flush=True)
        elif size.text and "inference-worker" in systems:
            print(f"== {size.name}: this worker with MODEL_QUANTIZE=dynamic-int8", flush=True)
            quantized = {"MODEL_QUANTIZE": "dynamic-int8"}
            report["int8"] = {
                "model": size.name,
                "events_per_s": (await bench.throughput("inference-worker", backlog, events, **quantized)).events_per_s,
            }
        since = section_done(f"{size.name} throughput", since)
        if size.name not in latency_sizes:
            continue
        maxima = {
            name: median(
                r.events_per_s for r in runs if r.model == size.name and r.system == name and r.phase == "throughput"
            )
            for name in systems
        }
        low_rate = report["low_rates"][size.name] = shared_low_rate(args.low_rate, maxima)
        curve = "" if args.quick else ", the first round also at 25, 75 and 90% of it"
        print(
            f"== {size.name}: latency at 50% of each system's own median throughput{curve}, and at {low_rate:,.0f} "
            f"ev/s (shared), {args.seconds:.0f} s each",
            flush=True,
        )
        variants = [*systems, WAIT_VARIANT] if "inference-worker" in systems and not size.noop else systems
        for round_ in range(args.repeats):
            for name in shuffle.sample(variants, len(variants)):
                if name == WAIT_VARIANT:
                    wait = {"FLUSH_WHEN_INPUT_IDLE": "false"}
                    for run in await bench.latencies("inference-worker", {"low-rate": low_rate}, args.seconds, **wait):
                        run.system = WAIT_VARIANT
                        runs.append(run)
                    continue
                phases = latency_phases(maxima[name], low_rate, curve=round_ == 0 and not args.quick)
                runs.extend(await bench.latencies(name, phases, args.seconds))
        section_done(f"{size.name} latency", since)
    bench.size = MODEL_SIZES["mlp"]
    report["summary"] = summarise(runs)

    since = time.monotonic()
    report["model_device"] = str(pick_device("auto"))
    report["model_compute_ms"] = {
        size.name: {"batch_256": model_compute_ms(256, size.model), "batch_1": model_compute_ms(1, size.model)}
        for size in sizes
        if not size.noop and not size.text
    }
    if "mlp" in report["model_compute_ms"]:
        report["model_only_events_per_s"] = 256 / report["model_compute_ms"]["mlp"]["batch_256"] * 1000
    since = section_done("model compute", since)

    mlp_summary = report["summary"].get("mlp", {}).get("throughput", {})
    if not args.quick and "inference-worker" in mlp_summary:
        worker_max = mlp_summary["inference-worker"]["median"]
        backlog = bench.topic("backlog-sweep")
        await bench.create(backlog)
        await bench.produce(backlog, args.events)
        print("== mlp: this worker's throughput against MAX_BATCH_SIZE", flush=True)
        sweep = {}
        for batch_size in (1, 16, 64, 256, 1024):
            sweep[batch_size] = (
                await bench.throughput("inference-worker", backlog, args.events, MAX_BATCH_SIZE=str(batch_size))
            ).events_per_s
        report["throughput_vs_max_batch_size"] = sweep
        print(f"== mlp: this worker, 1 against {args.replicas} replicas", flush=True)
        replicated = await bench.throughput("inference-worker", backlog, args.events, REPLICAS=str(args.replicas))
        report["replicas"] = {"1": worker_max, str(args.replicas): replicated.events_per_s}
        section_done("batch sizes and replicas", since)
    report["duration_s"] = round(time.monotonic() - began)
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


NOTES_MARKER = "<!-- Notes below this line are written by hand; make bench keeps them. -->"
"""RESULTS.md's hand-written reading of a run: kept when the tables above it are rewritten."""


def write_outputs(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    results = out / "RESULTS.md"
    results.write_text(with_notes(markdown(report), results.read_text() if results.exists() else ""))
    plots(report, out)
    print(f"wrote {out / 'results.json'}, {out / 'RESULTS.md'} and plots", flush=True)


def with_notes(generated: str, existing: str) -> str:
    """``generated``, then NOTES_MARKER and whatever followed it in ``existing`` (the notes of the run)."""
    notes = existing.split(NOTES_MARKER, 1)[1] if NOTES_MARKER in existing else "\n"
    return f"{generated}\n{NOTES_MARKER}\n{notes.lstrip(chr(10))}"


def normalised(report: dict[str, Any]) -> dict[str, Any]:
    """A results.json as this version writes it: model sizes of older files renamed (``LEGACY_SIZES``), the
    summary recomputed from the runs, ``models`` listed in the sweep's order."""
    runs = [{**run, "model": LEGACY_SIZES.get(run["model"], run["model"])} for run in report["runs"]]
    present = {run["model"] for run in runs}
    models = [name for name in MODEL_SIZES if name in present] + sorted(present - set(MODEL_SIZES))
    summary = summarise([Run(**{k: v for k, v in run.items() if k != "duplicates"}) for run in runs])
    return {**report, "runs": runs, "models": models, "summary": summary}


def ordered_systems(names: Any) -> list[str]:
    """This worker first, then the peers in SYSTEMS' order, then any other name (a variant) by name."""
    rank = {name: index for index, name in enumerate(SYSTEMS)}
    return sorted(set(names), key=lambda name: (rank.get(name, len(SYSTEMS)), name))


def size_description(report: dict[str, Any], name: str) -> str:
    described = report.get("model_sizes", {}).get(name)
    return str(described or (MODEL_SIZES[name].description if name in MODEL_SIZES else name))


def markdown(report: dict[str, Any]) -> str:
    summary = report["summary"]
    sizes = [name for name in report.get("models", list(summary)) if name in summary]
    low_rates = report.get("low_rates") or {name: report["low_rate"] for name in sizes}
    text_events = f" ({report['text_events']} for minilm)" if "minilm" in sizes and report.get("text_events") else ""
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {report['machine']}. Default model: {report['model']}. {report['events']} events{text_events}, "
        f"{report['partitions']} partitions, {report['repeats']} rounds, each running every system alone in "
        f"a new shuffled order; medians with the spread (min-max) of the rounds. Command: `{report['command']}`"
        + (f" ({report['duration_s'] / 60:.0f} minutes)" if "duration_s" in report else "")
        + ". Every system gets the same producer settings (acks=all, linger 5 ms, 1 MiB batches, no compression, "
        "idempotent where the client has the switch) and commits about once a second. Latency (p50/p99) is "
        "the broker's acknowledgement of the result minus the event's time, measured at 50% of each system's "
        f"own median throughput and at one shared rate below every system's capacity, {report['seconds']:.0f} s "
        "each; a row is marked where the offered rate was not reached or the outputs fell behind it. The "
        "machine is shared with the broker and the load generator: runs vary by tens of percent in throughput "
        "and more in tail latency, so the ratios within a run mean more than the absolute rates.",
    ]
    for name in sizes:
        phases = summary[name]
        if not any(phase != "throughput" for phase in phases):
            continue
        lines += [
            "",
            f"## `{name}`: {size_description(report, name)}",
            "",
            f"Shared rate: {low_rates.get(name, report['low_rate']):,.0f} events/s.",
            "",
            *summary_table(phases),
        ]
    lines += ["", "## Throughput per model size", "", *sweep_table(summary, sizes)]
    lines += ["", "This worker's throughput over each system's, per model size:", "", *lead_table(summary, sizes)]
    lines += ["", *(f"- `{name}`: {size_description(report, name)}" for name in sizes)]
    failed = report.get("failed_runs", [])
    lines += [
        "",
        f"Runs whose counts in and out differ: {len(failed)}" + (" (the benchmark FAILED)." if failed else "."),
    ]
    compute = report.get("model_compute_ms", {})
    if "batch_256" in compute:  # results.json before the sweep: the default model's only
        compute = {"mlp": compute}
    device = report.get("model_device", "cpu")
    for name, timing in compute.items():
        lines += [
            "",
            f"Model compute, `{name}`: {timing['batch_256']:.2f} ms per batch of 256, {timing['batch_1']:.3f} ms "
            f"per single event, on {device}.",
        ]
    worker = summary.get("mlp", {}).get("throughput", {}).get("inference-worker", {}).get("median", 0.0)
    if "model_only_events_per_s" in report and worker:
        model_only = report["model_only_events_per_s"]
        lines += [
            "",
            f"Model only (`mlp`, forwards of 256, no Kafka): {model_only:,.0f} events/s; this worker end to end is "
            f"{worker / model_only:.1%} of that, the share of the hardware's limit it reaches.",
        ]
    if "throughput_vs_max_batch_size" in report:
        lines += [
            "",
            "This worker against MAX_BATCH_SIZE (`mlp`, one run each): "
            + ", ".join(f"{size}: {rate_:,.0f} ev/s" for size, rate_ in report["throughput_vs_max_batch_size"].items())
            + ".",
        ]
    if "replicas" in report:
        replicas = report["replicas"]
        lines += [
            "",
            "Replicas of this worker on this one machine (`mlp`): "
            + ", ".join(f"{count}: {rate_:,.0f} ev/s" for count, rate_ in replicas.items())
            + " (1: the median of the rounds above; the broker, the load generator and the workers share the cores).",
        ]
    if report.get("int8"):
        int8 = report["int8"]
        minilm = summary.get(int8["model"], {}).get("throughput", {})
        fp32 = {name: minilm.get(name, {}).get("median", 0.0) for name in ("inference-worker", "quix-streams")}
        versus = ", ".join(
            f"{int8['events_per_s'] / rate_:.2f}x {name} in fp32" for name, rate_ in fp32.items() if rate_
        )
        lines += [
            "",
            f"This worker with `MODEL_QUANTIZE=dynamic-int8` on `{int8['model']}`: {int8['events_per_s']:,.0f} "
            f"texts/s (one run){f', {versus}' if versus else ''}; the vectors then differ from the fp32 ones "
            "(cosine similarity mean 0.977, min 0.950: see MODEL_FORMATS.md).",
        ]
    if report.get("section_s"):
        lines += [
            "",
            "Time per section: "
            + ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in report["section_s"].items())
            + ".",
        ]
    lines += ["", *HOW_TO_READ]
    return "\n".join(lines) + "\n"


HOW_TO_READ = [
    "## How to read the model-size sweep",
    "",
    "- `noop` is each system's transport and framework cost alone (no forward anywhere): this worker's "
    "ratio there is the lead or lag its Kafka path gives it (fetching, decoding, building and producing "
    "results, committing), whatever the model.",
    "- The per-event systems (naive-faust, quix-streams) run one forward per event, so their rate falls as the "
    "model's cost per call grows from `noop` to `mlp` to `mlp-10x`; the batching ones (this worker, faust-take, "
    "quix-streams-batched, the bare loops) run one forward per batch of up to 256 and should lose less of their "
    "`noop` rate. How much this worker's ratio over a per-event system grows from the `noop` column to the `mlp-10x` "
    "one is what batching buys it; its ratio over the other batching systems should stay near its `noop` "
    "ratio: they batch too, so what differs between them is transport.",
    "- `minilm`: the forward dominates every system (milliseconds per text); batching buys less, because "
    "a transformer's cost grows with the batch's padded length, and the ratios show how close each system "
    "gets to the model's own rate.",
    "- Latency against load: each system is offered 25, 50, 75 and 90% of its own measured maximum and the "
    "shared rate; hollow markers are runs whose offered rate was not reached or whose outputs fell behind "
    "it (beyond saturation, where latency measures the backlog, not the system).",
]


def size_cell(entry: dict[str, Any] | None) -> str:
    if not entry or not entry.get("runs"):
        return "n/a"
    low, high = entry["spread"]
    failed = " (!)" if any(problem.startswith("received") for problem in entry.get("problems", [])) else ""
    return f"{entry['median']:,.0f} ({low:,.0f}-{high:,.0f}){failed}"


def sweep_table(summary: dict[str, Any], sizes: list[str]) -> list[str]:
    """Systems by model size: median events/s (texts/s for minilm) with the rounds' spread; (!) marks a run
    whose counts in and out differed."""
    names = ordered_systems(name for size in sizes for name in summary.get(size, {}).get("throughput", {}))
    rows = ["| system | " + " | ".join(f"`{size}`" for size in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for name in names:
        cells = [size_cell(summary.get(size, {}).get("throughput", {}).get(name)) for size in sizes]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def lead_table(summary: dict[str, Any], sizes: list[str]) -> list[str]:
    """This worker's median throughput over each peer's, per model size (n/a where either is missing)."""
    names = ordered_systems(name for size in sizes for name in summary.get(size, {}).get("throughput", {}))
    rows = ["| this worker over | " + " | ".join(f"`{size}`" for size in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for name in names:
        if name == "inference-worker":
            continue
        cells = []
        for size in sizes:
            throughput = summary.get(size, {}).get("throughput", {})
            worker = throughput.get("inference-worker", {}).get("median", 0.0)
            peer = throughput.get(name, {}).get("median", 0.0)
            cells.append(f"{worker / peer:.2f}x" if worker and peer else "n/a")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def summary_table(phases: dict[str, Any]) -> list[str]:
    throughput = phases.get("throughput", {})
    worker = throughput.get("inference-worker", {}).get("median", 0.0)
    rows = [
        "| system | events/s, median (spread) | this worker is | p50 / p99 ms at 50% of own max (rate) "
        "| p50 / p99 ms at the shared rate | marks |",
        "|---|---|---|---|---|---|",
    ]
    for name in ordered_systems({*throughput, *phases.get("low-rate", {})}):
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


def throughput_series(summary: dict[str, Any], sizes: list[str]) -> dict[str, list[tuple[float, float, float] | None]]:
    """Per system, per model size (in ``sizes``' order): (median, min, max) events/s, None where not run."""
    names = ordered_systems(name for size in sizes for name in summary.get(size, {}).get("throughput", {}))
    series: dict[str, list[tuple[float, float, float] | None]] = {}
    for name in names:
        points: list[tuple[float, float, float] | None] = []
        for size in sizes:
            entry = summary.get(size, {}).get("throughput", {}).get(name)
            points.append((entry["median"], *entry["spread"]) if entry and entry.get("values") else None)
        series[name] = points
    return series


@dataclass(frozen=True)
class LoadPoint:
    """One system at one offered load: the medians of its runs there, and whether any run was marked."""

    offered_per_s: float
    p50: float
    p99: float
    marked: bool


def latency_curves(runs: list[dict[str, Any]], size: str) -> dict[str, list[LoadPoint]]:
    """Per system, its latency runs with model size ``size``, one point per phase (its load), by offered rate."""
    phases: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for run in runs:
        if run["model"] == size and run["phase"] != "throughput" and run["latency_ms"]:
            phases.setdefault(run["system"], {}).setdefault(run["phase"], []).append(run)
    curves: dict[str, list[LoadPoint]] = {}
    for name in ordered_systems(phases):
        points = [
            LoadPoint(
                median(run["offered_per_s"] for run in group),
                median(run["latency_ms"]["p50"] for run in group),
                median(run["latency_ms"]["p99"] for run in group),
                any(run["problems"] for run in group),
            )
            for group in phases[name].values()
        ]
        curves[name] = sorted(points, key=lambda point: point.offered_per_s)
    return curves


def plots(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1 else f"{value:g}")  # 2,000, not 2x10^3
    sparse = FuncFormatter(lambda value, _: plain(value) if f"{value:e}"[0] in "25" else "")  # minor ticks: 2s, 5s

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
    sizes = [name for name in report.get("models", list(summary)) if name in summary]
    if not sizes:
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, points in throughput_series(summary, sizes).items():
        xs = [index for index, point in enumerate(points) if point]
        found = [point for point in points if point]
        ax.errorbar(
            xs,
            [point[0] for point in found],
            yerr=[[point[0] - point[1] for point in found], [point[2] - point[0] for point in found]],
            marker="o",
            capsize=3,
            linewidth=2.5 if name == "inference-worker" else 1.2,
            label=name,
        )
    ax.set_xticks(range(len(sizes)), [f"{size}\n{'texts' if size == 'minilm' else 'events'}/s" for size in sizes])
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(plain)
    ax.set_xlabel("model size (compute per event grows to the right)")
    ax.set_ylabel("throughput, median of rounds (min-max)")
    ax.set_title("Throughput per system per model size")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "throughput_per_system.png", dpi=100)
    plt.close(fig)
    latency_size = next((size for size in sizes if any(p != "throughput" for p in summary[size])), None)
    if latency_size is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True)
    for name, curve in latency_curves(report.get("runs", []), latency_size).items():
        for ax, quantile in zip(axes, ("p50", "p99"), strict=True):
            line = ax.plot(
                [point.offered_per_s for point in curve],
                [getattr(point, quantile) for point in curve],
                label=name,
                linewidth=2.5 if name == "inference-worker" else 1.2,
            )[0]
            for point in curve:
                ax.plot(
                    point.offered_per_s,
                    getattr(point, quantile),
                    marker="o",
                    color=line.get_color(),
                    markerfacecolor="none" if point.marked else line.get_color(),
                )
    for ax, quantile in zip(axes, ("p50", "p99"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(sparse)
        ax.set_xlabel("offered load, events/s")
        ax.set_ylabel(f"{quantile} end-to-end latency, ms (median of runs)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"Latency against offered load, `{latency_size}` (each system up to 90% of its own max; hollow: fell behind)"
    )
    fig.tight_layout()
    fig.savefig(out / "latency_vs_load.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    local = f"127.0.0.1:{os.environ.get('KAFKA_LOCAL_PORT', '9092')}"  # make kafka-up's broker
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", local))
    parser.add_argument("--events", type=int, default=30000, help="feature events per throughput backlog")
    parser.add_argument("--text-events", type=int, default=800, help="text events per backlog (minilm)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each latency phase")
    parser.add_argument("--systems", default="", help=f"comma-separated subset of {','.join(SYSTEMS)}")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="no latency-against-load curve, no MAX_BATCH_SIZE sweep, no replicas",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds, each running every system in a new shuffled order"
    )
    parser.add_argument(
        "--models", default=",".join(MODEL_SIZES), help=f"model sizes, of {','.join(MODEL_SIZES)} (throughput)"
    )
    parser.add_argument("--latency-models", default="mlp", help="model sizes whose latency is measured")
    parser.add_argument("--replicas", type=int, default=2, help="this worker's replicas against one (not --quick)")
    parser.add_argument(
        "--low-rate", type=float, default=1000.0, help="the shared latency rate (lowered to half the slowest's max)"
    )
    parser.add_argument(
        "--replot",
        type=Path,
        default=None,
        help="only rewrite RESULTS.md and the plots in --out from this results.json",
    )
    parser.add_argument("--seed", type=int, default=None, help="the shuffle's seed (default: a new order each time)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks")
    parser.add_argument("--formats", action="store_true", help="only Avro in and out against JSON (formats.json)")
    parser.add_argument("--rounds", type=int, default=2, help="--formats: runs of each format, alternating")
    parser.add_argument(
        "--registry-url",
        default=os.environ.get("SCHEMA_REGISTRY_URL", "http://127.0.0.1:8081/apis/ccompat/v7"),
        help="--formats: the Schema Registry (Confluent API); make bench-formats starts the local one",
    )
    arguments = parser.parse_args()
    try:
        parse_systems(arguments.systems)
        check_sizes(parse_models(arguments.models), parse_models(arguments.latency_models), arguments.text_events)
    except ValueError as problem:
        parser.error(str(problem))
    if arguments.replot:
        write_outputs(normalised(json.loads(arguments.replot.read_text())), arguments.out)
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
