"""The worker's one settings object, read once from the environment at start-up.

Each setting is declared once, as a typed field of its section (``KafkaSettings``,
``TopicSettings``, ``SchemaRegistrySettings``, ``ModelSettings``, ``BatchingSettings``,
``StatsSettings``, ``WebSettings``, ``TracingSettings``, ``WorkerSettings``) with its environment
variable, default, help and check. ``Settings.from_env`` parses and validates them; ``describe()``
(``--help``) and ``markdown_table()`` (the README's table) are generated from the same
declarations. Components receive only their section. A bad value raises ``ConfigError`` with one
line that names the variable and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from app.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The checkout, when the package runs from one (tests, benchmarks); an installed copy has none."""
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
"""Files shipped inside the package: ``models/`` (the default registry) and ``schemas/``. In a
checkout they are symlinks to the top-level folders; a built wheel carries them as files."""
BUNDLED_MODELS = BUNDLED_DIR / "models"
BUNDLED_SCHEMAS = BUNDLED_DIR / "schemas"

T = TypeVar("T")
MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+|latest))")
"""An MLflow model registry URI: a registered model's name, then an alias or a version number."""


@dataclass(frozen=True)
class Declaration:
    """How one setting is read: its variable, default (as written in the environment), help and check."""

    env: str
    default: str
    help: str
    check: Callable[[Any], bool] | None = None
    requirement: str = ""


def setting(
    env: str, default: str, help: str, check: tuple[Callable[[Any], bool], str] | None = None
) -> Any:  # a dataclass field; Any so it can stand as the default of a typed field
    predicate, requirement = check if check is not None else (None, "")
    return dataclasses.field(metadata={"setting": Declaration(env, default, help, predicate, requirement)})


def at_least(minimum: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda value: value >= minimum), f"must be >= {minimum:g}"


def above(minimum: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda value: value > minimum), f"must be > {minimum:g}"


def one_of(*choices: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda value: value in choices), f"must be {', '.join(choices[:-1])} or {choices[-1]}"


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
COMPRESSION_TYPES = ("none", "gzip", "snappy", "lz4", "zstd")
_NO_SUCH_FILE = (lambda path: path is None or path.is_file(), "no such file")


@dataclass(frozen=True)
class KafkaSettings:
    """Broker connection, security, group membership, and how outputs and offsets are committed."""

    bootstrap_servers: str = setting(
        "KAFKA_BOOTSTRAP_SERVERS",
        "127.0.0.1:9092",
        "Kafka brokers, comma-separated host:port",
        (lambda v: bool(v.strip()), "must not be empty"),
    )
    security_protocol: str = setting(
        "KAFKA_SECURITY_PROTOCOL",
        "PLAINTEXT",
        "how clients talk to the brokers: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
        one_of(*SECURITY_PROTOCOLS),
    )
    sasl_mechanism: str = setting(
        "KAFKA_SASL_MECHANISM",
        "PLAIN",
        "SASL mechanism (SASL_* protocols): PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
        one_of(*SASL_MECHANISMS),
    )
    sasl_username: str = setting("KAFKA_SASL_USERNAME", "", "SASL user name (SASL_* protocols)")
    sasl_password: Secret = setting("KAFKA_SASL_PASSWORD", "", "SASL password (SASL_* protocols); never logged")
    ssl_cafile: Path | None = setting(
        "KAFKA_SSL_CAFILE",
        "",
        "PEM file of the CAs that signed the brokers' certificates; empty: the system's CAs",
        _NO_SUCH_FILE,
    )
    ssl_certfile: Path | None = setting(
        "KAFKA_SSL_CERTFILE",
        "",
        "PEM client certificate, for brokers that require TLS client authentication",
        _NO_SUCH_FILE,
    )
    ssl_keyfile: Path | None = setting(
        "KAFKA_SSL_KEYFILE", "", "PEM private key of KAFKA_SSL_CERTFILE (when not inside it)", _NO_SUCH_FILE
    )
    ssl_key_password: Secret = setting("KAFKA_SSL_KEY_PASSWORD", "", "password of KAFKA_SSL_KEYFILE; never logged")
    ssl_check_hostname: bool = setting(
        "KAFKA_SSL_CHECK_HOSTNAME", "true", "check that a broker's certificate names the host connected to"
    )
    session_timeout_s: float = setting(
        "KAFKA_SESSION_TIMEOUT_S",
        "30",
        "a worker silent this long leaves the consumer group and its partitions move (3-300 s)",
        (lambda v: 3 <= v <= 300, "must be between 3 and 300 seconds"),
    )
    processing_guarantee: str = setting(
        "PROCESSING_GUARANTEE",
        "at_least_once",
        "at_least_once, or exactly_once: results, dead letters and input offsets commit in one Kafka "
        "transaction (read the outputs with isolation.level=read_committed)",
        one_of("at_least_once", "exactly_once"),
    )
    transaction_interval_ms: float = setting(
        "KAFKA_TRANSACTION_INTERVAL_MS",
        "100",
        "exactly_once only: how long a transaction collects outputs of one input partition before it commits",
        at_least(0),
    )
    enable_idempotence: bool = setting(
        "KAFKA_ENABLE_IDEMPOTENCE",
        "true",
        "at_least_once: the output producer is idempotent (a batch re-sent after a broker error is written once, "
        "in order); exactly_once always is",
    )
    compression_type: str = setting(
        "KAFKA_COMPRESSION_TYPE",
        "none",
        "compression of the records the worker produces: none, gzip, snappy, lz4 or zstd",
        one_of(*COMPRESSION_TYPES),
    )
    auto_offset_reset: str = setting(
        "KAFKA_AUTO_OFFSET_RESET",
        "earliest",
        "where a consumer group without committed offsets starts: earliest (every retained event) or latest",
        one_of("earliest", "latest"),
    )
    publish_retry_backoff_s: float = setting(
        "PUBLISH_RETRY_BACKOFF_S",
        "1.0",
        "first pause before re-sending a record the broker did not acknowledge (doubles, max 30 s)",
        above(0),
    )

    @property
    def exactly_once(self) -> bool:
        return self.processing_guarantee == "exactly_once"


@dataclass(frozen=True)
class TopicSettings:
    """The topics the worker reads and writes, and the width of those it creates."""

    input_topic: str = setting("INPUT_TOPIC", "events", "topic of PredictionEvent records")
    output_topic: str = setting("OUTPUT_TOPIC", "predictions", "topic PredictionResult records go to")
    dead_letter_topic: str = setting(
        "DEAD_LETTER_TOPIC",
        "events.dlq",
        "topic records that cannot be predicted go to, untouched, with the reason in headers",
    )
    shadow_topic: str = setting(
        "SHADOW_TOPIC", "predictions.shadow", "topic shadow versions' results go to (never the predictions topic)"
    )
    stats_topic: str = setting("STATS_TOPIC", "prediction-stats", "topic WindowStats records go to")
    topic_partitions: int = setting(
        "TOPIC_PARTITIONS",
        "4",
        "partitions for topics the worker creates, the input topic too when missing; internal topics follow the input",
        at_least(1),
    )
    replication_factor: int | None = setting(
        "TOPIC_REPLICATION_FACTOR",
        "",
        "replicas of every topic the worker creates, internal ones included; empty: the cluster's "
        "default.replication.factor (else min(3, brokers))",
        (lambda v: v is None or v >= 1, "must be >= 1"),
    )


RECORD_FORMATS = ("json", "avro", "jsonschema")
EVENT_FIELDS = ("user_id", "features", "text", "timestamp", "event_id", "model")
"""The event contract's fields, which INPUT_FIELD_MAPPING may map to a schema's own."""


def _field_mapping(raw: str) -> dict[str, str]:
    """INPUT_FIELD_MAPPING as a dict; raises ValueError saying what is wrong."""
    if not raw.strip():
        return {}
    try:
        mapping = json.loads(raw)
    except ValueError:
        raise ValueError('not JSON: write an object such as {"user_id": "customer.id"}') from None
    if not isinstance(mapping, dict):
        raise ValueError('must be a JSON object such as {"user_id": "customer.id"}')
    for field, path in mapping.items():
        if field not in EVENT_FIELDS:
            raise ValueError(f"{field!r} is not an event field: map {', '.join(EVENT_FIELDS)}")
        if not isinstance(path, str) or not path.strip("."):
            raise ValueError(f"{field!r} must map to a field name (dotted for a nested field), got {path!r}")
    return mapping


def _valid_field_mapping(raw: str) -> bool:
    try:
        _field_mapping(raw)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class SchemaRegistrySettings:
    """Record formats on the topics, and the Schema Registry (Confluent's API) that holds their schemas."""

    input_format: str = setting(
        "INPUT_FORMAT",
        "json",
        "input records: json (plain UTF-8 JSON), or avro / jsonschema in the Confluent wire format "
        "(magic byte 0, 4-byte schema id; writer schemas fetched from the registry by id)",
        one_of(*RECORD_FORMATS),
    )
    output_format: str = setting(
        "OUTPUT_FORMAT",
        "json",
        "results, shadow results and WindowStats: json, or avro / jsonschema in the Confluent wire format, "
        "their schemas (from schemas/) registered under <topic>-value",
        one_of(*RECORD_FORMATS),
    )
    input_field_mapping: str = setting(
        "INPUT_FIELD_MAPPING",
        "",
        "avro/jsonschema input: event field -> the field of your schema that holds it, as JSON, e.g. "
        '{"user_id": "customer.id", "features": "vector"} (dotted: nested); unmapped fields keep their names',
        (_valid_field_mapping, "must be a JSON object from event fields to field names"),
    )
    url: str = setting(
        "SCHEMA_REGISTRY_URL",
        "",
        "Schema Registry URL (Confluent's REST API; for Apicurio .../apis/ccompat/v7); needed by avro and jsonschema",
        (lambda v: not v or v.startswith(("http://", "https://")), "must be an http:// or https:// URL"),
    )
    basic_auth_user_info: Secret = setting(
        "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", "", "HTTP basic auth as <user>:<password>; never logged"
    )
    ssl_ca_location: Path | None = setting(
        "SCHEMA_REGISTRY_SSL_CA_LOCATION",
        "",
        "PEM file of the CAs that signed the registry's certificate (https); empty: the system's CAs",
        _NO_SUCH_FILE,
    )
    ssl_certificate_location: Path | None = setting(
        "SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION",
        "",
        "PEM client certificate, for a registry that requires TLS client authentication",
        _NO_SUCH_FILE,
    )
    ssl_key_location: Path | None = setting(
        "SCHEMA_REGISTRY_SSL_KEY_LOCATION",
        "",
        "PEM private key of SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION",
        _NO_SUCH_FILE,
    )

    @property
    def needed(self) -> bool:
        """Whether any topic's records go through the registry."""
        return self.input_format != "json" or self.output_format != "json"

    @property
    def field_mapping(self) -> dict[str, str]:
        """INPUT_FIELD_MAPPING, parsed: event field -> (dotted) field of the input records."""
        return _field_mapping(self.input_field_mapping)


@dataclass(frozen=True)
class ModelSettings:
    """Which models serve, from where, routed how, and how they run."""

    model_dir: Path = setting(
        "MODEL_DIR",
        str(BUNDLED_MODELS),
        "model registry root: <MODEL_DIR>/<name>/<version>/ holding metadata.json and the artifact",
    )
    model_names: tuple[str, ...] = setting(
        "MODEL_NAMES",
        "breast-cancer",
        "models to load, comma-separated; the first is the default for events without 'model'",
        (bool, "must name at least one model"),
    )
    model_version: str = setting(
        "MODEL_VERSION",
        "latest",
        "version serving every model in MODEL_NAMES without a route ('latest' follows the registry's highest)",
    )
    model_routing: str = setting(
        "MODEL_ROUTING",
        "",
        'routes as JSON, e.g. {"breast-cancer": {"split": {"1": 90, "2": 10}, "shadow": ["3"]}}',
    )
    routing_file: Path | None = setting(
        "ROUTING_FILE", "", "JSON file of routes (as MODEL_ROUTING, which it overrides per model); re-read at run time"
    )
    model_uri: str = setting(
        "MODEL_URI",
        "",
        "serve a model of the MLflow model registry at MLFLOW_TRACKING_URI: models:/<name>@<alias> (follows the "
        "alias) or models:/<name>/<version>; it then names the model and version instead of MODEL_NAMES/MODEL_VERSION",
        (
            lambda v: not v or MODEL_URI.fullmatch(v) is not None,
            "must be models:/<name>@<alias> or models:/<name>/<version>",
        ),
    )
    mlflow_tracking_uri: str = setting(
        "MLFLOW_TRACKING_URI", "", "the MLflow tracking server holding the model registry, e.g. http://mlflow:5000"
    )
    model_cache_dir: Path = setting(
        "MODEL_CACHE_DIR",
        ".model-cache",
        "where versions from the MLflow registry are downloaded to: <MODEL_CACHE_DIR>/<name>/<version>/",
    )
    model_poll_interval_s: float = setting(
        "MODEL_POLL_INTERVAL_S",
        "10",
        "how often to look for new model versions and routing changes (0: only on POST /models/reload)",
        at_least(0),
    )
    device: str = setting(
        "MODEL_DEVICE",
        "auto",
        "torch device: auto (cuda when available), cpu or cuda[:N]",
        (lambda v: v == "auto" or v == "cpu" or v.startswith("cuda"), "must be auto, cpu or cuda[:N]"),
    )
    model_execution: str = setting(
        "MODEL_EXECUTION",
        "auto",
        "where forwards run: thread (off the event loop), inline, or auto (inline if a full batch took < 2 ms at "
        "warm-up, on any device)",
        one_of("auto", "inline", "thread"),
    )
    half_precision: bool = setting(
        "MODEL_HALF_PRECISION",
        "false",
        "allow float16 (cuda only): the warm-up keeps it where it is faster than float32 (always with MODEL_COMPILE)",
    )
    forward_batch_size: int = setting(
        "MODEL_FORWARD_BATCH_SIZE",
        "0",
        "texts per forward of a text model; 0: the model's metadata on the CPU, the fastest at warm-up on cuda",
        at_least(0),
    )
    model_quantize: str = setting(
        "MODEL_QUANTIZE",
        "none",
        "none, or dynamic-int8: Linear layers with int8 weights (CPU, torch models; see benchmarks/MODEL_FORMATS.md)",
        one_of("none", "dynamic-int8"),
    )
    model_compile: bool = setting(
        "MODEL_COMPILE",
        "false",
        "torch.compile each model at load (slower start; see benchmarks/MODEL_FORMATS.md for when it pays)",
    )
    torch_threads: int = setting("TORCH_THREADS", "0", "CPU threads for torch; 0 keeps torch's default", at_least(0))

    @property
    def default_model(self) -> str:
        return self.model_names[0]

    @property
    def from_mlflow(self) -> bool:
        return bool(self.model_uri)


@dataclass(frozen=True)
class BatchingSettings:
    """How records are admitted, batched into forwards and held in flight."""

    max_batch_size: int = setting("MAX_BATCH_SIZE", "256", "largest batch one model forward takes", at_least(1))
    max_wait_ms: float = setting(
        "MAX_WAIT_MS", "10", "longest a batch waits to fill, from its first record's arrival", at_least(0)
    )
    flush_when_input_idle: bool = setting(
        "FLUSH_WHEN_INPUT_IDLE",
        "true",
        "close a batch as soon as the consumer has no more records buffered, instead of waiting out MAX_WAIT_MS",
    )
    batch_retries: int = setting(
        "BATCH_RETRIES", "1", "retries of a failed batch forward before isolating the failing records", at_least(0)
    )
    max_in_flight: int = setting(
        "MAX_IN_FLIGHT",
        "4096",
        "records read but not yet acknowledged; consumption waits when it is reached",
        at_least(1),
    )
    max_record_bytes: int = setting(
        "MAX_RECORD_BYTES", "65536", "input values larger than this are dead-lettered as oversized", at_least(1)
    )
    result_cache_size: int = setting(
        "RESULT_CACHE_SIZE",
        "0",
        "results kept per worker in an LRU cache keyed by (model, version, input); 0 turns it off",
        at_least(0),
    )
    result_cache_ttl_s: float = setting("RESULT_CACHE_TTL_S", "300", "seconds a cached result stays valid", above(0))


@dataclass(frozen=True)
class StatsSettings:
    """The windowed statistics agents."""

    stats_enabled: bool = setting("STATS_ENABLED", "true", "run the windowed statistics agents in this worker")
    stats_window_s: float = setting(
        "STATS_WINDOW_S", "60", "length of the tumbling statistics windows, seconds", above(0)
    )
    stats_lateness_s: float = setting(
        "STATS_LATENESS_S",
        "10",
        "how late (event time) a prediction may arrive and still count in its window",
        at_least(0),
    )
    stats_idle_grace_s: float = setting(
        "STATS_IDLE_GRACE_S",
        "30",
        "after this long without traffic, event time follows the wall clock so idle windows close",
        above(0),
    )


@dataclass(frozen=True)
class WebSettings:
    """The web server: /health, /ready, /models, /stats, /metrics."""

    web_host: str = setting(
        "WEB_HOST", "127.0.0.1", "bind address of the web server (/health, /ready, /models, /stats, /metrics)"
    )
    web_port: int = setting(
        "WEB_PORT", "6066", "port of the web server", (lambda v: 0 < v < 65536, "must be a TCP port (1-65535)")
    )


@dataclass(frozen=True)
class TracingSettings:
    """Trace context carried from inputs to outputs, and optional OpenTelemetry spans."""

    propagated_headers: tuple[str, ...] = setting(
        "PROPAGATED_HEADERS",
        "traceparent,tracestate",
        "input record headers copied onto its results and shadow results, comma-separated (case-insensitive; "
        "dead letters keep every header)",
    )
    tracing: str = setting(
        "TRACING",
        "off",
        "off, or otlp: a span per model batch, linked to its inputs' trace contexts, exported with OTLP over HTTP "
        "(OTEL_EXPORTER_OTLP_* configure it; needs the tracing extra)",
        one_of("off", "otlp"),
    )


@dataclass(frozen=True)
class WorkerSettings:
    """The worker process: its identity, state folder and logging."""

    app_id: str = setting(
        "WORKER_APP_ID", "inference-worker", "Faust app id; also the Kafka consumer group shared by all replicas"
    )
    data_dir: Path = setting("WORKER_DATA_DIR", ".worker-data", "Faust's data folder (table state)")
    log_level: str = setting(
        "LOG_LEVEL",
        "info",
        "debug, info, warning or error",
        (lambda v: v.lower() in {"debug", "info", "warning", "error"}, "must be debug, info, warning or error"),
    )
    log_format: str = setting(
        "LOG_FORMAT",
        "text",
        "text, or json: one JSON object per line (records' topic, partition, offset and event_id as fields)",
        one_of("text", "json"),
    )


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings
    topics: TopicSettings
    schema_registry: SchemaRegistrySettings
    models: ModelSettings
    batching: BatchingSettings
    stats: StatsSettings
    web: WebSettings
    tracing: TracingSettings
    worker: WorkerSettings

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        sections = {section.name: _read_section(_section_type(section), env) for section in dataclasses.fields(cls)}
        _check_security(sections["kafka"])
        _check_schema_registry(sections["schema_registry"])
        sections["models"] = _apply_model_uri(sections["models"], env)
        return cls(**sections)


def defaults(section: type[T]) -> T:
    """A section with every setting at its default (the environment is not read)."""
    value: T = _read_section(section, {})
    return value


def _section_type(section: dataclasses.Field[Any]) -> type[Any]:
    hinted: type[Any] = typing.get_type_hints(Settings)[section.name]
    return hinted


def _read_section(section: type[Any], env: Mapping[str, str]) -> Any:
    hints = typing.get_type_hints(section)
    values = {}
    for name, declaration in _declarations(section):
        raw = env.get(declaration.env, declaration.default)
        values[name] = _parse(declaration, _parser(hints[name]), raw)
    return section(**values)


def _declarations(section: type[Any]) -> Iterator[tuple[str, Declaration]]:
    for field in dataclasses.fields(section):
        yield field.name, field.metadata["setting"]


def _parser(hint: Any) -> Callable[[str], Any]:
    """How a raw environment value becomes the field's type."""
    if hint is bool:
        return _bool
    if hint == tuple[str, ...]:
        return _names
    if isinstance(hint, types.UnionType):  # X | None: empty means None
        inner = _parser(next(arg for arg in typing.get_args(hint) if arg is not type(None)))
        return lambda raw: inner(raw) if raw.strip() else None
    if hint in (str, int, float, Path, Secret):
        parse: Callable[[str], Any] = hint
        return parse
    raise TypeError(f"no parser for settings of type {hint!r}")


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{raw!r} is not a boolean (use true or false)")


def _names(raw: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in raw.split(",") if name.strip())


def _parse(declaration: Declaration, parse: Callable[[str], Any], raw: str) -> Any:
    if declaration.env in UPPERCASE:
        raw = raw.strip().upper()
    elif declaration.env in LOWERCASE:
        raw = raw.strip().lower()
    try:
        value = parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{declaration.env}={raw!r} is invalid: {exc}") from None
    if declaration.check is not None and not declaration.check(value):
        raise ConfigError(f"{declaration.env}={raw!r} is invalid: {declaration.requirement}")
    return value


UPPERCASE = {"KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM"}
LOWERCASE = {"KAFKA_COMPRESSION_TYPE", "KAFKA_AUTO_OFFSET_RESET"}
"""Settings read case-insensitively, as Kafka's clients do."""


def _check_security(kafka: KafkaSettings) -> None:
    """Settings that contradict each other would fail later and less clearly, or silently connect
    without the intended protection."""
    values = dataclasses.asdict(kafka)
    protocol = kafka.security_protocol
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
    if kafka.ssl_keyfile is not None and kafka.ssl_certfile is None:
        raise ConfigError("KAFKA_SSL_KEYFILE set without KAFKA_SSL_CERTFILE: set the certificate too")


def _check_schema_registry(registry: SchemaRegistrySettings) -> None:
    if registry.needed and not registry.url:
        formats = [
            f"{env}={value}"
            for env, value in (("INPUT_FORMAT", registry.input_format), ("OUTPUT_FORMAT", registry.output_format))
            if value != "json"
        ]
        raise ConfigError(
            f"{' and '.join(formats)} needs SCHEMA_REGISTRY_URL: set it (registry/registry.sh url prints the local one)"
        )
    if registry.ssl_key_location is not None and registry.ssl_certificate_location is None:
        raise ConfigError(
            "SCHEMA_REGISTRY_SSL_KEY_LOCATION set without SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION: "
            "set the certificate too"
        )
    if registry.basic_auth_user_info and ":" not in registry.basic_auth_user_info.get_secret_value():
        raise ConfigError("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO must be <user>:<password>")


def _apply_model_uri(models: ModelSettings, env: Mapping[str, str]) -> ModelSettings:
    """MODEL_URI names the model and the version (or alias) to serve: it stands for MODEL_NAMES and MODEL_VERSION."""
    match = MODEL_URI.fullmatch(models.model_uri)
    if match is None:
        return models
    if not models.mlflow_tracking_uri:
        raise ConfigError(
            f"MODEL_URI={models.model_uri} needs MLFLOW_TRACKING_URI: set it to the MLflow server, e.g. http://127.0.0.1:5000"
        )
    given = [name for name in ("MODEL_NAMES", "MODEL_VERSION") if name in env]
    if given:
        raise ConfigError(f"MODEL_URI={models.model_uri} names the model and its version: unset {' and '.join(given)}")
    return dataclasses.replace(models, model_names=(match["name"],), model_version=match["alias"] or match["version"])


SASL_CREDENTIALS = (("KAFKA_SASL_USERNAME", "sasl_username"), ("KAFKA_SASL_PASSWORD", "sasl_password"))
SSL_FILES = (
    ("KAFKA_SSL_CAFILE", "ssl_cafile"),
    ("KAFKA_SSL_CERTFILE", "ssl_certfile"),
    ("KAFKA_SSL_KEYFILE", "ssl_keyfile"),
)


def declarations() -> Iterator[tuple[str, Declaration]]:
    """Every setting, section by section: (section name, declaration)."""
    for section in dataclasses.fields(Settings):
        for _, declaration in _declarations(_section_type(section)):
            yield section.name, declaration


def describe() -> str:
    """The settings as help text: one line per environment variable, with its default."""
    width = max(len(declaration.env) for _, declaration in declarations())
    return "\n".join(f"  {d.env:<{width}}  {d.help} (default: {d.default})" for _, d in declarations())


def markdown_table() -> str:
    """The settings as the README's table (``make settings-table`` rewrites it there)."""
    rows = ["| section | variable | default | meaning |", "|---|---|---|---|"]
    for section, d in declarations():
        default = f"`{d.default}`" if d.default else "(empty)"
        if d.env == "MODEL_DIR":
            default = "the models shipped in the package (`models/` of the checkout)"
        meaning = d.help.replace("|", r"\|")
        rows.append(f"| {section} | `{d.env}` | {default} | {meaning} |")
    return "\n".join(rows)
