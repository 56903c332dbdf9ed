"""LOG_FORMAT=json: one JSON object per line, with a record's place and event id as fields."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import sys

import pytest

from app.errors import ConfigError
from app.logs import JsonFormatter, logging_config, record_fields
from app.records.events import SourceRef, event_id_of
from app.settings import Settings


def test_a_record_level_line_carries_topic_partition_offset_and_event_id() -> None:
    logger = logging.getLogger("test.logs")
    record = logger.makeRecord(
        "test.logs",
        logging.WARNING,
        __file__,
        1,
        "dead-lettering %s: %s",
        ("events[2]@41", "not_utf8"),
        None,
        extra=record_fields("events", 2, 41, "e-1", error_class="not_utf8", model="m", version=None),
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    document = json.loads(line)
    assert document.pop("time").endswith("Z")
    assert document == {
        "level": "WARNING",
        "logger": "test.logs",
        "message": "dead-lettering events[2]@41: not_utf8",
        "topic": "events",
        "partition": 2,
        "offset": 41,
        "event_id": "e-1",
        "error_class": "not_utf8",
        "model": "m",
    }


def test_an_exception_stays_on_its_line() -> None:
    try:
        raise ValueError("boom\non two lines")
    except ValueError:
        record = logging.getLogger("t").makeRecord("t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exception"]


def test_the_json_configuration_writes_json_lines_and_keeps_existing_loggers() -> None:
    existing = logging.getLogger("app.pipeline.outputs")
    stream = io.StringIO()
    config = logging_config("json", "info")
    config["handlers"]["default"]["stream"] = stream
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logging.config.dictConfig(config)
        existing.warning("hello %s", "there")
        logging.getLogger("quiet").debug("not at info")
    finally:
        root.handlers[:], root.level = saved
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["message"] == "hello there"


def test_log_format_is_text_or_json() -> None:
    assert Settings.from_env({}).worker.log_format == "text"
    assert Settings.from_env({"LOG_FORMAT": "json"}).worker.log_format == "json"
    with pytest.raises(ConfigError, match="LOG_FORMAT='yaml' is invalid: must be text or json"):
        Settings.from_env({"LOG_FORMAT": "yaml"})


def test_the_event_id_of_a_record_that_is_not_a_valid_event() -> None:
    source = SourceRef("events", 3, 7)
    assert event_id_of(b'{"event_id": "e-9", "features": "bad"}', source) == "e-9"
    assert event_id_of(b"\xff not json", source) == "events-3-7"
    assert event_id_of(b'{"event_id": 5}', source) == "events-3-7"
    assert event_id_of(None, source) == "events-3-7"
