"""Records in Confluent's wire format: magic byte 0, a 4-byte big-endian schema id, then the payload
(Avro binary, or JSON for JSON Schema).

Out: ``Encode`` turns a record (a PredictionResult or WindowStats dict) into a value:
``json_encoder`` (plain JSON, the default), ``avro_encoder`` and ``json_schema_encoder`` (framed
with the id the registry gave the topic's schema).

In: ``FramedEventDecoder`` turns a framed value into a ``PredictionEvent``, with the writer schema
its id names, then maps the record's fields to the event's (``FieldMapping``) and validates them as
a JSON event is validated. It only reads schemas it holds: ``unknown_ids`` says which ids of a batch
it lacks, and whoever fetches them (``app.kafka.schema_registry``) adds them with ``add_schema``,
``None`` for an id the registry does not have. Decoding fails with ``InvalidRecord``:

    unknown_schema   the registry has no schema with the record's id
    schema_mismatch  not in the wire format, a writer schema of another type than INPUT_FORMAT,
                     a payload that does not decode with its writer schema (or leaves bytes over),
                     or a record without a field the mapping needs
"""

from __future__ import annotations

import io
import struct
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, NamedTuple

import orjson

from app.errors import InvalidRecord
from app.records.events import PredictionEvent, SourceRef, event_from_document

MAGIC_BYTE = 0
HEADER = struct.Struct(">bI")
"""The frame's header: magic byte, schema id."""

Encode = Callable[[dict[str, Any]], bytes]
Decode = Callable[[bytes | None, SourceRef], PredictionEvent]
Prepare = Callable[[Sequence[bytes | None]], Awaitable[None]]


@dataclass(frozen=True)
class RecordFormats:
    """How the worker reads its input and writes its outputs (JSON throughout by default).

    fastavro is imported only by the Avro parts, so JSON needs none of the registry extra.
    """

    decode: Decode | None = None
    """Input value -> event; None: plain JSON (``parse_event``)."""
    prepare: Prepare | None = None
    """Awaited with a batch's values before they are decoded (fetches the schemas they name)."""
    result: Encode = orjson.dumps
    shadow: Encode = orjson.dumps
    stats: Encode = orjson.dumps


def frame(schema_id: int, payload: bytes) -> bytes:
    return HEADER.pack(MAGIC_BYTE, schema_id) + payload


def schema_id_of(value: bytes | None) -> int | None:
    """The schema id of a framed value; None when it is not framed."""
    if value is None or len(value) < HEADER.size or value[0] != MAGIC_BYTE:
        return None
    return int.from_bytes(value[1:5], "big")


def json_encoder() -> Encode:
    return orjson.dumps


def avro_encoder(schema_id: int, schema: dict[str, Any]) -> Encode:
    """Avro binary with ``schema`` (the one registered as ``schema_id``), framed."""
    import fastavro

    parsed = fastavro.parse_schema(schema)
    header = HEADER.pack(MAGIC_BYTE, schema_id)
    write = fastavro.schemaless_writer

    def encode(record: dict[str, Any]) -> bytes:
        buffer = io.BytesIO()
        buffer.write(header)
        write(buffer, parsed, record)
        return buffer.getvalue()

    return encode


def json_schema_encoder(schema_id: int) -> Encode:
    """JSON, framed with the id of the registered JSON Schema (as Confluent's JSONSerializer writes)."""
    header = HEADER.pack(MAGIC_BYTE, schema_id)
    dumps = orjson.dumps

    def encode(record: dict[str, Any]) -> bytes:
        return header + dumps(record)

    return encode


class WriterSchema(NamedTuple):
    """A schema the registry holds, as a decoder needs it."""

    schema_type: str
    """AVRO, JSON or PROTOBUF, as the registry names them."""
    parsed: Any = None
    """The parsed Avro schema (fastavro), for AVRO."""
    error: str | None = None
    """Why the schema cannot be used (it does not parse), else None."""


def writer_schema(schema_type: str | None, schema_str: str) -> WriterSchema:
    """The registry's answer for an id, parsed; a schema that does not parse is kept with the reason."""
    kind = (schema_type or "AVRO").upper()
    if kind != "AVRO":
        return WriterSchema(kind)
    import fastavro

    try:
        return WriterSchema(kind, fastavro.parse_schema(orjson.loads(schema_str)))
    except Exception as exc:  # noqa: BLE001 - fastavro raises many kinds; any of them means the same
        return WriterSchema(kind, error=f"the Avro schema does not parse: {exc}")


class FramedResultDecoder:
    """Reads framed output records (results, WindowStats) back, for the tools: with the writer schemas
    in ``schemas``, which the caller fills (``app.kafka.schema_registry.result_decoder``)."""

    def __init__(self, schemas: Mapping[int, WriterSchema | None]) -> None:
        self._schemas = schemas

    def decode(self, value: bytes | None) -> dict[str, Any]:
        """The record, or ValueError when it is not framed or its schema is unknown."""
        schema_id = schema_id_of(value)
        schema = None if schema_id is None else self._schemas.get(schema_id)
        if value is None or schema is None:
            raise ValueError(f"not a framed record with a known schema (schema id {schema_id})")
        if schema.parsed is None:
            document: dict[str, Any] = orjson.loads(value[HEADER.size :])
            return document
        import fastavro

        record = fastavro.schemaless_reader(io.BytesIO(value[HEADER.size :]), schema.parsed, None)
        if not isinstance(record, dict):
            raise ValueError(f"schema id {schema_id} is not a record schema")
        return {key: item for key, item in record.items() if item is not None}


class FieldMapping:
    """Where each event field is in a decoded record: ``INPUT_FIELD_MAPPING``, identity by default.

    A dotted path names a nested field (``customer.id``). A field the path does not reach is
    ``schema_mismatch`` for the required ones (user_id, timestamp, features or text); a null value
    counts as absent, so an optional field (Avro ``["null", ...]``) may be null.
    """

    def __init__(self, mapping: Mapping[str, str] | None = None) -> None:
        mapping = mapping or {}
        self._paths = [
            (field, mapping.get(field, field), tuple(mapping.get(field, field).split(".")))
            for field in ("user_id", "features", "text", "timestamp", "event_id", "model")
        ]

    def describe(self, field: str) -> str:
        path = next(path for name, path, _ in self._paths if name == field)
        return f"'{path}'" if path == field else f"'{path}' (INPUT_FIELD_MAPPING's {field})"

    def apply(self, record: Any, schema_id: int) -> dict[str, Any]:
        """The event's fields from a decoded record."""
        if not isinstance(record, dict):
            raise InvalidRecord("schema_mismatch", f"schema id {schema_id}: the record is a {type(record).__name__}")
        document: dict[str, Any] = {}
        present: set[str] = set()
        for field, _, parts in self._paths:
            value: Any = record
            for part in parts:
                if not isinstance(value, dict) or part not in value:
                    break
                value = value[part]
            else:
                present.add(field)
                if value is not None:
                    document[field] = _plain(value)
        for field in ("user_id", "timestamp"):
            if field not in present:
                raise InvalidRecord("schema_mismatch", f"schema id {schema_id} has no field {self.describe(field)}")
        if "features" not in present and "text" not in present:
            raise InvalidRecord(
                "schema_mismatch",
                f"schema id {schema_id} has neither {self.describe('features')} nor {self.describe('text')}",
            )
        return document


def _plain(value: Any) -> Any:
    """Avro logical types back to what a JSON event holds: a timestamp-millis is epoch milliseconds."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, date):
        return value.isoformat()
    return value


class FramedEventDecoder:
    """Decodes framed events (INPUT_FORMAT avro or jsonschema) with the writer schemas it was given."""

    def __init__(self, input_format: str, mapping: FieldMapping, max_bytes: int) -> None:
        if input_format not in ("avro", "jsonschema"):
            raise ValueError(f"no framed decoding for {input_format!r}")
        self._expected = "AVRO" if input_format == "avro" else "JSON"
        self._mapping = mapping
        self._max_bytes = max_bytes
        self._schemas: dict[int, WriterSchema | None] = {}
        if input_format == "avro":
            import fastavro

            self._read_avro = fastavro.schemaless_reader

    def unknown_ids(self, values: Iterable[bytes | None]) -> set[int]:
        """Schema ids these values name that this decoder has not been given yet."""
        schemas = self._schemas
        wanted = set()
        for value in values:
            if value is not None and len(value) >= 5 and value[0] == MAGIC_BYTE:
                schema_id = int.from_bytes(value[1:5], "big")
                if schema_id not in schemas:
                    wanted.add(schema_id)
        return wanted

    def add_schema(self, schema_id: int, schema: WriterSchema | None) -> None:
        """The registry's schema for ``schema_id``; None: it has none."""
        self._schemas[schema_id] = schema

    def decode(self, value: bytes | None, source: SourceRef) -> PredictionEvent:
        if not value:
            raise InvalidRecord("empty_value", "the record has no value (null or empty)")
        if len(value) > self._max_bytes:
            raise InvalidRecord("oversized", f"value is {len(value)} bytes, the limit is {self._max_bytes}")
        if len(value) < HEADER.size or value[0] != MAGIC_BYTE:
            raise InvalidRecord(
                "schema_mismatch",
                "value is not in the Confluent wire format (magic byte 0, 4-byte schema id): "
                f"first byte {value[0]}, {len(value)} bytes",
            )
        schema_id = int.from_bytes(value[1:5], "big")
        schema = self._schemas.get(schema_id)
        if schema is None:
            raise InvalidRecord("unknown_schema", f"the Schema Registry has no schema with id {schema_id}")
        if schema.schema_type != self._expected:
            raise InvalidRecord(
                "schema_mismatch", f"schema id {schema_id} is {schema.schema_type}, the worker reads {self._expected}"
            )
        if schema.error is not None:
            raise InvalidRecord("schema_mismatch", f"schema id {schema_id}: {schema.error}")
        record = self._avro(value, schema, schema_id) if schema.parsed is not None else self._json(value, schema_id)
        return event_from_document(self._mapping.apply(record, schema_id), source)

    def _avro(self, value: bytes, schema: WriterSchema, schema_id: int) -> Any:
        buffer = io.BytesIO(value)
        buffer.seek(HEADER.size)
        try:
            record = self._read_avro(buffer, schema.parsed, None)
        except Exception as exc:  # noqa: BLE001 - a corrupt payload raises anything from EOFError to UnicodeDecodeError
            raise InvalidRecord(
                "schema_mismatch", f"payload does not decode with schema id {schema_id}: {type(exc).__name__}: {exc}"
            ) from None
        left = len(value) - buffer.tell()
        if left:
            raise InvalidRecord(
                "schema_mismatch", f"payload does not decode with schema id {schema_id}: {left} bytes left over"
            )
        return record

    @staticmethod
    def _json(value: bytes, schema_id: int) -> Any:
        try:
            return orjson.loads(value[HEADER.size :])
        except orjson.JSONDecodeError as exc:
            raise InvalidRecord("schema_mismatch", f"payload of schema id {schema_id} is not JSON: {exc}") from None
