"""End-to-end benchmark: this worker against its peers, in one run, on one broker.

Every system consumes the same events (same seed, same partition count) and writes the same
PredictionResult JSON through the same model. Output topics use LogAppendTime, so a result's
timestamp is the moment the broker acknowledged it; end-to-end latency is that minus the
event's timestamp (set when it was produced). Throughput is the rate of acknowledged outputs
after the first burst of them (``steady_rate``), so start-up and a first batch do not count.

    python -m benchmarks.bench [--events 60000] [--quick] [--systems a,b] [--out benchmarks]

Phases: (1) throughput over a backlog, per system, with counts in = counts out checked;
(2) latency at a fixed offered load (50% of this worker's throughput), per system; (3) this
worker's throughput against MAX_BATCH_SIZE; (4) its latency against offered load;
(5) one against two replicas; (6) phases 1 and 2 again with the text-embedding model (minilm,
text events; needs the text extra). Writes results.json, RESULTS.md and two PNG plots.

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
import os
import platform
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
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.models.registry import ModelRegistry
from app.models.runner import ModelRunner, pick_device
from app.settings import REPO_ROOT
from app.tools.produce import EventFactory
from benchmarks.workload import text_event

PARTITIONS = 4
SYSTEMS = ("inference-worker", "naive-faust", "quix-streams", "bare-aiokafka", "bare-confluent-kafka")
PEER_MODULES = {
    "naive-faust": "benchmarks.peers.naive_faust",
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

    @property
    def duplicates(self) -> int:
        return self.received - self.unique


class Bench:
    def __init__(self, bootstrap: str, workdir: Path) -> None:
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.run_id = uuid.uuid4().hex[:6]
        metadata = ModelRegistry(REPO_ROOT / "models").metadata("breast-cancer")
        self.factory = EventFactory(metadata, seed=11, run_id=self.run_id)
        self._topics = 0
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
    ) -> None:
        """``encode``: the value's format (JSON by default)."""
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, acks="all")
        await producer.start()
        try:
            started = time.perf_counter()
            pending = []
            for index in range(count):
                if rate:
                    ahead = started + index / rate - time.perf_counter()
                    if ahead > 0.001:
                        await asyncio.sleep(ahead)
                event = self.factory.event(index) if model == TABULAR else text_event(index, self.run_id, model)
                event["event_id"] = f"{prefix}{event['event_id']}"
                event["timestamp"] = int(time.time() * 1000)
                pending.append(await producer.send(topic, encode(event), key=event["user_id"].encode()))
                if len(pending) >= 2000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
        finally:
            await producer.stop()

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
            command = [sys.executable, "-m", "app", "worker"]
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
        run = Run(name, events, settings=settings, output=output)
        group = f"bench-{self.run_id}-{output}"
        with self.system(name, backlog, output, group=group, model=model, **settings):
            await self.wait_consumed(group, backlog, timeout_s=events / (500 if model == TABULAR else 20) + 120)
        rows = await self.collect(output)
        run.received, run.unique = len(rows), len({row[0] for row in rows})
        run.events_per_s = steady_rate(sorted(row[2] for row in rows))
        print(
            f"  {name:<22} {run.events_per_s:>9,.0f} ev/s  received {run.received}/{events} "
            f"(duplicates {run.duplicates}) {settings or ''}",
            flush=True,
        )
        return run

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
        f"Python {platform.python_version()}, torch {torch.__version__} (CPU), "
        f"Apache Kafka 3.9.2 single node on the same machine"
    )


async def main(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    bench = Bench(args.bootstrap, workdir)
    systems = args.systems.split(",") if args.systems else list(SYSTEMS)
    report: dict[str, Any] = {
        "machine": machine(),
        "events": args.events,
        "partitions": PARTITIONS,
        "model": model_description(),
        "logs": str(workdir),
    }

    print(f"== throughput over a backlog of {args.events} events ({PARTITIONS} partitions)", flush=True)
    backlog = bench.topic("backlog")
    await bench.create(backlog)
    await bench.produce(backlog, args.events)
    runs = {name: await bench.throughput(name, backlog, args.events) for name in systems}
    report["throughput"] = {name: asdict(run) | {"duplicates": run.duplicates} for name, run in runs.items()}

    worker_max = runs["inference-worker"].events_per_s if "inference-worker" in runs else 5000.0
    rate = round(worker_max * 0.5, -1)
    print(f"== latency at {rate:,.0f} ev/s offered (50% of this worker's throughput), {args.seconds:.0f} s", flush=True)
    latency = {name: await bench.latency(name, rate, args.seconds) for name in systems}
    report["latency_at_half_load"] = {name: asdict(run) for name, run in latency.items()}

    compute_256 = model_compute_ms(256)
    typical = latency.get("inference-worker")
    report["model_compute_ms"] = {"batch_256": compute_256, "batch_1": model_compute_ms(1)}
    report["model_device"] = str(pick_device("auto"))
    report["model_only_events_per_s"] = 256 / compute_256 * 1000
    report["latency_target_ms"] = WORKER_MAX_WAIT_MS + 2 * compute_256 + 20
    if typical and typical.latency_ms:
        report["latency_target_met"] = typical.latency_ms["p99"] <= report["latency_target_ms"]

    if not args.quick and "inference-worker" in systems:
        print("== this worker: throughput against MAX_BATCH_SIZE", flush=True)
        sweep = {}
        for size in (1, 16, 64, 256, 1024):
            sweep[size] = (
                await bench.throughput("inference-worker", backlog, args.events, MAX_BATCH_SIZE=str(size))
            ).events_per_s
        report["throughput_vs_max_batch_size"] = sweep
        print("== this worker: latency against offered load", flush=True)
        loads = {}
        for share in (0.1, 0.25, 0.5, 0.75, 0.9):
            run = await bench.latency("inference-worker", round(worker_max * share, -1), args.seconds)
            loads[share] = {"offered_per_s": run.offered_per_s, **run.latency_ms}
        report["latency_vs_load"] = loads
        print("== this worker: 1 against 2 replicas", flush=True)
        two = await bench.throughput("inference-worker", backlog, args.events, REPLICAS="2")
        report["replicas"] = {"1": worker_max, "2": two.events_per_s}
    if args.text_events:
        report["text"] = await text_workload(bench, systems, args)
    return report


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
    if "inference-worker" in systems:
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
    throughput, latency = report["throughput"], report["latency_at_half_load"]
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {report['machine']}. Model: {report['model']}. {report['events']} events, "
        f"{report['partitions']} partitions; every system ran alone, one after another, in one run "
        "(`make bench`). Latency (p50/p95/p99, at 50% of this worker's throughput) is the broker's "
        "acknowledgement of the result minus the event's time. One run on a 2-core machine shared with "
        "the broker and the load generator: repeated runs vary by tens of percent in throughput and far "
        "more in tail latency.",
        "",
        *systems_table(throughput, latency),
    ]
    worker = throughput.get("inference-worker", {}).get("events_per_s") or 0.0
    rate = next((run["offered_per_s"] for run in latency.values()), 0.0)
    lines += [
        "",
        f"Offered load for latency: {rate:,.0f} events/s. Model compute: "
        f"{report['model_compute_ms']['batch_256']:.2f} ms per batch of 256, "
        f"{report['model_compute_ms']['batch_1']:.3f} ms per single event, on {report.get('model_device', 'cpu')}. "
        f"Latency target (max_wait + 2 x batch compute + 20 ms): {report['latency_target_ms']:.1f} ms"
        + (f", met: {report['latency_target_met']}." if "latency_target_met" in report else "."),
    ]
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
    if "latency_vs_load" in report:
        loads = report["latency_vs_load"]
        offered = [v["offered_per_s"] for v in loads.values()]
        fig, ax = plt.subplots(figsize=(6, 4))
        for q in ("p50", "p95", "p99"):
            ax.plot(offered, [v.get(q) for v in loads.values()], marker="o", label=q)
        ax.set_xlabel("offered load, events/s")
        ax.set_ylabel("end-to-end latency, ms")
        ax.set_title("Latency against offered load")
        ax.legend()
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "latency_vs_load.png", dpi=100)
        plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--events", type=int, default=60000)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each latency run")
    parser.add_argument("--systems", default="", help=f"comma-separated subset of {','.join(SYSTEMS)}")
    parser.add_argument("--quick", action="store_true", help="only the per-system throughput and latency")
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
    if arguments.formats:
        formats = asyncio.run(formats_workload(arguments))
        arguments.out.mkdir(parents=True, exist_ok=True)
        (arguments.out / "formats.json").write_text(json.dumps(formats, indent=2) + "\n")
        print(f"wrote {arguments.out / 'formats.json'}", flush=True)
    else:
        write_outputs(asyncio.run(main(arguments)), arguments.out)
