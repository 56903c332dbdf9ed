"""Start-up checks that need the broker: a worker refuses, in one line, what it cannot run with."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from app.kafka.topics import ensure_topics
from tests.conftest import ROOT, free_port, run_worker_to_exit
from tests.integration.conftest import Names, create_topics, running_worker, worker_env
from tests.integration.streams import event_value, produce, read_outputs


def test_internal_topics_left_by_a_worker_of_another_input_width_are_one_clear_line(
    bootstrap_servers: str, names: Names, tmp_path: Path
) -> None:
    """A worker of the same app id ran on a 4-partition input and left its internal topics; a
    worker on a 6-partition input must refuse to start, not crash once running."""
    create_topics(bootstrap_servers, names, partitions=4)
    with running_worker(worker_env(bootstrap_servers, names, tmp_path / "earlier"), tmp_path / "earlier.log"):
        pass
    wider = Names(uuid.uuid4().hex[:10])
    env = worker_env(bootstrap_servers, names, tmp_path / "later", INPUT_TOPIC=wider.input_topic)
    asyncio.run(ensure_topics(bootstrap_servers, [wider.input_topic], partitions=6))
    done = run_worker_to_exit({**env, "WEB_PORT": str(free_port())}, timeout_s=120)
    internal = ", ".join(f"{names.app_id}-stats-{t}" for t in ("feed", "partials-changelog", "windows-changelog"))
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"inference-worker: configuration error: internal topic '{names.app_id}-stats-feed' has 4 partitions, "
        f"the input topic 6: it was made for another input by an earlier worker of WORKER_APP_ID "
        f"'{names.app_id}'; delete that app id's internal topics ({internal}) or choose another WORKER_APP_ID"
    )


def test_fresh_starts_create_every_topic_with_the_partitions_asked_for(bootstrap_servers: str, tmp_path: Path) -> None:
    """New topic names each time, nothing created beforehand, and the project's own ``tail``
    subscribed to the outputs before the worker starts: no client may auto-create a topic (the
    broker's default is 1 partition), so every topic has TOPIC_PARTITIONS, the internal ones too."""
    for attempt in range(4):
        names = Names(uuid.uuid4().hex[:10])
        env = worker_env(bootstrap_servers, names, tmp_path / str(attempt), TOPIC_PARTITIONS="3")
        with (tmp_path / f"tail-{attempt}.log").open("wb") as tail_log:
            tail = subprocess.Popen(
                [sys.executable, "-m", "app", "tail", "--idle-timeout", "60"],
                cwd=ROOT,
                env=env,
                stdout=tail_log,
                stderr=subprocess.STDOUT,
            )
            try:
                time.sleep(3.0)  # tail subscribed and asked for the topics' metadata
                with running_worker(env, tmp_path / f"worker-{attempt}.log"):
                    counts = asyncio.run(partition_counts(bootstrap_servers, names.app_id))
            finally:
                tail.terminate()
                tail.wait(30)
        created = {name: count for name, count in counts.items() if name != f"{names.app_id}-__assignor-__leader"}
        assert set(names.topics) <= set(created), created
        assert set(created.values()) == {3}, created


async def partition_counts(bootstrap_servers: str, prefix: str) -> dict[str, int]:
    """Partition counts of the topics whose names start with ``prefix``, without naming (creating) any."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        topics = await admin.describe_topics()
    finally:
        await admin.close()
    return {t["topic"]: len(t["partitions"]) for t in topics if t["topic"].startswith(prefix)}


FAUST_VARIABLES = {
    "BROKER_URL": "kafka://127.0.0.1:1",
    "CONSUMER_AUTO_OFFSET_RESET": "latest",
    "APP_DATADIR": "/nonexistent/faust-data",
    "STORE": "rocksdb://",
    "PRODUCER_ACKS": "0",
}
"""faust's own environment variables, set to values that would break or change a worker that read them."""


def test_faust_own_environment_variables_change_nothing(bootstrap_servers: str, names: Names, tmp_path: Path) -> None:
    """Events sent before the worker starts are predicted (a new group starts at the earliest offset)
    although CONSUMER_AUTO_OFFSET_RESET says latest, on the broker KAFKA_BOOTSTRAP_SERVERS names
    although BROKER_URL names another."""
    create_topics(bootstrap_servers, names)
    asyncio.run(produce(bootstrap_servers, names.input_topic, event_value, 200))
    env = worker_env(bootstrap_servers, names, tmp_path, **FAUST_VARIABLES)
    with running_worker(env, tmp_path / "worker.log"):
        outputs = asyncio.run(read_outputs(bootstrap_servers, (names.output_topic,), lambda r: len(r) >= 200, 60))
    assert {output.result["event_id"] for output in outputs} == {f"e-{i}" for i in range(200)}


def test_topics_just_created_are_counted_with_their_partitions(bootstrap_servers: str) -> None:
    """The counts come from the brokers' metadata, which can lag a creation by a moment: once a
    worker counted 0 input partitions there and refused to start."""

    async def create_and_count() -> list[dict[str, int]]:
        runs = [Names(uuid.uuid4().hex[:10]) for _ in range(20)]
        return [await ensure_topics(bootstrap_servers, names.topics, partitions=3) for names in runs]

    for counts in asyncio.run(create_and_count()):
        assert set(counts.values()) == {3}, counts


def test_more_replicas_than_brokers_is_one_clear_line(bootstrap_servers: str, names: Names, tmp_path: Path) -> None:
    """TOPIC_REPLICATION_FACTOR=3 on the single local broker: the topics cannot be created."""
    env = worker_env(bootstrap_servers, names, tmp_path, TOPIC_REPLICATION_FACTOR="3", WEB_PORT=str(free_port()))
    done = run_worker_to_exit(env, timeout_s=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"inference-worker: configuration error: cannot create topic '{names.input_topic}' with 3 replicas: "
        "fewer brokers are up; start the missing brokers or lower TOPIC_REPLICATION_FACTOR"
    )
