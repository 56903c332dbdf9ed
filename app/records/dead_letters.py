"""Dead-letter records: the original key and value untouched, the reason in headers.

The headers (schemas/dead_letter.schema.json) follow Kafka Connect's dead-letter convention
of naming the failure and the record's origin, under a ``dlq.`` prefix, plus the model the
record was meant for (for statistics). The record's own headers are kept, first, and the
record's timestamp is the input's, so it counts in the event-time window it belongs to.
"""

from __future__ import annotations

from datetime import UTC, datetime

from app.errors import RecordError
from app.models.metadata import ModelMetadata
from app.records.events import SourceRef

Headers = list[tuple[str, bytes]]

HEADER_ERROR_CLASS = "dlq.error.class"
HEADER_ERROR_REASON = "dlq.error.reason"
HEADER_SOURCE_TOPIC = "dlq.source.topic"
HEADER_SOURCE_PARTITION = "dlq.source.partition"
HEADER_SOURCE_OFFSET = "dlq.source.offset"
HEADER_FAILED_AT = "dlq.failed.at"
HEADER_MODEL_NAME = "dlq.model.name"
HEADER_MODEL_VERSION = "dlq.model.version"
MAX_REASON_CHARS = 1000


def dead_letter_headers(
    error: RecordError, source: SourceRef, original: Headers | None, model: ModelMetadata
) -> Headers:
    """``model`` is the one the record was meant for: the one it named, else the worker's default."""
    reason = error.reason[:MAX_REASON_CHARS]
    return [
        *(original or []),
        (HEADER_ERROR_CLASS, error.error_class.encode()),
        (HEADER_ERROR_REASON, reason.encode("utf-8", "replace")),
        (HEADER_SOURCE_TOPIC, source.topic.encode()),
        (HEADER_SOURCE_PARTITION, str(source.partition).encode()),
        (HEADER_SOURCE_OFFSET, str(source.offset).encode()),
        (HEADER_FAILED_AT, datetime.now(UTC).isoformat(timespec="milliseconds").encode()),
        (HEADER_MODEL_NAME, model.name.encode()),
        (HEADER_MODEL_VERSION, model.version.encode()),
    ]
