"""Start-up checks that need the broker: a worker refuses, in one line, what it cannot run with."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

from app.topics import ensure_topics
from tests.integration.conftest import ROOT, Names, free_port, worker_env


def test_an_input_topic_partitioned_unlike_the_statistics_is_one_clear_line(
    bootstrap_servers: str, names: Names, tmp_path: Path
) -> None:
    asyncio.run(ensure_topics(bootstrap_servers, [names.input_topic], partitions=2))
    env = worker_env(bootstrap_servers, names, tmp_path, TOPIC_PARTITIONS="4", WEB_PORT=str(free_port()))
    done = subprocess.run(
        [sys.executable, "-m", "app", "worker"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"inference-worker: configuration error: INPUT_TOPIC {names.input_topic!r} has 2 partitions, "
        "TOPIC_PARTITIONS is 4: the statistics tables are partitioned like the input, so set "
        "TOPIC_PARTITIONS=2 (or STATS_ENABLED=false)"
    )


def test_topics_just_created_are_counted_with_their_partitions(bootstrap_servers: str) -> None:
    """The counts come from the brokers' metadata, which can lag a creation by a moment: once a
    worker counted 0 input partitions there and refused to start."""

    async def create_and_count() -> list[dict[str, int]]:
        runs = [Names(uuid.uuid4().hex[:10]) for _ in range(20)]
        return [await ensure_topics(bootstrap_servers, names.topics, partitions=3) for names in runs]

    for counts in asyncio.run(create_and_count()):
        assert set(counts.values()) == {3}, counts
