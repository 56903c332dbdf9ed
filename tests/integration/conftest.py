"""Integration tests run against a real Apache Kafka broker.

The session fixture brings the local broker up through kafka/kafka.sh (the same script as
``make kafka-up``), unless KAFKA_BOOTSTRAP_SERVERS names another one. When no broker can be
reached the tests fail in CI (CI is set) and are skipped elsewhere, saying why. The tests of
models from an MLflow registry start a real ``mlflow server`` (sqlite backend, local artifact
folder; the mlflow extra) the same way, on MLFLOW_LOCAL_PORT or a free port.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.kafka.topics import ensure_topics
from tests.conftest import ROOT, WORKER_COMMAND, free_port


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


def _unavailable(why: str, what: str = "no Kafka broker reachable") -> None:
    message = f"{what}: {why}"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def bootstrap_servers() -> str:
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "")
    if not servers:
        try:
            done = subprocess.run([str(ROOT / "kafka" / "kafka.sh"), "up"], capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            _unavailable("kafka/kafka.sh up did not finish in 300 s")
        if done.returncode != 0:
            _unavailable(done.stderr.strip() or done.stdout.strip())
        servers = f"127.0.0.1:{os.environ.get('KAFKA_LOCAL_PORT', '9092')}"
    first = servers.split(",")[0]
    probe = subprocess.run([sys.executable, str(ROOT / "kafka" / "ready.py"), first, "10"], timeout=30)
    if probe.returncode != 0:
        _unavailable(f"{first} does not answer a Metadata request")
    return servers


@pytest.fixture(scope="session")
def schema_registry_url() -> str:
    """The Schema Registry's Confluent-API URL: SCHEMA_REGISTRY_URL, else the local one that
    registry/registry.sh brings up (the same script as ``make registry-up``). Unreachable: fail in CI,
    else skip."""
    script = str(ROOT / "registry" / "registry.sh")
    try:
        done = subprocess.run([script, "up"], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        _unavailable("registry/registry.sh up did not finish in 600 s", "no Schema Registry reachable")
    if done.returncode != 0:
        _unavailable(done.stderr.strip() or done.stdout.strip(), "no Schema Registry reachable")
    status = subprocess.run([script, "status"], capture_output=True, text=True, timeout=60)
    if status.returncode != 0:
        _unavailable(
            "registry/registry.sh status: " + (status.stdout.strip() or status.stderr.strip()),
            "no Schema Registry reachable",
        )
    return subprocess.run([script, "url"], capture_output=True, text=True, timeout=10, check=True).stdout.strip()


MLFLOW_START_TIMEOUT_S = 180.0


@pytest.fixture(scope="session")
def mlflow_tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server with its model registry: sqlite backend, artifacts in a local
    folder served through the server (``mlflow-artifacts:``), stopped at the end of the session."""
    mlflow = Path(sys.executable).parent / "mlflow"
    if not mlflow.is_file():
        _unavailable(f"no {mlflow}: install the mlflow extra (pip install '.[mlflow]')", "no MLflow server")
    folder = tmp_path_factory.mktemp("mlflow")
    port = int(os.environ.get("MLFLOW_LOCAL_PORT") or free_port())
    uri = f"http://127.0.0.1:{port}"
    command = [
        str(mlflow), "server",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    if _answers(f"{uri}/health"):
        _unavailable(
            f"port {port} is taken by another server: set MLFLOW_LOCAL_PORT to a free port", "no MLflow server"
        )
    log = folder / "server.log"
    with log.open("wb") as log_file:
        server = subprocess.Popen(
            command,
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},  # offline: no usage reports
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + MLFLOW_START_TIMEOUT_S
        while not _answers(f"{uri}/health"):
            if server.poll() is not None or time.monotonic() > deadline:
                tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:])
                _unavailable(f"mlflow server on port {port} did not start (see {log}): {tail}", "no MLflow server")
            time.sleep(0.5)
        yield uri
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn/gunicorn workers
            try:
                server.wait(timeout=5)  # its state is this session's temporary folder
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


# kafka/kafka.sh's test-only SASL user (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), known to everyone.
SASL_USERNAME = "inference-worker"
SASL_PASSWORD = "local-test-only"


@pytest.fixture(scope="session")
def sasl_bootstrap_servers(bootstrap_servers: str) -> str:
    """The broker's SASL_PLAINTEXT listener: KAFKA_SASL_BOOTSTRAP_SERVERS, else kafka.sh's
    (KAFKA_LOCAL_SASL_PORT, default 9094). Unreachable, or refusing the test user: fail in CI, else skip."""
    local = f"127.0.0.1:{os.environ.get('KAFKA_LOCAL_SASL_PORT', '9094')}"
    servers = os.environ.get("KAFKA_SASL_BOOTSTRAP_SERVERS") or local

    async def login() -> None:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(
            bootstrap_servers=servers,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_plain_username=SASL_USERNAME,
            sasl_plain_password=SASL_PASSWORD,
            request_timeout_ms=10_000,
        )
        try:
            await admin.start()
        finally:
            await admin.close()

    try:
        asyncio.run(asyncio.wait_for(login(), 30))
    except Exception as exc:  # noqa: BLE001 - any failure means the same: no SASL listener to test against
        _unavailable(
            f"no SASL_PLAINTEXT listener at {servers} accepting {SASL_USERNAME!r} ({exc!r}): restart the local "
            "broker (make kafka-down kafka-up) or set KAFKA_SASL_BOOTSTRAP_SERVERS"
        )
    return servers


@pytest.fixture(scope="session")
def cluster() -> Iterator[Any]:
    """The local three-broker cluster (kafka/kafka.sh up --brokers 3), stopped at the end when this
    session started it. Its tests stop and kill brokers, so they need the local one."""
    from tests.integration.cluster import start_cluster, stop_cluster

    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("the cluster tests stop and kill the local cluster's brokers, not KAFKA_BOOTSTRAP_SERVERS'")
    try:
        local, started = start_cluster()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        _unavailable(str(exc), "the local three-broker cluster did not start")
    yield local
    if started:
        stop_cluster()


@pytest.fixture(autouse=True)
def _needs_broker(bootstrap_servers: str) -> None:
    """Every integration test needs the broker, so a missing one fails (CI) or skips them all."""


@dataclass(frozen=True)
class Names:
    """Topic and group names of one test, unique so runs never see each other's records."""

    run: str

    @property
    def app_id(self) -> str:
        return f"it-{self.run}"

    @property
    def input_topic(self) -> str:
        return f"it-{self.run}-events"

    @property
    def output_topic(self) -> str:
        return f"it-{self.run}-predictions"

    @property
    def dead_letter_topic(self) -> str:
        return f"it-{self.run}-events.dlq"

    @property
    def shadow_topic(self) -> str:
        return f"it-{self.run}-predictions.shadow"

    @property
    def stats_topic(self) -> str:
        return f"it-{self.run}-stats"

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic a worker of this test reads or writes (besides faust's internal ones)."""
        return (self.input_topic, self.output_topic, self.dead_letter_topic, self.stats_topic, self.shadow_topic)


def create_topics(bootstrap_servers: str, names: Names, partitions: int = 4) -> None:
    """Create the test's topics before anything produces to them or reads them."""
    asyncio.run(ensure_topics(bootstrap_servers, names.topics, partitions))


@pytest.fixture
def names() -> Names:
    return Names(uuid.uuid4().hex[:10])


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


def worker_env(bootstrap_servers: str, names: Names, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        "WORKER_APP_ID": names.app_id,
        "INPUT_TOPIC": names.input_topic,
        "OUTPUT_TOPIC": names.output_topic,
        "DEAD_LETTER_TOPIC": names.dead_letter_topic,
        "SHADOW_TOPIC": names.shadow_topic,
        "STATS_TOPIC": names.stats_topic,
        "WORKER_DATA_DIR": str(tmp_path / "worker-data"),
        "LOG_LEVEL": "info",
        **extra,
    }


@contextmanager
def running_worker(
    env: dict[str, str],
    log: Path,
    ready_timeout_s: float = 120.0,
    command: tuple[str, ...] = WORKER_COMMAND,
    cwd: Path = ROOT,
) -> Iterator[WorkerProcess]:
    """A worker process (``command``, by default the checkout's), stopped with SIGTERM at the end."""
    port = free_port()
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env={**env, "WEB_PORT": str(port)},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        worker = WorkerProcess(process, port, log)
        try:
            deadline = time.monotonic() + ready_timeout_s
            while True:
                if process.poll() is not None:
                    raise AssertionError(f"worker exited with {process.returncode}:\n{log.read_text()[-3000:]}")
                try:
                    if worker.get("/ready")[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"worker not ready in {ready_timeout_s}s:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
            yield worker
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
