"""Creating the worker's topics up front, with the partition count replicas scale to."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from app.settings import Settings

log = logging.getLogger(__name__)


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
        described = await admin.describe_topics(names)
        return {topic["topic"]: len(topic["partitions"]) for topic in described}
    finally:
        await admin.close()


async def _create(admin: AIOKafkaAdminClient, missing: list[NewTopic], partitions: int) -> None:
    response = await admin.create_topics(missing)
    for topic, code, *_ in response.topic_errors:
        # Another replica or tool may have created it meanwhile: that is fine.
        if code and for_code(code) is not TopicAlreadyExistsError:
            raise for_code(code)(f"cannot create topic {topic!r}")
    log.info("created topics %s with %d partitions", [t.name for t in missing], partitions)
