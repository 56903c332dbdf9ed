"""The worker's topics: created up front, before any client subscribes, with the replication
factor the worker uses for every topic it creates, and checked against what the worker needs (its
internal topics must be partitioned like the input topic)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    InvalidReplicationFactorError,
    KafkaError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
    for_code,
)

from app.errors import ConfigError
from app.kafka.security import client_config
from app.settings import Settings, TopicSettings

log = logging.getLogger(__name__)

METADATA_WAIT_S = 10.0  # how long topics just created may take to show in the brokers' metadata
DEFAULT_REPLICATION = "default.replication.factor"


@dataclass(frozen=True)
class TopicLayout:
    """What the worker found or made of its topics at start."""

    partitions: dict[str, int]
    """Each topic of ``worker_topics`` and its partition count."""
    replication_factor: int
    """Replicas of every topic the worker creates, faust's internal ones included."""


def worker_topics(topics: TopicSettings) -> tuple[str, ...]:
    """The topics a worker reads and writes, besides Faust's internal ones."""
    return (
        topics.input_topic,
        topics.output_topic,
        topics.dead_letter_topic,
        topics.stats_topic,
        topics.shadow_topic,
    )


async def ensure_worker_topics(settings: Settings) -> TopicLayout:
    """``ensure_topics`` for the topics of ``worker_topics``, with TOPIC_PARTITIONS,
    TOPIC_REPLICATION_FACTOR and the Kafka settings."""
    kafka, topics = settings.kafka, settings.topics
    names, partitions = worker_topics(topics), topics.topic_partitions
    return await _layout(kafka.bootstrap_servers, names, partitions, topics.replication_factor, client_config(kafka))


async def ensure_topics(
    bootstrap_servers: str, names: Iterable[str], partitions: int, replicas: int | None = None, **config: Any
) -> dict[str, int]:
    """Create each topic that does not exist yet, with ``partitions`` and ``replicas`` (None: as
    ``replication_factor`` chooses); existing topics are left as they are.

    Returns each topic's partition count. Topics are only ever looked up all at once: a metadata
    request that names a missing topic makes a broker with auto.create.topics.enable create it, with
    the broker's default partition count. ``config``: more AIOKafkaAdminClient arguments
    (``app.kafka.security.client_config``)."""
    return (await _layout(bootstrap_servers, names, partitions, replicas, config)).partitions


async def _layout(
    bootstrap_servers: str, names: Iterable[str], partitions: int, replicas: int | None, config: Mapping[str, Any]
) -> TopicLayout:
    async with _admin(bootstrap_servers, config) as admin:
        factor = await replication_factor(admin, replicas)
        return TopicLayout(await _ensure(admin, list(names), partitions, factor), factor)


async def replication_factor(admin: AIOKafkaAdminClient, configured: int | None) -> int:
    """``configured``, else the cluster's default.replication.factor, else min(3, brokers)."""
    if configured is not None:
        return configured
    brokers = [broker["node_id"] for broker in (await admin.describe_cluster())["brokers"]]
    resource = ConfigResource(ConfigResourceType.BROKER, str(brokers[0]), {DEFAULT_REPLICATION: None})
    try:
        (response,) = await admin.describe_configs([resource])
        (described,) = response.to_object()["resources"]
        entries = {entry["config_names"]: entry["config_value"] for entry in described["config_entries"]}
        return int(entries[DEFAULT_REPLICATION])
    except (KafkaError, KeyError, ValueError) as exc:  # not allowed to describe configs, say: fall back
        fallback = min(3, len(brokers))
        log.warning("cannot read the cluster's %s (%r): using %d", DEFAULT_REPLICATION, exc, fallback)
        return fallback


async def _ensure(admin: AIOKafkaAdminClient, names: list[str], partitions: int, replicas: int) -> dict[str, int]:
    existing = await _describe(admin)
    missing = [NewTopic(name, partitions, replicas) for name in names if name not in existing]
    if missing:
        await _create(admin, missing)
    for name in names:
        found = existing.get(name)
        if found is not None and found.replicas < replicas:
            log.warning(
                "topic %r has %d replicas, fewer than the %d of topics the worker creates: one broker loss "
                "can lose its records",
                name,
                found.replicas,
                replicas,
            )
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


async def _create(admin: AIOKafkaAdminClient, missing: list[NewTopic]) -> None:
    response = await admin.create_topics(missing)
    for topic, code, *_ in response.topic_errors:
        if code and for_code(code) is InvalidReplicationFactorError:
            raise ConfigError(
                f"cannot create topic {topic!r} with {missing[0].replication_factor} replicas: fewer brokers are up; "
                "start the missing brokers or lower TOPIC_REPLICATION_FACTOR"
            )
        # Another replica or tool may have created it meanwhile: that is fine.
        if code and for_code(code) is not TopicAlreadyExistsError:
            raise for_code(code)(f"cannot create topic {topic!r}")
    first = missing[0]
    log.info(
        "created topics %s with %d partitions and %d replicas",
        [t.name for t in missing],
        first.num_partitions,
        first.replication_factor,
    )


class _Described(NamedTuple):
    partitions: int
    replicas: int


async def _describe(admin: AIOKafkaAdminClient) -> dict[str, _Described]:
    """Every topic's partition count and replicas, from one metadata request for all topics (which creates none)."""
    described = await admin.describe_topics()
    return {
        topic["topic"]: _Described(len(topic["partitions"]), min(len(p["replicas"]) for p in topic["partitions"]))
        for topic in described
        if topic["partitions"]
    }


async def _partition_counts(admin: AIOKafkaAdminClient) -> dict[str, int]:
    return {name: described.partitions for name, described in (await _describe(admin)).items()}


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
