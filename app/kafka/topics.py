"""The worker's topics: created up front, before any client subscribes, and checked against
what the worker needs (its internal topics must be partitioned like the input topic)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError, for_code

from app.errors import ConfigError
from app.kafka.security import client_config
from app.settings import Settings, TopicSettings

log = logging.getLogger(__name__)

METADATA_WAIT_S = 10.0  # how long topics just created may take to show in the brokers' metadata


def worker_topics(topics: TopicSettings) -> tuple[str, ...]:
    """The topics a worker reads and writes, besides Faust's internal ones."""
    return (
        topics.input_topic,
        topics.output_topic,
        topics.dead_letter_topic,
        topics.stats_topic,
        topics.shadow_topic,
    )


async def ensure_worker_topics(settings: Settings) -> dict[str, int]:
    """``ensure_topics`` for the topics of ``worker_topics``, with TOPIC_PARTITIONS and the Kafka settings."""
    kafka, topics = settings.kafka, settings.topics
    names = worker_topics(topics)
    return await ensure_topics(kafka.bootstrap_servers, names, topics.topic_partitions, **client_config(kafka))


async def ensure_topics(bootstrap_servers: str, names: Iterable[str], partitions: int, **config: Any) -> dict[str, int]:
    """Create each topic that does not exist yet, with ``partitions``; existing topics are left as they are.

    Returns each topic's partition count. Topics are only ever looked up all at once: a metadata
    request that names a missing topic makes a broker with auto.create.topics.enable create it, with
    the broker's default partition count. ``config``: more AIOKafkaAdminClient arguments
    (``app.kafka.security.client_config``)."""
    names = list(names)
    async with _admin(bootstrap_servers, config) as admin:
        existing = await _partition_counts(admin)
        missing = [NewTopic(name, partitions, 1) for name in names if name not in existing]
        if missing:
            await _create(admin, missing, partitions)
        return await _wait_for(admin, names)


async def check_internal_topics(bootstrap_servers: str, needed: Mapping[str, int], app_id: str, **config: Any) -> None:
    """Raise ConfigError, in one line, when an existing internal topic has other partitions than needed.

    ``needed``: each internal topic's name and the partition count the worker will use it with. An
    earlier worker of the same app id, reading an input topic of another width, leaves such topics."""
    async with _admin(bootstrap_servers, config) as admin:
        existing = await _partition_counts(admin)
    for name, partitions in sorted(needed.items()):
        found = existing.get(name)
        if found is not None and found != partitions:
            raise ConfigError(
                f"internal topic {name!r} has {found} partitions, the input topic {partitions}: it was made for "
                f"another input by an earlier worker of WORKER_APP_ID {app_id!r}; delete that app id's internal "
                f"topics ({', '.join(sorted(needed))}) or choose another WORKER_APP_ID"
            )


@asynccontextmanager
async def _admin(bootstrap_servers: str, config: Mapping[str, Any]) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="inference-worker-admin", **config)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def _create(admin: AIOKafkaAdminClient, missing: list[NewTopic], partitions: int) -> None:
    response = await admin.create_topics(missing)
    for topic, code, *_ in response.topic_errors:
        # Another replica or tool may have created it meanwhile: that is fine.
        if code and for_code(code) is not TopicAlreadyExistsError:
            raise for_code(code)(f"cannot create topic {topic!r}")
    log.info("created topics %s with %d partitions", [t.name for t in missing], partitions)


async def _partition_counts(admin: AIOKafkaAdminClient) -> dict[str, int]:
    """Every topic's partition count, from one metadata request for all topics (which creates none)."""
    described = await admin.describe_topics()
    return {topic["topic"]: len(topic["partitions"]) for topic in described if topic["partitions"]}


async def _wait_for(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Each topic's partition count, once the metadata knows them all.

    A topic created a moment ago can still be unknown to the broker answering."""
    deadline = time.monotonic() + METADATA_WAIT_S
    while True:
        counts = await _partition_counts(admin)
        unknown = [name for name in names if name not in counts]
        if not unknown:
            return {name: counts[name] for name in names}
        if time.monotonic() > deadline:
            raise UnknownTopicOrPartitionError(
                f"topics {unknown} not in the brokers' metadata after {METADATA_WAIT_S:.0f} s"
            )
        await asyncio.sleep(0.1)
