"""Shared helpers: the repository root, the JSON Schemas in schemas/, a free local port and a
worker process run to its end."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parent.parent
WORKER_COMMAND = (sys.executable, "-m", "app", "worker")
"""How every test starts a worker process."""


def load_schema(name: str) -> Draft202012Validator:
    schema: dict[str, Any] = json.loads((ROOT / "schemas" / f"{name}.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def schema_fixture(name: str) -> Any:
    """A session fixture giving the validator of ``schemas/<name>.schema.json``; it is named as the
    module attribute it is assigned to."""

    def validator() -> Draft202012Validator:
        return load_schema(name)

    return pytest.fixture(scope="session")(validator)


event_schema = schema_fixture("prediction_event")
result_schema = schema_fixture("prediction_result")
dead_letter_schema = schema_fixture("dead_letter")
window_stats_schema = schema_fixture("window_stats")


def free_port() -> int:
    """A local TCP port nothing listens on (at the time of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_worker_to_exit(env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run a worker that is meant to stop by itself (refusing to start), its output captured as text."""
    return subprocess.run(WORKER_COMMAND, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)


def load_byom_example() -> Any:
    """examples/byom/train_iris.py as a module (it is a script, not in a package): train() and export()."""
    spec = importlib.util.spec_from_file_location("train_iris", ROOT / "examples" / "byom" / "train_iris.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
