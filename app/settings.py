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


def _optional_path(raw: str) -> Path | None:
    return Path(raw) if raw.strip() else None


def _positive(value: float) -> bool:
    return value > 0


def _non_negative(value: float) -> bool:
    return value >= 0


class Secret:
    """A value that is never shown: repr and str print a mask, so settings can be logged whole."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _upper(raw: str) -> str:
    return raw.strip().upper()


def _existing_file(value: Path | None) -> bool:
    return value is None or value.is_file()


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
        "security_protocol",
        "KAFKA_SECURITY_PROTOCOL",
        _upper,
        "PLAINTEXT",
        "how clients talk to the brokers: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
        lambda v: v in SECURITY_PROTOCOLS,
        "must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    ),
    Setting(
        "sasl_mechanism",
        "KAFKA_SASL_MECHANISM",
        _upper,
        "PLAIN",
        "SASL mechanism (SASL_* protocols): PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
        lambda v: v in SASL_MECHANISMS,
        "must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
    ),
    Setting("sasl_username", "KAFKA_SASL_USERNAME", str, "", "SASL user name (SASL_* protocols)"),
    Setting("sasl_password", "KAFKA_SASL_PASSWORD", Secret, "", "SASL password (SASL_* protocols); never logged"),
    Setting(
        "ssl_cafile",
        "KAFKA_SSL_CAFILE",
        _optional_path,
        "",
        "PEM file of the CAs that signed the brokers' certificates; empty: the system's CAs",
        _existing_file,
        "no such file",
    ),
    Setting(
        "ssl_certfile",
        "KAFKA_SSL_CERTFILE",
        _optional_path,
        "",
        "PEM client certificate, for brokers that require TLS client authentication",
        _existing_file,
        "no such file",
    ),
    Setting(
        "ssl_keyfile",
        "KAFKA_SSL_KEYFILE",
        _optional_path,
        "",
        "PEM private key of KAFKA_SSL_CERTFILE (when not inside it)",
        _existing_file,
        "no such file",
    ),
    Setting("ssl_key_password", "KAFKA_SSL_KEY_PASSWORD", Secret, "", "password of KAFKA_SSL_KEYFILE; never logged"),
    Setting(
        "ssl_check_hostname",
        "KAFKA_SSL_CHECK_HOSTNAME",
        _bool,
        "true",
        "check that a broker's certificate names the host connected to",
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
        "partitions for topics the worker creates, the input topic too when missing; internal topics follow the input",
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
        "version serving every model in MODEL_NAMES without a route ('latest' follows the registry's highest)",
    ),
    Setting(
        "model_routing",
        "MODEL_ROUTING",
        str,
        "",
        'routes as JSON, e.g. {"breast-cancer": {"split": {"1": 90, "2": 10}, "shadow": ["3"]}}',
    ),
    Setting(
        "routing_file",
        "ROUTING_FILE",
        _optional_path,
        "",
        "JSON file of routes (as MODEL_ROUTING, which it overrides per model); re-read at run time",
    ),
    Setting(
        "model_poll_interval_s",
        "MODEL_POLL_INTERVAL_S",
        float,
        "10",
        "how often to look for new model versions and routing changes (0: only on POST /models/reload)",
        _non_negative,
        "must be >= 0",
    ),
    Setting(
        "shadow_topic",
        "SHADOW_TOPIC",
        str,
        "predictions.shadow",
        "topic shadow versions' results go to (never the predictions topic)",
    ),
    Setting(
        "result_cache_size",
        "RESULT_CACHE_SIZE",
        int,
        "0",
        "results kept per worker in an LRU cache keyed by (model, version, input); 0 turns it off",
        _non_negative,
        "must be >= 0",
    ),
    Setting(
        "result_cache_ttl_s",
        "RESULT_CACHE_TTL_S",
        float,
        "300",
        "seconds a cached result stays valid",
        _positive,
        "must be > 0",
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
        "model_quantize",
        "MODEL_QUANTIZE",
        str,
        "none",
        "none, or dynamic-int8: Linear layers with int8 weights (CPU, torch models; see benchmarks/MODEL_FORMATS.md)",
        lambda v: v in {"none", "dynamic-int8"},
        "must be none or dynamic-int8",
    ),
    Setting(
        "model_compile",
        "MODEL_COMPILE",
        _bool,
        "false",
        "torch.compile each model at load (slower start; see benchmarks/MODEL_FORMATS.md for when it pays)",
    ),
    Setting(
        "torch_threads",
        "TORCH_THREADS",
        int,
        "0",
        "CPU threads for torch; 0 keeps torch's default",
        _non_negative,
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
        _non_negative,
        "must be >= 0",
    ),
    Setting(
        "batch_retries",
        "BATCH_RETRIES",
        int,
        "1",
        "retries of a failed batch forward before isolating the failing records",
        _non_negative,
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
    Setting(
        "processing_guarantee",
        "PROCESSING_GUARANTEE",
        str,
        "at_least_once",
        "at_least_once, or exactly_once: results, dead letters and input offsets commit in one Kafka "
        "transaction (read the outputs with isolation.level=read_committed)",
        lambda v: v in {"at_least_once", "exactly_once"},
        "must be at_least_once or exactly_once",
    ),
    Setting(
        "transaction_interval_ms",
        "KAFKA_TRANSACTION_INTERVAL_MS",
        float,
        "100",
        "exactly_once only: how long a transaction collects outputs of one input partition before it commits",
        _non_negative,
        "must be >= 0",
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
        _non_negative,
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
    security_protocol: str
    sasl_mechanism: str
    sasl_username: str
    sasl_password: Secret
    ssl_cafile: Path | None
    ssl_certfile: Path | None
    ssl_keyfile: Path | None
    ssl_key_password: Secret
    ssl_check_hostname: bool
    app_id: str
    input_topic: str
    output_topic: str
    dead_letter_topic: str
    session_timeout_s: float
    topic_partitions: int
    model_dir: Path
    model_names: tuple[str, ...]
    model_version: str
    model_routing: str
    routing_file: Path | None
    model_poll_interval_s: float
    shadow_topic: str
    result_cache_size: int
    result_cache_ttl_s: float
    device: str
    model_execution: str
    half_precision: bool
    model_quantize: str
    model_compile: bool
    torch_threads: int
    max_batch_size: int
    max_wait_ms: float
    batch_retries: int
    max_in_flight: int
    max_record_bytes: int
    publish_retry_backoff_s: float
    processing_guarantee: str
    transaction_interval_ms: float
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
        _check_security(values)
        return cls(**values)

    @property
    def default_model(self) -> str:
        return self.model_names[0]

    @property
    def exactly_once(self) -> bool:
        return self.processing_guarantee == "exactly_once"

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


def _check_security(values: Mapping[str, Any]) -> None:
    """Settings that contradict each other would fail later and less clearly, or silently connect
    without the intended protection."""
    protocol = values["security_protocol"]
    if protocol.startswith("SASL_"):
        missing = [env for env, field in SASL_CREDENTIALS if not values[field]]
        if missing:
            them = "both" if len(missing) > 1 else "it"
            raise ConfigError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs {' and '.join(missing)}: set {them}")
    else:
        given = [env for env, field in SASL_CREDENTIALS if values[field]]
        if given:
            raise ConfigError(
                f"{' and '.join(given)} set but KAFKA_SECURITY_PROTOCOL={protocol} sends no credentials: "
                "use SASL_PLAINTEXT or SASL_SSL, or unset them"
            )
    if not protocol.endswith("SSL"):
        given = [env for env, field in SSL_FILES if values[field] is not None]
        if given:
            raise ConfigError(
                f"{' and '.join(given)} set but KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS: "
                "use SSL or SASL_SSL, or unset them"
            )
    if values["ssl_keyfile"] is not None and values["ssl_certfile"] is None:
        raise ConfigError("KAFKA_SSL_KEYFILE set without KAFKA_SSL_CERTFILE: set the certificate too")


SASL_CREDENTIALS = (("KAFKA_SASL_USERNAME", "sasl_username"), ("KAFKA_SASL_PASSWORD", "sasl_password"))
SSL_FILES = (
    ("KAFKA_SSL_CAFILE", "ssl_cafile"),
    ("KAFKA_SSL_CERTFILE", "ssl_certfile"),
    ("KAFKA_SSL_KEYFILE", "ssl_keyfile"),
)


def describe() -> str:
    """The settings as help text: one line per environment variable, with its default."""
    width = max(len(s.env) for s in SETTINGS)
    return "\n".join(f"  {s.env:<{width}}  {s.help} (default: {s.default})" for s in SETTINGS)
