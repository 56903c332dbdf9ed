"""The registry client's settings and the one-line explanations of a registry that refuses (no server:
the integration tests talk to the real one)."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
from confluent_kafka.schema_registry.error import SchemaRegistryError

from app.kafka.schema_registry import explain_refusal, explain_unreachable, registry_config
from app.settings import Settings

URL = "https://registry.example:8081"


def registry_settings(**env: str) -> Settings:
    return Settings.from_env({"SCHEMA_REGISTRY_URL": URL, "OUTPUT_FORMAT": "avro", **env})


def test_client_configuration_uses_confluents_names(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "cert.pem", "key.pem"))
    for path in (ca, cert, key):
        path.write_text("x")
    settings = registry_settings(
        SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO="svc:s3cret",
        SCHEMA_REGISTRY_SSL_CA_LOCATION=str(ca),
        SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION=str(cert),
        SCHEMA_REGISTRY_SSL_KEY_LOCATION=str(key),
    )
    config = registry_config(settings.schema_registry)
    assert config["url"] == URL
    assert (config["basic.auth.credentials.source"], config["basic.auth.user.info"]) == ("USER_INFO", "svc:s3cret")
    assert (config["ssl.ca.location"], config["ssl.certificate.location"], config["ssl.key.location"]) == (
        str(ca),
        str(cert),
        str(key),
    )
    assert "s3cret" not in repr(settings)


def test_refusals_are_one_line_naming_the_setting() -> None:
    settings = registry_settings().schema_registry
    refused = explain_refusal(SchemaRegistryError(401, 40101, "Unauthorized"), settings)
    assert refused.endswith("refused the credentials (HTTP 401): check SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO")
    assert "check SCHEMA_REGISTRY_URL" in explain_refusal(SchemaRegistryError(404, 404, "Not Found"), settings)
    try:
        raise httpx.ConnectError("handshake") from ssl.SSLError(1, "CERTIFICATE_VERIFY_FAILED")
    except httpx.ConnectError as exc:
        assert "check SCHEMA_REGISTRY_SSL_CA_LOCATION" in explain_unreachable(exc, settings)
    unreachable = explain_unreachable(httpx.ConnectError("refused"), settings)
    assert unreachable.endswith("start it (make registry-up) or set SCHEMA_REGISTRY_URL")
    assert "\n" not in refused + unreachable
