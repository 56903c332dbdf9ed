"""The Schema Registry (Confluent's REST API): the client from the settings, the checks at start,
the output schemas registered, and the input's writer schemas fetched by id.

``record_formats`` runs at start-up, before the worker consumes: it connects (a registry that
cannot be reached, refuses the credentials or the TLS handshake stops the start with one line,
``ConfigError``), registers the output schemas under ``TopicNameStrategy`` subjects
(``<topic>-value``: PredictionResult for the output and shadow topics, WindowStats for the
statistics topic; Avro generated from ``schemas/``, or those JSON Schemas as they are) and
returns the ``RecordFormats`` the pipeline and the statistics use.

Writer schemas of the input are fetched when a batch names an id not seen before, once per id,
on a thread (Confluent's client is synchronous), so the event loop never waits on the registry
per record. A registry that answers "no such schema" makes the id unknown (its records are
dead-lettered as ``unknown_schema``); one that cannot be reached is retried with backoff while
consumption waits, so no record is dead-lettered for a registry outage.

Confluent's client (``confluent-kafka[avro,json,schemaregistry]``, the ``registry`` extra) is
imported only when a format needs it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from app.errors import ConfigError
from app.records.avro_schemas import avro_schema_of, json_schema_text
from app.records.wire_format import (
    Encode,
    FieldMapping,
    FramedEventDecoder,
    FramedResultDecoder,
    RecordFormats,
    WriterSchema,
    avro_encoder,
    json_encoder,
    json_schema_encoder,
    schema_id_of,
    writer_schema,
)
from app.settings import SchemaRegistrySettings, TopicSettings

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

log = logging.getLogger(__name__)

MAX_FETCH_BACKOFF_S = 30.0


def registry_config(settings: SchemaRegistrySettings) -> dict[str, Any]:
    """The configuration of Confluent's SchemaRegistryClient for these settings."""
    config: dict[str, Any] = {"url": settings.url, "max.retries": 1, "retries.wait.ms": 500}
    if settings.basic_auth_user_info:
        config["basic.auth.credentials.source"] = "USER_INFO"
        config["basic.auth.user.info"] = settings.basic_auth_user_info.get_secret_value()
    if settings.ssl_ca_location is not None:
        config["ssl.ca.location"] = str(settings.ssl_ca_location)
    if settings.ssl_certificate_location is not None:
        config["ssl.certificate.location"] = str(settings.ssl_certificate_location)
    if settings.ssl_key_location is not None:
        config["ssl.key.location"] = str(settings.ssl_key_location)
    return config


def registry_client(settings: SchemaRegistrySettings) -> SchemaRegistryClient:
    try:
        # authlib, which the client imports, warns (always, its own filter) that its httpx module is deprecated.
        with warnings.catch_warnings(record=True):
            from confluent_kafka.schema_registry import SchemaRegistryClient
    except ImportError as exc:
        raise ConfigError(
            f"INPUT_FORMAT/OUTPUT_FORMAT avro or jsonschema need the registry extra ({exc}): "
            "pip install 'kafka-inference-worker[registry]'"
        ) from None
    try:
        return SchemaRegistryClient(registry_config(settings))
    except (ValueError, TypeError, OSError, ssl.SSLError) as exc:
        raise ConfigError(f"SCHEMA_REGISTRY_* settings rejected by the registry client: {exc}") from None


def check_registry(client: SchemaRegistryClient, settings: SchemaRegistrySettings) -> None:
    """Ask the registry for its subjects; raise ConfigError with one line when that fails."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    try:
        client.get_subjects()
    except SchemaRegistryError as exc:
        raise ConfigError(explain_refusal(exc, settings)) from None
    except Exception as exc:  # noqa: BLE001 - httpx and ssl raise many kinds; each is explained in one line
        raise ConfigError(explain_unreachable(exc, settings)) from None


def explain_refusal(exc: Any, settings: SchemaRegistrySettings) -> str:
    status = exc.http_status_code
    if status in (401, 403):
        return (
            f"the Schema Registry at {settings.url} refused the credentials (HTTP {status}): "
            "check SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"
        )
    if status == 404:
        return (
            f"{settings.url} answered 404 where a Schema Registry lists its subjects: check SCHEMA_REGISTRY_URL "
            "(Apicurio's Confluent API is under /apis/ccompat/v7)"
        )
    return f"the Schema Registry at {settings.url} answered HTTP {status}: {exc.error_message}"


def explain_unreachable(exc: BaseException, settings: SchemaRegistrySettings) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return (
                f"TLS handshake with the Schema Registry at {settings.url} failed ({cause}): "
                "check SCHEMA_REGISTRY_SSL_CA_LOCATION and the registry's certificate"
            )
        cause = cause.__cause__ or cause.__context__
    return (
        f"cannot reach the Schema Registry at {settings.url} ({type(exc).__name__}: {exc}): "
        "start it (make registry-up) or set SCHEMA_REGISTRY_URL"
    )


def register(client: SchemaRegistryClient, subject: str, schema_str: str, schema_type: str) -> int:
    """Register a schema under a subject (idempotent: the same schema gets its id back)."""
    from confluent_kafka.schema_registry import Schema
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    try:
        schema_id: int = client.register_schema(subject, Schema(schema_str, schema_type))
    except SchemaRegistryError as exc:
        raise ConfigError(
            f"the Schema Registry refused the {schema_type} schema for subject {subject!r} "
            f"(HTTP {exc.http_status_code}: {exc.error_message}): a schema registered there before is not "
            "compatible; use another topic or change the subject's compatibility"
        ) from None
    return schema_id


def topic_encoder(client: SchemaRegistryClient, output_format: str, topic: str, name: str) -> Encode:
    """How records of ``schemas/<name>.schema.json`` are written to ``topic`` in ``output_format``,
    their schema registered under ``<topic>-value`` when framed."""
    subject = f"{topic}-value"
    if output_format == "avro":
        schema = avro_schema_of(name)
        schema_id = register(client, subject, orjson.dumps(schema).decode(), "AVRO")
        log.info("registered the Avro schema of %s under %s: id %d", name, subject, schema_id)
        return avro_encoder(schema_id, schema)
    if output_format == "jsonschema":
        schema_id = register(client, subject, json_schema_text(name), "JSON")
        log.info("registered the JSON Schema of %s under %s: id %d", name, subject, schema_id)
        return json_schema_encoder(schema_id)
    return json_encoder()


class WriterSchemas:
    """Fetches the writer schemas a batch of input values names, once per id, off the event loop."""

    def __init__(self, client: SchemaRegistryClient, decoder: FramedEventDecoder, backoff_s: float = 1.0) -> None:
        self._client = client
        self._decoder = decoder
        self._backoff_s = backoff_s

    async def prepare(self, values: Sequence[bytes | None]) -> None:
        """Give the decoder every schema these values name; waits (retrying) while the registry is unreachable."""
        for schema_id in sorted(self._decoder.unknown_ids(values)):
            self._decoder.add_schema(schema_id, await self._fetch(schema_id))

    async def _fetch(self, schema_id: int) -> WriterSchema | None:
        backoff = self._backoff_s
        while True:
            try:
                return await asyncio.to_thread(self._get, schema_id)
            except Exception as exc:  # noqa: BLE001 - an outage is retried whatever the client raises
                log.warning(
                    "cannot fetch schema id %d (%s: %s); retrying in %.1fs", schema_id, type(exc).__name__, exc, backoff
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_FETCH_BACKOFF_S)

    def _get(self, schema_id: int) -> WriterSchema | None:
        return self.get(self._client, schema_id)

    @staticmethod
    def get(client: SchemaRegistryClient, schema_id: int) -> WriterSchema | None:
        """The registry's schema ``schema_id``, parsed; None when it has none (other failures raise)."""
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            schema = client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                log.warning("the Schema Registry has no schema with id %d: its records are dead-lettered", schema_id)
                return None
            raise
        log.info("fetched writer schema id %d (%s)", schema_id, schema.schema_type or "AVRO")
        return writer_schema(schema.schema_type, schema.schema_str or "")


def event_encoder(settings: SchemaRegistrySettings, topic: str) -> Encode:
    """How the tools (``produce``, ``demo``) write events to the input topic: in INPUT_FORMAT, the event
    schema (``schemas/prediction_event.schema.json``, or Avro generated from it) registered under
    ``<topic>-value``."""
    if settings.input_format == "json":
        return json_encoder()
    client = registry_client(settings)
    check_registry(client, settings)
    return topic_encoder(client, settings.input_format, topic, "prediction_event")


def result_decoder(settings: SchemaRegistrySettings) -> Callable[[bytes | None], dict[str, Any]]:
    """How the tools (``tail``, ``demo``) read results in OUTPUT_FORMAT: a framed record with the schema
    its id names, fetched from the registry once per id (a blocking call: for tools, not the worker)."""
    if settings.output_format == "json":

        def read_json(value: bytes | None) -> dict[str, Any]:
            document: dict[str, Any] = orjson.loads(value or b"{}")
            return document

        return read_json
    client = registry_client(settings)
    check_registry(client, settings)
    schemas: dict[int, WriterSchema | None] = {}
    decoder = FramedResultDecoder(schemas)

    def decode(value: bytes | None) -> dict[str, Any]:
        schema_id = schema_id_of(value)
        if schema_id is not None and schema_id not in schemas:
            schemas[schema_id] = WriterSchemas.get(client, schema_id)
        return decoder.decode(value)

    return decode


def record_formats(
    settings: SchemaRegistrySettings, topics: TopicSettings, max_record_bytes: int, backoff_s: float = 1.0
) -> RecordFormats:
    """The formats of the worker's topics: JSON throughout unless a format needs the registry, which is
    then checked and holds the output schemas on return. Raises ConfigError with one line."""
    if not settings.needed:
        return RecordFormats()
    client = registry_client(settings)
    check_registry(client, settings)
    fmt = settings.output_format
    formats = RecordFormats(
        result=topic_encoder(client, fmt, topics.output_topic, "prediction_result"),
        shadow=topic_encoder(client, fmt, topics.shadow_topic, "prediction_result"),
        stats=topic_encoder(client, fmt, topics.stats_topic, "window_stats"),
    )
    if settings.input_format == "json":
        return formats
    decoder = FramedEventDecoder(settings.input_format, FieldMapping(settings.field_mapping), max_record_bytes)
    return RecordFormats(
        decode=decoder.decode,
        prepare=WriterSchemas(client, decoder, backoff_s).prepare,
        result=formats.result,
        shadow=formats.shadow,
        stats=formats.stats,
    )
