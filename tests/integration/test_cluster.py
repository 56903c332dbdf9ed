"""A worker on the local three-broker cluster (replication factor 3, min.insync.replicas=2) while
brokers die, restart one after another, or lose their majority: nothing lost, per-key order kept,
the worker up throughout.

Events come from a stranger's client (an idempotent confluent-kafka producer), keyed by user over
every partition; inputs and outputs are read back from the cluster and compared key by key."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaError

from tests.integration.cluster import Cluster, Stream, Verdict, judge
from tests.integration.conftest import Names, WorkerProcess, running_worker, worker_env
from tests.integration.streams import Output, gauge, read_outputs

PARTITIONS = 6
RATE = 1000.0  # events/s

pytestmark = pytest.mark.timeout(600)


def cluster_worker_env(cluster: Cluster, names: Names, tmp_path: Path, **extra: str) -> dict[str, str]:
    """The worker creates every topic itself, so they get the cluster's default replication factor."""
    return worker_env(cluster.servers, names, tmp_path, TOPIC_PARTITIONS=str(PARTITIONS), **extra)


def at(seconds: float, started: float) -> None:
    """Sleep until ``seconds`` after ``started``."""
    time.sleep(max(0.0, started + seconds - time.monotonic()))


def read_back(
    cluster: Cluster, names: Names, sent: int, isolation_level: str = "read_uncommitted", timeout_s: float = 240
) -> tuple[list[Output], list[Output]]:
    """(inputs, outputs) once an output exists for each of the ``sent`` events, or ``timeout_s`` passed."""

    def every_event_answered(outputs: list[Output]) -> bool:
        return len({o.value for o in outputs}) >= sent and len({event_id(o) for o in outputs}) >= sent

    inputs = retrying(lambda: read_outputs(cluster.servers, (names.input_topic,), lambda r: len(r) >= sent, 120, 1))
    outputs = retrying(
        lambda: read_outputs(
            cluster.servers, (names.output_topic,), every_event_answered, timeout_s, 3, isolation_level=isolation_level
        )
    )
    return inputs, outputs


def retrying(read: Callable[[], Coroutine[Any, Any, list[Output]]]) -> list[Output]:
    """aiokafka's consumer can raise NodeNotReadyError from a fetch to a broker that has just come
    back; a reader a consumer application would restart, so the test reads again."""
    for _ in range(3):
        try:
            return asyncio.run(read())
        except KafkaError as exc:
            print(f"reading back failed ({exc!r}); reading again")
    return asyncio.run(read())


def event_id(output: Output) -> str:
    identity: str = output.result["event_id"]
    return identity


@dataclass
class BusiestLeaderKilled:
    """SIGKILL the broker leading the most input and output partitions ``kill_at_s`` into the stream;
    start it again at ``back_at_s``."""

    cluster: Cluster
    names: Names
    kill_at_s: float
    back_at_s: float
    victim: int = 0

    def __call__(self, started: float) -> None:
        at(self.kill_at_s, started)
        topics = (self.names.input_topic, self.names.output_topic)
        self.victim = self.cluster.leaders(topics).most_common(1)[0][0]
        self.cluster.node("kill", self.victim)
        at(self.back_at_s, started)
        self.cluster.node("start", self.victim)

    def __str__(self) -> str:
        return f"node {self.victim} killed at {self.kill_at_s:.0f} s, back at {self.back_at_s:.0f} s"


def streamed(
    cluster: Cluster, names: Names, worker: WorkerProcess, seconds: float, during: Callable[[float], None]
) -> Stream:
    """Stream events for ``seconds`` while ``during(started)`` acts on the cluster; the worker must
    stay up throughout."""
    stream = Stream(cluster.servers, names.input_topic, RATE)
    started = time.monotonic()
    thread = stream.run(seconds)
    try:
        during(started)
    finally:
        thread.join(timeout=seconds + 360)
    assert not thread.is_alive(), "the producer did not finish"
    assert not stream.failed, f"{len(stream.failed)} events not delivered to the cluster: {stream.failed[:3]}"
    assert worker.process.poll() is None, "the worker must stay up"
    return stream


def report(scenario: str, verdict: Verdict) -> None:
    print(f"\n{scenario}: {verdict}")


def assert_all_answered_in_order(verdict: Verdict, sent: int) -> None:
    """Every event sent is in the input and has an output, and each key's outputs follow its inputs."""
    assert verdict.events == sent
    assert verdict.lost == 0
    assert verdict.order_violations == 0


def test_leader_loss_under_load_loses_nothing_and_keeps_order(cluster: Cluster, names: Names, tmp_path: Path) -> None:
    """SIGKILL the broker leading the most input and output partitions mid-stream, restart it later.
    Every topic the worker created (internal ones too) has three replicas, and once the stream is
    in, losing another broker loses no committed output."""
    env = cluster_worker_env(cluster, names, tmp_path)
    try:
        with running_worker(env, tmp_path / "worker.log") as worker:
            replication = cluster.replication(names.app_id)
            internal = [name for name in replication if name not in names.topics]
            assert internal, f"faust's internal topics missing: {replication}"
            assert set(replication.values()) == {3}, replication
            outage = BusiestLeaderKilled(cluster, names, kill_at_s=10, back_at_s=25)
            stream = streamed(cluster, names, worker, 35, outage)
            inputs, outputs = read_back(cluster, names, stream.sent)
            assert worker.process.poll() is None, "the worker must stay up"
        verdict = judge(inputs, outputs, event_id)
        report(f"leader loss ({outage})", verdict)
        assert_all_answered_in_order(verdict, stream.sent)

        # Committed outputs survive the loss of a broker: read them all with their busiest leader down.
        cluster.wait_in_sync(timeout_s=120)
        busiest = cluster.leaders((names.output_topic,)).most_common(1)[0][0]
        cluster.node("kill", busiest)
        _, survivors = read_back(cluster, names, stream.sent, timeout_s=120)
        assert {event_id(o) for o in survivors} >= {event_id(o) for o in outputs}
    finally:
        cluster.restore()


def test_the_replication_factor_setting_reaches_every_topic(cluster: Cluster, names: Names, tmp_path: Path) -> None:
    """TOPIC_REPLICATION_FACTOR=2 on a cluster whose default is 3: faust's internal topics too."""
    env = cluster_worker_env(cluster, names, tmp_path, TOPIC_REPLICATION_FACTOR="2")
    with running_worker(env, tmp_path / "worker.log"):
        replication = cluster.replication(names.app_id)
    assert set(names.topics) < set(replication), replication
    assert set(replication.values()) == {2}, replication


def test_rolling_restart_loses_nothing_and_keeps_order(cluster: Cluster, names: Names, tmp_path: Path) -> None:
    """Each broker in turn: SIGTERM, start it again, wait until every partition is back in sync."""
    env = cluster_worker_env(cluster, names, tmp_path)
    restarts: list[str] = []
    try:
        with running_worker(env, tmp_path / "worker.log") as worker:

            def restart_each_broker(started: float) -> None:
                at(5, started)
                for node_id in (1, 2, 3):
                    cluster.node("stop", node_id)
                    cluster.node("start", node_id)
                    took = cluster.wait_in_sync(timeout_s=180)
                    restarts.append(f"node {node_id} back in sync {took:.0f} s after its start")
                stream.stop.set()

            stream = Stream(cluster.servers, names.input_topic, RATE)
            started = time.monotonic()
            thread = stream.run(300)
            try:
                restart_each_broker(started)
            finally:
                stream.stop.set()
                thread.join(timeout=400)
            assert not stream.failed, stream.failed[:3]
            inputs, outputs = read_back(cluster, names, stream.sent)
            assert worker.process.poll() is None, "the worker must stay up"
    finally:
        cluster.restore()
    verdict = judge(inputs, outputs, event_id)
    report(f"rolling restart ({'; '.join(restarts)})", verdict)
    assert_all_answered_in_order(verdict, stream.sent)


def test_exactly_once_across_a_broker_kill(cluster: Cluster, names: Names, tmp_path: Path) -> None:
    """PROCESSING_GUARANTEE=exactly_once: a read_committed consumer sees one output per event."""
    env = cluster_worker_env(cluster, names, tmp_path, PROCESSING_GUARANTEE="exactly_once")
    outage = BusiestLeaderKilled(cluster, names, kill_at_s=8, back_at_s=20)
    try:
        with running_worker(env, tmp_path / "worker.log") as worker:
            stream = streamed(cluster, names, worker, 25, outage)
            inputs, outputs = read_back(cluster, names, stream.sent, isolation_level="read_committed")
            assert worker.process.poll() is None, "the worker must stay up"
    finally:
        cluster.restore()
    verdict = judge(inputs, outputs, event_id)
    report(f"exactly-once, {outage}", verdict)
    assert_all_answered_in_order(verdict, stream.sent)
    assert verdict.duplicates == 0


def test_a_minority_waits_then_resumes(cluster: Cluster, names: Names, tmp_path: Path) -> None:
    """Two of three brokers down: the worker stops making progress, says so on /ready and in
    /metrics, and neither crashes nor loses anything; when they return it catches up."""
    env = cluster_worker_env(cluster, names, tmp_path)
    waiting: dict[str, object] = {}
    try:
        with running_worker(env, tmp_path / "worker.log") as worker:

            def lose_the_majority(started: float) -> None:
                at(5, started)
                cluster.node("kill", 2)
                cluster.node("kill", 3)
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    status, body = worker.get("/ready")
                    if status == 503 and b"outputs_unacknowledged_s" in body:
                        waiting["ready"] = body.decode()
                        waiting["gauge"] = gauge(worker, "inference_output_unacknowledged_seconds")
                        if float(waiting["gauge"]) >= 15:  # type: ignore[arg-type]
                            break
                    time.sleep(1)
                assert worker.process.poll() is None, "the worker must not crash while the brokers are away"
                cluster.node("start", 2)
                cluster.node("start", 3)

            stream = streamed(cluster, names, worker, 20, lose_the_majority)
            cluster.wait_in_sync(timeout_s=180)
            inputs, outputs = read_back(cluster, names, stream.sent, timeout_s=300)
            assert worker.process.poll() is None, "the worker must stay up"
            status, _ = worker.get("/ready")
    finally:
        cluster.restore()
    verdict = judge(inputs, outputs, event_id)
    report(f"minority (2 of 3 brokers killed at 5 s; while waiting: {waiting})", verdict)
    assert "ready" in waiting, "/ready never said the outputs were waiting for the brokers"
    assert float(waiting["gauge"]) >= 15  # type: ignore[arg-type]
    assert verdict.events == stream.sent
    assert verdict.lost == 0
    assert status == 200
