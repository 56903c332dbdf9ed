"""The worker's one settings object, read once from the environment at start-up.

Every setting is declared once in ``SETTINGS`` (environment variable, type, default, help);
``Settings.from_env`` parses and validates them, and ``describe()`` feeds ``--help``.
A bad value raises ``ConfigError`` with one line that names the variable and the fix.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Setting:
    field: str
    env: str
    parse: Callable[[str], Any]
    default: str
    help: str
    check: Callable[[Any], bool] = lambda _value: True
    requirement: str = ""


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{raw!r} is not a boolean (use true or false)")


def _names(raw: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in raw.split(",") if name.strip())


def _positive(value: float) -> bool:
    return value > 0


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "bootstrap_servers",
        "KAFKA_BOOTSTRAP_SERVERS",
        str,
        "127.0.0.1:9092",
        "Kafka brokers, comma-separated host:port",
        lambda v: bool(v.strip()),
        "must not be empty",
    ),
    Setting(
        "app_id",
        "WORKER_APP_ID",
        str,
        "inference-worker",
        "Faust app id; also the Kafka consumer group shared by all replicas",
    ),
    Setting("input_topic", "INPUT_TOPIC", str, "events", "topic of PredictionEvent records"),
    Setting("output_topic", "OUTPUT_TOPIC", str, "predictions", "topic PredictionResult records go to"),
    Setting(
        "dead_letter_topic",
        "DEAD_LETTER_TOPIC",
        str,
        "events.dlq",
        "topic records that cannot be predicted go to, untouched, with the reason in headers",
    ),
    Setting(
        "session_timeout_s",
        "KAFKA_SESSION_TIMEOUT_S",
        float,
        "30",
        "a worker silent this long leaves the consumer group and its partitions move (3-300 s)",
        lambda v: 3 <= v <= 300,
        "must be between 3 and 300 seconds",
    ),
    Setting(
        "topic_partitions",
        "TOPIC_PARTITIONS",
        int,
        "4",
        "partitions for topics the worker creates (the most replicas that can share the work)",
        _positive,
        "must be >= 1",
    ),
    Setting(
        "model_dir",
        "MODEL_DIR",
        Path,
        str(REPO_ROOT / "models"),
        "model registry root: <MODEL_DIR>/<name>/<version>/ holding metadata.json and the artifact",
    ),
    Setting(
        "model_names",
        "MODEL_NAMES",
        _names,
        "breast-cancer",
        "models to load, comma-separated; the first is the default for events without 'model'",
        bool,
        "must name at least one model",
    ),
    Setting(
        "model_version",
        "MODEL_VERSION",
        str,
        "latest",
        "version to load for every model in MODEL_NAMES ('latest' picks the highest)",
    ),
    Setting(
        "device",
        "MODEL_DEVICE",
        str,
        "auto",
        "torch device: auto (cuda when available), cpu or cuda[:N]",
        lambda v: v == "auto" or v == "cpu" or v.startswith("cuda"),
        "must be auto, cpu or cuda[:N]",
    ),
    Setting(
        "model_execution",
        "MODEL_EXECUTION",
        str,
        "auto",
        "where forwards run: thread (off the event loop), inline, or auto (inline if a full batch takes < 2 ms on CPU)",
        lambda v: v in {"auto", "inline", "thread"},
        "must be auto, inline or thread",
    ),
    Setting("half_precision", "MODEL_HALF_PRECISION", _bool, "false", "run the model in float16 (cuda only)"),
    Setting(
        "torch_threads",
        "TORCH_THREADS",
        int,
        "0",
        "CPU threads for torch; 0 keeps torch's default",
        lambda v: v >= 0,
        "must be >= 0",
    ),
    Setting(
        "max_batch_size",
        "MAX_BATCH_SIZE",
        int,
        "256",
        "largest batch one model forward takes",
        _positive,
        "must be >= 1",
    ),
    Setting(
        "max_wait_ms",
        "MAX_WAIT_MS",
        float,
        "10",
        "longest a batch waits to fill, from its first record's arrival",
        lambda v: v >= 0,
        "must be >= 0",
    ),
    Setting(
        "batch_retries",
        "BATCH_RETRIES",
        int,
        "1",
        "retries of a failed batch forward before isolating the failing records",
        lambda v: v >= 0,
        "must be >= 0",
    ),
    Setting(
        "max_in_flight",
        "MAX_IN_FLIGHT",
        int,
        "4096",
        "records read but not yet acknowledged; consumption waits when it is reached",
        _positive,
        "must be >= 1",
    ),
    Setting(
        "max_record_bytes",
        "MAX_RECORD_BYTES",
        int,
        "65536",
        "input values larger than this are dead-lettered as oversized",
        _positive,
        "must be >= 1",
    ),
    Setting(
        "publish_retry_backoff_s",
        "PUBLISH_RETRY_BACKOFF_S",
        float,
        "1.0",
        "first pause before re-sending a record the broker did not acknowledge (doubles, max 30 s)",
        _positive,
        "must be > 0",
    ),
    Setting("stats_enabled", "STATS_ENABLED", _bool, "true", "run the windowed statistics agents in this worker"),
    Setting("stats_topic", "STATS_TOPIC", str, "prediction-stats", "topic WindowStats records go to"),
    Setting(
        "stats_window_s",
        "STATS_WINDOW_S",
        float,
        "60",
        "length of the tumbling statistics windows, seconds",
        _positive,
        "must be > 0",
    ),
    Setting(
        "stats_lateness_s",
        "STATS_LATENESS_S",
        float,
        "10",
        "how late (event time) a prediction may arrive and still count in its window",
        lambda v: v >= 0,
        "must be >= 0",
    ),
    Setting(
        "stats_idle_grace_s",
        "STATS_IDLE_GRACE_S",
        float,
        "30",
        "after this long without traffic, event time follows the wall clock so idle windows close",
        _positive,
        "must be > 0",
    ),
    Setting(
        "web_host",
        "WEB_HOST",
        str,
        "127.0.0.1",
        "bind address of the web server (/health, /ready, /models, /stats, /metrics)",
    ),
    Setting(
        "web_port",
        "WEB_PORT",
        int,
        "6066",
        "port of the web server",
        lambda v: 0 < v < 65536,
        "must be a TCP port (1-65535)",
    ),
    Setting("data_dir", "WORKER_DATA_DIR", Path, ".worker-data", "Faust's data folder (table state)"),
    Setting(
        "log_level",
        "LOG_LEVEL",
        str,
        "info",
        "debug, info, warning or error",
        lambda v: v.lower() in {"debug", "info", "warning", "error"},
        "must be debug, info, warning or error",
    ),
)


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str
    app_id: str
    input_topic: str
    output_topic: str
    dead_letter_topic: str
    session_timeout_s: float
    topic_partitions: int
    model_dir: Path
    model_names: tuple[str, ...]
    model_version: str
    device: str
    model_execution: str
    half_precision: bool
    torch_threads: int
    max_batch_size: int
    max_wait_ms: float
    batch_retries: int
    max_in_flight: int
    max_record_bytes: int
    publish_retry_backoff_s: float
    stats_enabled: bool
    stats_topic: str
    stats_window_s: float
    stats_lateness_s: float
    stats_idle_grace_s: float
    web_host: str
    web_port: int
    data_dir: Path
    log_level: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values = {s.field: _parse(s, env.get(s.env, s.default)) for s in SETTINGS}
        values.update(overrides)
        return cls(**values)

    @property
    def default_model(self) -> str:
        return self.model_names[0]

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _parse(setting: Setting, raw: str) -> Any:
    try:
        value = setting.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{setting.env}={raw!r} is invalid: {exc}") from None
    if not setting.check(value):
        raise ConfigError(f"{setting.env}={raw!r} is invalid: {setting.requirement}")
    return value


def describe() -> str:
    """The settings as help text: one line per environment variable, with its default."""
    width = max(len(s.env) for s in SETTINGS)
    return "\n".join(f"  {s.env:<{width}}  {s.help} (default: {s.default})" for s in SETTINGS)
