"""What statistics keep of one delivered prediction or dead letter."""

from __future__ import annotations

from typing import NamedTuple


class Observation(NamedTuple):  # a tuple: built per record, and a frozen dataclass takes three times as long
    model_name: str
    model_version: str
    event_time_ms: float
    source: str
    """``topic:partition`` of the input record observed."""
    offset: int
    dead_letter: bool = False
    prediction: float | None = None
    label: str | None = None
    latency_ms: float | None = None
    batch_size: int | None = None


class SourcePartition(NamedTuple):
    """An input partition, as statistics name it in their records and tables: ``topic:partition``."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}:{self.partition}"

    @classmethod
    def parse(cls, name: str) -> SourcePartition:
        topic, partition = name.rsplit(":", 1)
        return cls(topic, int(partition))


def source_name(topic: str, partition: int) -> str:
    """How statistics name a source partition: ``topic:partition``."""
    return str(SourcePartition(topic, partition))
