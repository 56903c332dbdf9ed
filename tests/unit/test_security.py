"""TLS and SASL settings: validated at start with one line, turned into the same client arguments
for aiokafka and faust, and the passwords never shown."""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import subprocess
from pathlib import Path

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from app.errors import ConfigError
from app.kafka.security import broker_credentials, client_config, hide_sasl_exchange, ssl_context
from app.settings import REPO_ROOT, Settings, describe
from tests.conftest import free_port, run_worker_to_exit

PASSWORD = "s3cret-Pa55word"
SASL = {
    "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "KAFKA_SASL_MECHANISM": "scram-sha-512",
    "KAFKA_SASL_USERNAME": "alice",
    "KAFKA_SASL_PASSWORD": PASSWORD,
}


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed certificate, standing in for a CA bundle."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    folder = tmp_path_factory.mktemp("tls")
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=kafka.test"]
    subprocess.run(
        [*request, "-keyout", str(folder / "key.pem"), "-out", str(folder / "ca.pem")],
        check=True,
        capture_output=True,
    )
    return folder / "ca.pem"


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    settings = Settings.from_env({})
    assert settings.kafka.security_protocol == "PLAINTEXT"
    assert client_config(settings.kafka) == {"security_protocol": "PLAINTEXT"}
    assert broker_credentials(settings.kafka) is None


def test_sasl_scram_gives_aiokafka_and_faust_the_same_arguments() -> None:
    settings = Settings.from_env(SASL)
    expected = {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": PASSWORD,
    }
    assert client_config(settings.kafka) == expected
    credentials = broker_credentials(settings.kafka)
    assert isinstance(credentials, faust.SASLCredentials)
    # What faust's consumer and producer will hand to aiokafka.
    assert credentials_to_aiokafka_auth(credentials) == {**expected, "ssl_context": None}


def test_sasl_ssl_verifies_the_broker_against_the_ca_file(ca_file: Path) -> None:
    settings = Settings.from_env(
        {
            **SASL,
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SSL_CAFILE": str(ca_file),
        }
    )
    config = client_config(settings.kafka)
    assert config["security_protocol"] == "SASL_SSL"
    assert config["sasl_mechanism"] == "PLAIN"
    context = config["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert [cert["subject"] for cert in context.get_ca_certs()] == [((("commonName", "kafka.test"),),)]
    auth = credentials_to_aiokafka_auth(broker_credentials(settings.kafka))
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["ssl_context"].get_ca_certs() == context.get_ca_certs()


def test_ssl_with_hostname_check_off_still_verifies_the_certificate(ca_file: Path) -> None:
    settings = Settings.from_env(
        {"KAFKA_SECURITY_PROTOCOL": "ssl", "KAFKA_SSL_CAFILE": str(ca_file), "KAFKA_SSL_CHECK_HOSTNAME": "false"}
    )
    context = ssl_context(settings.kafka)
    assert context is not None
    assert (context.check_hostname, context.verify_mode) == (False, ssl.CERT_REQUIRED)
    assert set(client_config(settings.kafka)) == {"security_protocol", "ssl_context"}
    credentials = broker_credentials(settings.kafka)
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials_to_aiokafka_auth(credentials)["security_protocol"] == "SSL"


def test_a_file_that_is_no_certificate_fails_with_one_line(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    settings = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(bogus)})
    with pytest.raises(ConfigError, match="cannot load the TLS files") as error:
        client_config(settings.kafka)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL='TLS' is invalid: must be PLAINTEXT, SSL,"),
        ({**SASL, "KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM='GSSAPI' is invalid: must be PLAIN,"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD: set both",
        ),
        (
            {**SASL, "KAFKA_SASL_PASSWORD": ""},
            "KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT needs KAFKA_SASL_PASSWORD: set it",
        ),
        (
            {"KAFKA_SASL_USERNAME": "alice", "KAFKA_SASL_PASSWORD": PASSWORD},
            "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD set but KAFKA_SECURITY_PROTOCOL=PLAINTEXT sends no",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
            "KAFKA_SSL_CAFILE='/nonexistent/ca.pem' is invalid: no such file",
        ),
        (
            {**SASL, "KAFKA_SSL_CAFILE": str(REPO_ROOT / "README.md")},
            "KAFKA_SSL_CAFILE set but KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT does not use TLS",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_KEYFILE": str(REPO_ROOT / "README.md")},
            "KAFKA_SSL_KEYFILE set without KAFKA_SSL_CERTFILE",
        ),
    ],
)
def test_inconsistent_settings_fail_with_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env(env)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert PASSWORD not in str(error.value)


@pytest.mark.parametrize(
    ("ca_content", "line"),
    [
        (None, "KAFKA_SSL_CAFILE='{path}' is invalid: no such file"),
        ("not a certificate\n", "cannot load the TLS files (KAFKA_SSL_CAFILE={path}): "),
    ],
)
def test_the_worker_refuses_to_start_with_a_ca_file_it_cannot_use(
    tmp_path: Path, ca_content: str | None, line: str
) -> None:
    path = tmp_path / "ca.pem"
    if ca_content is not None:
        path.write_text(ca_content)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(path)}
    done = run_worker_to_exit(env, timeout_s=60)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1  # one line, before any model is loaded
    assert done.stderr.startswith("inference-worker: configuration error: " + line.format(path=path))


def test_passwords_never_appear_in_the_settings_repr_or_help() -> None:
    settings = Settings.from_env({**SASL, "KAFKA_SSL_KEY_PASSWORD": PASSWORD + "-key"})
    assert settings.kafka.sasl_password.get_secret_value() == PASSWORD
    for shown in (repr(settings), str(settings), f"{settings.kafka.sasl_password}", describe()):
        assert PASSWORD not in shown
    assert "Secret('**********')" in repr(settings)
    assert PASSWORD not in repr(broker_credentials(settings.kafka))  # faust logs its conf's credentials by repr


def test_debug_logs_show_the_sasl_exchange_by_type_only(caplog: pytest.LogCaptureFixture) -> None:
    """aiokafka logs each request at DEBUG; PLAIN's SaslAuthenticate request is the password in clear."""
    from aiokafka.protocol.admin import SaslAuthenticateRequest_v1

    hide_sasl_exchange()
    caplog.set_level(logging.DEBUG, "aiokafka.conn")
    request = SaslAuthenticateRequest_v1(b"\x00alice\x00" + PASSWORD.encode())
    assert PASSWORD.encode() in repr(request).encode()  # what aiokafka would log
    logging.getLogger("aiokafka.conn").debug("Request to %s:%d %d: %s", "127.0.0.1", 9094, 3, request)
    assert caplog.messages == ["Request to 127.0.0.1:9094 3: SaslAuthenticateRequest_v1(hidden)"]


def test_the_worker_never_logs_the_password() -> None:
    """A worker at LOG_LEVEL=debug that starts up (models loaded, app created) and then finds no
    broker: nothing it or its libraries print contains the password. The integration test
    checks the same for a worker that runs against a SASL listener."""
    env = {
        **os.environ,
        **SASL,
        "PYTHONPATH": str(REPO_ROOT),
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "LOG_LEVEL": "debug",
    }
    done = run_worker_to_exit(env, timeout_s=120)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "cannot reach Kafka" in output.splitlines()[-1]
    assert "app.models.runner" in output  # the models were loaded and logged: the start got that far
    assert PASSWORD not in output
