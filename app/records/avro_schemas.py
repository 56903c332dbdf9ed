"""The Avro schemas of the records the worker writes, generated from the JSON Schemas in ``schemas/``.

``schemas/*.schema.json`` stays the one source of truth: ``avro_schema`` derives the Avro schema
registered for ``OUTPUT_FORMAT=avro`` from it, and a unit test checks that the records the code
builds validate against the JSON Schema and survive an Avro round trip. The mapping covers what
those schemas use:

    JSON Schema                              Avro
    string / number / integer / boolean      string / double / long / boolean
    const                                    the type of its value
    object with properties                   record (named after its title, or its field)
    object with additionalProperties only    map of the additionalProperties' type
    array                                    array of its items
    oneOf / type list / $ref to $defs        union / union with null / the definition
    a property not in "required"             union with null, default null

A field absent from a JSON record is null in its Avro encoding, so a consumer reads optional
fields as null rather than missing.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from app.settings import BUNDLED_SCHEMAS

SCHEMA_DIR = BUNDLED_SCHEMAS
NAMESPACE = "io.github.inference_worker"
_PRIMITIVES = {"string": "string", "number": "double", "integer": "long", "boolean": "boolean", "null": "null"}


@cache
def json_schema(name: str) -> dict[str, Any]:
    """``schemas/<name>.schema.json``, parsed (e.g. ``prediction_result``)."""
    document: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())
    return document


@cache
def json_schema_text(name: str) -> str:
    """The JSON Schema exactly as the file holds it: what OUTPUT_FORMAT=jsonschema registers."""
    return (SCHEMA_DIR / f"{name}.schema.json").read_text()


@cache
def avro_schema_of(name: str) -> dict[str, Any]:
    """The Avro schema generated from ``schemas/<name>.schema.json``."""
    return avro_schema(json_schema(name))


def avro_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The Avro record schema of a JSON Schema whose root is an object with a title."""
    converted = _Converter(schema.get("$defs", {})).record(schema, schema["title"])
    converted["namespace"] = NAMESPACE
    return converted


class _Converter:
    def __init__(self, definitions: dict[str, Any]) -> None:
        self._definitions = definitions

    def record(self, schema: dict[str, Any], name: str) -> dict[str, Any]:
        required = set(schema.get("required", ()))
        fields = []
        for field, subschema in schema["properties"].items():
            avro_type = self.type_of(subschema, field)
            entry: dict[str, Any] = {"name": field}
            if "description" in subschema:
                entry["doc"] = subschema["description"]
            if field not in required:
                entry["type"] = _nullable(avro_type)
                entry["default"] = None
            else:
                entry["type"] = avro_type
            fields.append(entry)
        converted: dict[str, Any] = {"type": "record", "name": name, "fields": fields}
        if "description" in schema:
            converted["doc"] = schema["description"]
        return converted

    def type_of(self, schema: dict[str, Any], field: str) -> Any:
        if "$ref" in schema:
            prefix = "#/$defs/"
            ref: str = schema["$ref"]
            if not ref.startswith(prefix):
                raise ValueError(f"only local $defs references convert, not {ref!r}")
            return self.type_of(self._definitions[ref[len(prefix) :]], field)
        if "const" in schema:
            return _type_of_value(schema["const"])
        if "oneOf" in schema:
            return _union([self.type_of(option, field) for option in schema["oneOf"]])
        kind = schema.get("type")
        if isinstance(kind, list):
            return _union([self.type_of({**schema, "type": one}, field) for one in kind])
        if kind == "object":
            if "properties" in schema:
                return self.record(schema, schema.get("title", _record_name(field)))
            values = schema.get("additionalProperties")
            if not isinstance(values, dict):
                raise ValueError(f"'{field}': an object needs properties or an additionalProperties schema")
            return {"type": "map", "values": self.type_of(values, field)}
        if kind == "array":
            return {"type": "array", "items": self.type_of(schema["items"], field + "_item")}
        if kind in _PRIMITIVES:
            return _PRIMITIVES[kind]
        raise ValueError(f"'{field}': no Avro type for {schema!r}")


def _type_of_value(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    raise ValueError(f"no Avro type for the constant {value!r}")


def _union(types: list[Any]) -> Any:
    flat: list[Any] = []
    for one in types:
        for member in one if isinstance(one, list) else [one]:
            if member not in flat:
                flat.append(member)
    if "null" in flat:  # null first, so that a default of null is allowed
        flat.remove("null")
        flat.insert(0, "null")
    return flat[0] if len(flat) == 1 else flat


def _nullable(avro_type: Any) -> Any:
    return _union(["null", avro_type])


def _record_name(field: str) -> str:
    """``latency_ms`` -> ``LatencyMs``: Avro names a nested record; the field's name in CamelCase."""
    return "".join(part[:1].upper() + part[1:] for part in field.split("_") if part)
