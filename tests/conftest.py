"""Shared helpers: the repository root and the JSON Schemas in schemas/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parent.parent


def load_schema(name: str) -> Draft202012Validator:
    schema: dict[str, Any] = json.loads((ROOT / "schemas" / f"{name}.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


@pytest.fixture(scope="session")
def event_schema() -> Draft202012Validator:
    return load_schema("prediction_event")


@pytest.fixture(scope="session")
def result_schema() -> Draft202012Validator:
    return load_schema("prediction_result")


@pytest.fixture(scope="session")
def dead_letter_schema() -> Draft202012Validator:
    return load_schema("dead_letter")


@pytest.fixture(scope="session")
def window_stats_schema() -> Draft202012Validator:
    return load_schema("window_stats")
