"""Log output, configured once at the entry point: text, or one JSON object per line (LOG_FORMAT=json).

Library code logs with ``logging.getLogger(__name__)`` and %-style arguments, and a line about one
record passes where it was read as fields (``record_fields``): the text format shows them in the
message as ``topic[partition]@offset``, the JSON format also as keys of their own, so a log
pipeline can find every line about an event, a partition or an offset:

    {"time": "2026-11-26T14:34:07.230Z", "level": "WARNING", "logger": "app.pipeline.outputs",
     "message": "dead-lettering events[1]@0: not_utf8: ...", "topic": "events", "partition": 1,
     "offset": 0, "event_id": "events-1-0", "error_class": "not_utf8"}
"""

from __future__ import annotations

import logging
import logging.config
import time
from typing import Any

import orjson

TEXT_FORMAT = "[%(asctime)s] %(levelname)s %(name)s: %(message)s"
RECORD_FIELDS = ("topic", "partition", "offset", "event_id", "error_class", "model", "version")
"""The fields a log line about one record may carry, in the order the JSON format writes them."""


def record_fields(
    topic: str, partition: int, offset: int, event_id: str | None = None, **more: str | None
) -> dict[str, Any]:
    """``extra=`` for a log call about one record: where it was read, its event id, and ``more``
    (``error_class``, ``model``, ``version``)."""
    fields: dict[str, Any] = {"topic": topic, "partition": partition, "offset": offset, "event_id": event_id}
    fields.update(more)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO-8601), level, logger, message, the record fields
    given, and the exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        moment = time.gmtime(record.created)
        document: dict[str, Any] = {
            "time": f"{time.strftime('%Y-%m-%dT%H:%M:%S', moment)}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        for name in RECORD_FIELDS:
            value = fields.get(name)
            if value is not None:
                document[name] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(document, default=str).decode()


def logging_config(log_format: str, level: str, stream: str = "ext://sys.stderr") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dictionary: one handler on ``stream`` with the chosen format."""
    formatter: dict[str, Any] = {"()": JsonFormatter} if log_format == "json" else {"format": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "default", "stream": stream}},
        "root": {"level": level.upper(), "handlers": ["default"]},
    }


def configure_logging(log_format: str, level: str) -> None:
    """Log to stderr (the worker's faust logs to stdout: see ``logging_config``)."""
    logging.config.dictConfig(logging_config(log_format, level))
