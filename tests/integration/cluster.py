"""The local three-broker cluster for the replication and broker-loss tests: its nodes stopped,
killed and restarted through kafka/kafka.sh, its leaders and ISRs read from its metadata, and a
stranger's client (confluent-kafka, idempotent) streaming keyed events into it."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka.admin import AIOKafkaAdminClient
from confluent_kafka import Producer

from tests.conftest import ROOT
from tests.integration.streams import FEATURES, Output

KAFKA_SH = str(ROOT / "kafka" / "kafka.sh")
BROKERS = 3
USERS = 120  # keys: enough to reach every partition


@dataclass(frozen=True)
class Cluster:
    servers: str

    def node(self, action: str, node_id: int) -> None:
        """``start``, ``stop`` (SIGTERM) or ``kill`` (SIGKILL) one node."""
        done = subprocess.run([KAFKA_SH, "node", action, str(node_id)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr or done.stdout

    def restore(self) -> None:
        """Every node up and every partition fully in sync again (for the next test)."""
        for node_id in range(1, BROKERS + 1):
            self.node("start", node_id)
        self.wait_in_sync(timeout_s=180)

    def describe(self) -> list[dict[str, Any]]:
        async def describe() -> list[dict[str, Any]]:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.servers, request_timeout_ms=10_000)
            await admin.start()
            try:
                return list(await admin.describe_topics())
            finally:
                await admin.close()

        return asyncio.run(describe())

    def leaders(self, topics: tuple[str, ...]) -> Counter[int]:
        """Partitions of ``topics`` each node leads."""
        counts: Counter[int] = Counter()
        for topic in self.describe():
            if topic["topic"] in topics:
                counts.update(p["leader"] for p in topic["partitions"] if p["leader"] >= 0)
        return counts

    def wait_in_sync(self, timeout_s: float) -> float:
        """Wait until every partition of every topic has a leader and all replicas in sync; the seconds it took."""
        started = time.monotonic()
        while True:
            try:
                topics = self.describe()
                if topics and all(
                    p["leader"] >= 0 and len(p["isr"]) == len(p["replicas"]) for t in topics for p in t["partitions"]
                ):
                    return time.monotonic() - started
            except Exception:  # noqa: BLE001 - a node coming back: ask again
                pass
            assert time.monotonic() - started < timeout_s, f"the cluster is not in sync after {timeout_s:.0f} s"
            time.sleep(1)

    def replication(self, prefix: str) -> dict[str, int]:
        """Replicas of each topic whose name starts with ``prefix`` (the fewest over its partitions)."""
        return {
            t["topic"]: min(len(p["replicas"]) for p in t["partitions"])
            for t in self.describe()
            if t["topic"].startswith(prefix)
        }


def start_cluster() -> tuple[Cluster, bool]:
    """The local cluster, started unless it was up; also whether this call started it."""
    was_up = subprocess.run([KAFKA_SH, "status", "--brokers", str(BROKERS)], capture_output=True).returncode == 0
    done = subprocess.run([KAFKA_SH, "up", "--brokers", str(BROKERS)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip() or done.stdout.strip())
    servers = ",".join(f"127.0.0.1:{9192 + i}" for i in range(BROKERS))
    return Cluster(servers), not was_up


def stop_cluster() -> None:
    subprocess.run([KAFKA_SH, "down", "--brokers", str(BROKERS)], capture_output=True, timeout=300)


def event(index: int) -> tuple[bytes, bytes]:
    """(key, value) of event ``e-<index>``: keyed by its user, as a client partitioning by user would."""
    user = f"u-{index % USERS}"
    features = [float((index + i) % 17) for i in range(FEATURES)]
    value = {"event_id": f"e-{index}", "user_id": user, "features": features, "timestamp": int(time.time() * 1000)}
    return user.encode(), orjson.dumps(value)


@dataclass
class Stream:
    """Events sent at a steady rate from a thread by an idempotent confluent-kafka producer."""

    servers: str
    topic: str
    rate: float
    sent: int = 0
    failed: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, seconds: float) -> threading.Thread:
        thread = threading.Thread(target=self._send, args=(seconds,), daemon=True)
        thread.start()
        return thread

    def _send(self, seconds: float) -> None:
        producer = Producer(
            {
                "bootstrap.servers": self.servers,
                "enable.idempotence": True,  # the input's per-key order is the order sent
                "acks": "all",
                "linger.ms": 5,
                "delivery.timeout.ms": 300_000,
            }
        )

        def delivered(error: Any, message: Any) -> None:
            if error is not None:
                self.failed.append(str(error))

        started = time.monotonic()
        while time.monotonic() - started < seconds and not self.stop.is_set():
            due = int((time.monotonic() - started) * self.rate)
            while self.sent < due:
                key, value = event(self.sent)
                producer.produce(self.topic, value, key, on_delivery=delivered)
                self.sent += 1
            producer.poll(0.005)
        assert producer.flush(300) == 0, "events still unsent after 300 s"


@dataclass(frozen=True)
class Verdict:
    """How the outputs compare with the inputs, key by key."""

    events: int
    lost: int
    duplicates: int
    order_violations: int
    """Outputs of a key that came after an output of a later input of the same key."""
    longest_gap_s: float
    """The longest time between two consecutive outputs (publishing time)."""

    def __str__(self) -> str:
        return (
            f"events {self.events}, lost {self.lost}, duplicates {self.duplicates}, "
            f"order violations {self.order_violations}, longest output gap {self.longest_gap_s:.2f} s"
        )


def judge(inputs: list[Output], outputs: list[Output], event_id: Callable[[Output], str]) -> Verdict:
    """Inputs and outputs as read back from their topics (each in partition, then offset, order)."""
    position: dict[str, int] = {}
    input_order: dict[bytes | None, list[str]] = defaultdict(list)
    for record in inputs:
        identity = orjson.loads(record.value or b"{}")["event_id"]
        position[identity] = len(input_order[record.key])
        input_order[record.key].append(identity)
    seen: Counter[str] = Counter()
    newest: dict[bytes | None, int] = {}
    violations = 0
    for record in sorted(outputs, key=lambda o: (o.partition, o.offset)):
        identity = event_id(record)
        seen[identity] += 1
        at = position.get(identity, -1)
        if at < newest.get(record.key, -1):
            violations += 1
        newest[record.key] = max(at, newest.get(record.key, -1))
    published = sorted(_published_at(o) for o in outputs)
    gaps = [b - a for a, b in itertools.pairwise(published)]
    return Verdict(
        events=len(position),
        lost=len(set(position) - set(seen)),
        duplicates=sum(seen.values()) - len(seen),
        order_violations=violations,
        longest_gap_s=max(gaps, default=0.0),
    )


def _published_at(output: Output) -> float:
    from datetime import datetime

    return datetime.fromisoformat(output.result["predicted_at"]).timestamp()
