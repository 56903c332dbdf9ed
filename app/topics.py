"""Creating the worker's topics up front, with the partition count replicas scale to."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError, for_code

from app.settings import Settings

log = logging.getLogger(__name__)

METADATA_WAIT_S = 10.0  # how long topics just created may take to show in the brokers' metadata


def worker_topics(settings: Settings) -> tuple[str, ...]:
    """The topics a worker reads and writes, besides Faust's internal ones."""
    return (
        settings.input_topic,
        settings.output_topic,
        settings.dead_letter_topic,
        settings.stats_topic,
        settings.shadow_topic,
    )


async def ensure_topics(bootstrap_servers: str, names: Iterable[str], partitions: int, **config: Any) -> dict[str, int]:
    """Create each topic that does not exist yet; existing topics are left as they are.

    Returns each topic's partition count. ``config``: more AIOKafkaAdminClient arguments
    (``app.security.client_config``)."""
    names = list(names)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="inference-worker-admin", **config)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, partitions, 1) for name in names if name not in existing]
        if missing:
            await _create(admin, missing, partitions)
        return await _partition_counts(admin, names)
    finally:
        await admin.close()


async def _create(admin: AIOKafkaAdminClient, missing: list[NewTopic], partitions: int) -> None:
    response = await admin.create_topics(missing)
    for topic, code, *_ in response.topic_errors:
        # Another replica or tool may have created it meanwhile: that is fine.
        if code and for_code(code) is not TopicAlreadyExistsError:
            raise for_code(code)(f"cannot create topic {topic!r}")
    log.info("created topics %s with %d partitions", [t.name for t in missing], partitions)


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Each topic's partition count, once the metadata knows them all.

    A topic created a moment ago can still be unknown to the broker answering (seen: a worker
    counted 0 input partitions and refused to start)."""
    deadline = time.monotonic() + METADATA_WAIT_S
    while True:
        described = await admin.describe_topics(names)
        unknown = [topic for topic in described if topic["error_code"] or not topic["partitions"]]
        if not unknown:
            return {topic["topic"]: len(topic["partitions"]) for topic in described}
        if time.monotonic() > deadline:
            raise UnknownTopicOrPartitionError(
                f"topics {[t['topic'] for t in unknown]} not in the brokers' metadata after {METADATA_WAIT_S:.0f} s"
            )
        await asyncio.sleep(0.1)
