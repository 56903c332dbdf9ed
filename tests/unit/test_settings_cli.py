"""Settings from the environment, and the CLI's one-line failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.errors import ConfigError
from app.settings import REPO_ROOT, Settings, declarations, describe, markdown_table


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert (settings.topics.input_topic, settings.topics.output_topic, settings.topics.dead_letter_topic) == (
        "events",
        "predictions",
        "events.dlq",
    )
    assert settings.models.model_names == ("breast-cancer",)
    assert settings.models.default_model == "breast-cancer"


def test_reads_and_converts_the_environment() -> None:
    settings = Settings.from_env({"MAX_BATCH_SIZE": "64", "MODEL_NAMES": "a, b", "MODEL_HALF_PRECISION": "yes"})
    assert settings.batching.max_batch_size == 64
    assert settings.models.model_names == ("a", "b")
    assert settings.models.half_precision is True


def test_production_kafka_settings() -> None:
    """Unset, the replication factor is the cluster's; Kafka's spellings are read case-insensitively."""
    defaults = Settings.from_env({})
    assert defaults.topics.replication_factor is None
    assert (defaults.kafka.auto_offset_reset, defaults.kafka.compression_type) == ("earliest", "none")
    assert defaults.kafka.enable_idempotence is True
    settings = Settings.from_env(
        {"TOPIC_REPLICATION_FACTOR": "3", "KAFKA_COMPRESSION_TYPE": "ZSTD", "KAFKA_AUTO_OFFSET_RESET": "Latest"}
    )
    assert settings.topics.replication_factor == 3
    assert (settings.kafka.compression_type, settings.kafka.auto_offset_reset) == ("zstd", "latest")


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"MAX_BATCH_SIZE": "zero"}, "MAX_BATCH_SIZE='zero' is invalid"),
        ({"MAX_BATCH_SIZE": "0"}, "must be >= 1"),
        ({"WEB_PORT": "70000"}, "must be a TCP port"),
        ({"MODEL_DEVICE": "tpu"}, "must be auto, cpu or cuda"),
        ({"MODEL_HALF_PRECISION": "maybe"}, "not a boolean"),
        ({"MODEL_NAMES": " , "}, "must name at least one model"),
        ({"TOPIC_REPLICATION_FACTOR": "0"}, "TOPIC_REPLICATION_FACTOR='0' is invalid: must be >= 1"),
        ({"KAFKA_COMPRESSION_TYPE": "brotli"}, "must be none, gzip, snappy, lz4 or zstd"),
        ({"KAFKA_AUTO_OFFSET_RESET": "beginning"}, "must be earliest or latest"),
        ({"INPUT_FORMAT": "protobuf"}, "must be json, avro or jsonschema"),
        ({"INPUT_FORMAT": "avro"}, "INPUT_FORMAT=avro needs SCHEMA_REGISTRY_URL"),
        ({"OUTPUT_FORMAT": "jsonschema"}, "OUTPUT_FORMAT=jsonschema needs SCHEMA_REGISTRY_URL"),
        ({"SCHEMA_REGISTRY_URL": "localhost:8081"}, "must be an http:// or https:// URL"),
        ({"INPUT_FIELD_MAPPING": '{"customer": "id"}'}, "INPUT_FIELD_MAPPING"),
        ({"INPUT_FIELD_MAPPING": "user_id=id"}, "must be a JSON object"),
        (
            {"SCHEMA_REGISTRY_URL": "http://r", "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "nocolon"},
            "must be <user>:<password>",
        ),
    ],
)
def test_bad_values_raise_one_clear_line(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_help_documents_every_setting() -> None:
    text = describe()
    for _, declaration in declarations():
        assert declaration.env in text


def test_the_readme_settings_table_is_generated_from_the_declarations() -> None:
    """``make settings-table`` rewrites it; a setting added or changed without that fails here."""
    readme = (REPO_ROOT / "README.md").read_text()
    between = readme.split("<!-- settings-table:start -->\n", 1)[1].split("<!-- settings-table:end -->", 1)[0]
    assert between.strip() == markdown_table()


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
    )


def test_worker_with_bad_configuration_exits_with_one_line() -> None:
    done = run_cli("worker", env={"MAX_WAIT_MS": "-1"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "inference-worker: configuration error: MAX_WAIT_MS='-1' is invalid: must be >= 0"
    ]


def test_worker_with_a_missing_model_exits_with_one_line(tmp_path: Path) -> None:
    done = run_cli("worker", env={"MODEL_DIR": str(tmp_path)})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "model 'breast-cancer' not found" in lines[0]


def test_an_unreachable_broker_is_one_clear_line() -> None:
    done = run_cli("produce", "-n", "1", env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "inference-worker: cannot reach Kafka at 127.0.0.1:1: start it (make kafka-up) or set KAFKA_BOOTSTRAP_SERVERS"
    )
    assert "Traceback" not in done.stderr


def test_an_unreachable_schema_registry_is_one_clear_line() -> None:
    done = run_cli("worker", env={"INPUT_FORMAT": "avro", "SCHEMA_REGISTRY_URL": "http://127.0.0.1:1"})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(
        "inference-worker: configuration error: cannot reach the Schema Registry at http://127.0.0.1:1"
    )
    assert lines[0].endswith("start it (make registry-up) or set SCHEMA_REGISTRY_URL")


def test_help_lists_the_settings() -> None:
    done = run_cli("worker", "--help", env={})
    assert done.returncode == 0
    assert "KAFKA_BOOTSTRAP_SERVERS" in done.stdout and "MAX_WAIT_MS" in done.stdout


@pytest.mark.parametrize(
    ("uri", "name", "version"),
    [
        ("models:/fraud@champion", "fraud", "champion"),
        ("models:/fraud/7", "fraud", "7"),
        ("models:/f/latest", "f", "latest"),
    ],
)
def test_model_uri_names_the_model_and_the_version_or_alias(uri: str, name: str, version: str) -> None:
    settings = Settings.from_env({"MODEL_URI": uri, "MLFLOW_TRACKING_URI": "http://mlflow:5000"})
    assert settings.models.from_mlflow
    assert (settings.models.model_names, settings.models.model_version) == ((name,), version)
    assert not Settings.from_env({}).models.from_mlflow


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"MODEL_URI": "models:/fraud@champion"},
            "MODEL_URI=models:/fraud@champion needs MLFLOW_TRACKING_URI: set it to the MLflow server, "
            "e.g. http://127.0.0.1:5000",
        ),
        (
            {"MODEL_URI": "runs:/abc/model", "MLFLOW_TRACKING_URI": "http://m"},
            "MODEL_URI='runs:/abc/model' is invalid: must be models:/<name>@<alias> or models:/<name>/<version>",
        ),
        (
            {"MODEL_URI": "models:/fraud@champion", "MLFLOW_TRACKING_URI": "http://m", "MODEL_NAMES": "fraud"},
            "MODEL_URI=models:/fraud@champion names the model and its version: unset MODEL_NAMES",
        ),
    ],
)
def test_model_uri_mistakes_are_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)
    assert str(raised.value) == message
