"""Workers and the project's clients over the broker's SASL_PLAINTEXT listener: with the right
credentials every event gets a prediction and the password is never shown; with a wrong
password the worker exits at once with one line."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from app.kafka.security import client_config
from app.kafka.topics import ensure_topics
from app.models.registry import ModelRegistry
from app.settings import REPO_ROOT, Settings
from app.tools.produce import EventFactory, produce_events
from app.tools.tail import follow
from tests.conftest import run_worker_to_exit
from tests.integration.conftest import SASL_PASSWORD, SASL_USERNAME, Names, running_worker, worker_env

EVENTS = 300
WRONG_PASSWORD = "not-the-password-7f3a"


def sasl_env(servers: str, mechanism: str = "SCRAM-SHA-512", password: str = SASL_PASSWORD) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": servers,
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": mechanism,
        "KAFKA_SASL_USERNAME": SASL_USERNAME,
        "KAFKA_SASL_PASSWORD": password,
    }


async def round_trip(settings: Settings, topic: str, count: int) -> tuple[list[str], set[str]]:
    """Produce ``count`` events and read them back, all through the project's own clients."""
    config = client_config(settings.kafka)
    await ensure_topics(settings.kafka.bootstrap_servers, [topic], 2, **config)
    factory = EventFactory(ModelRegistry(REPO_ROOT / "models").metadata("breast-cancer"), seed=1)
    report = await produce_events(settings.kafka.bootstrap_servers, topic, factory, count, progress=False, **config)
    seen: set[str] = set()
    async for record in follow(settings.kafka.bootstrap_servers, [topic], True, 5.0, **config):
        seen.add(orjson.loads(record.value or b"{}")["event_id"])
        if len(seen) == count:
            break
    return report.valid_event_ids, seen


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_the_project_clients_produce_and_consume_with_each_mechanism(
    sasl_bootstrap_servers: str, names: Names, mechanism: str
) -> None:
    settings = Settings.from_env(sasl_env(sasl_bootstrap_servers, mechanism))
    sent, seen = asyncio.run(round_trip(settings, names.input_topic, 20))
    assert len(sent) == 20
    assert seen == set(sent)


# PLAIN too: its login request carries the password in clear, and aiokafka logs requests at DEBUG.
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
def test_a_worker_predicts_over_sasl_and_never_shows_the_password(
    sasl_bootstrap_servers: str, names: Names, tmp_path: Path, mechanism: str
) -> None:
    env = worker_env(
        sasl_bootstrap_servers,
        names,
        tmp_path,
        **sasl_env(sasl_bootstrap_servers, mechanism),
        STATS_TOPIC=f"it-{names.run}-stats",
        LOG_LEVEL="debug",  # the most a worker ever logs
    )
    log = tmp_path / "worker.log"
    settings = Settings.from_env(env)
    config = client_config(settings.kafka)
    with running_worker(env, log) as worker:
        factory = EventFactory(ModelRegistry(REPO_ROOT / "models").metadata("breast-cancer"))
        report = asyncio.run(
            produce_events(
                settings.kafka.bootstrap_servers, names.input_topic, factory, EVENTS, progress=False, **config
            )
        )

        async def predictions() -> set[str]:
            seen: set[str] = set()
            async for record in follow(settings.kafka.bootstrap_servers, [names.output_topic], True, 30.0, **config):
                seen.add(orjson.loads(record.value or b"{}")["event_id"])
                if len(seen) == EVENTS:
                    break
            return seen

        predicted = asyncio.run(asyncio.wait_for(predictions(), 120))
        responses = [worker.get(path) for path in ("/models", "/stats", "/ready", "/metrics", "/health")]
    assert predicted == set(report.valid_event_ids)
    assert len(predicted) == EVENTS
    assert all(status == 200 for status, _ in responses), [status for status, _ in responses]
    assert not [body for _, body in responses if SASL_PASSWORD.encode() in body]
    text = log.read_text()
    assert "SaslAuthenticateRequest_v1(hidden)" in text  # the debug log did show the login, by type only
    assert SASL_PASSWORD not in text
    assert "sasl_auth_bytes" not in text


def failed_start(env: dict[str, str]) -> tuple[str, str]:
    """Run a worker that must not start; returns its last line and its whole output."""
    started = time.monotonic()
    done = run_worker_to_exit(env, timeout_s=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert time.monotonic() - started < 60  # refused at once, not retried until some timeout
    return done.stderr.strip().splitlines()[-1], done.stdout + done.stderr


def test_a_worker_with_a_wrong_password_exits_with_one_line(
    sasl_bootstrap_servers: str, names: Names, tmp_path: Path
) -> None:
    env = worker_env(
        sasl_bootstrap_servers, names, tmp_path, **sasl_env(sasl_bootstrap_servers, password=WRONG_PASSWORD)
    )
    last, output = failed_start(env)
    first_server = sasl_bootstrap_servers.split(",")[0]
    assert last == (
        f"inference-worker: {first_server} refused the SASL SCRAM-SHA-512 login of KAFKA_SASL_USERNAME="
        f"'{SASL_USERNAME}' (SaslAuthenticationFailed): check KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD and "
        "KAFKA_SASL_MECHANISM"
    )
    assert WRONG_PASSWORD not in output


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL"])
def test_a_worker_speaking_another_protocol_than_the_listener_exits_with_one_line(
    sasl_bootstrap_servers: str, names: Names, tmp_path: Path, protocol: str
) -> None:
    env = worker_env(sasl_bootstrap_servers, names, tmp_path, KAFKA_SECURITY_PROTOCOL=protocol)
    last, _ = failed_start(env)
    first_server = sasl_bootstrap_servers.split(",")[0]
    assert last == (
        f"inference-worker: {first_server} closed the connection: check that the listener expects "
        f"KAFKA_SECURITY_PROTOCOL={protocol}"
    )
