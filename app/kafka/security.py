"""How every Kafka client of the worker connects: TLS and SASL from the settings, in one place.

``client_config`` gives the keyword arguments for aiokafka's clients (the output producer, the
admin client, the load generator, ``tail``), ``broker_credentials`` the same for faust's own
consumer and producer (faust turns them back into the same aiokafka arguments). A TLS file that
cannot be loaded raises ``ConfigError``; ``explain_connection_failure`` turns a broker that
rejects the credentials, the TLS handshake or the protocol into one line (aiokafka only says it
could not bootstrap), and ``hide_sasl_exchange`` keeps the SASL exchange out of debug logs.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING, Any

from aiokafka.errors import (
    AuthenticationFailedError,
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

from app.errors import ConfigError
from app.kafka.transport import probe_connection
from app.settings import SSL_FILES, KafkaSettings

if TYPE_CHECKING:
    import faust

PROBE_TIMEOUT_S = 10.0
SASL_REFUSED = (SaslAuthenticationFailed, AuthenticationFailedError, UnsupportedSaslMechanismError)


def _hide_sasl_exchange(record: logging.LogRecord) -> bool:
    if isinstance(record.args, tuple):
        record.args = tuple(
            f"{type(arg).__name__}(hidden)" if type(arg).__name__.startswith("SaslAuthenticate") else arg
            for arg in record.args
        )
    return True


def hide_sasl_exchange() -> None:
    """aiokafka logs every request and response at DEBUG, SASL's too: PLAIN's carries the password
    in clear, SCRAM's the salt and proof an offline guesser needs. Log them by type name only."""
    logging.getLogger("aiokafka.conn").addFilter(_hide_sasl_exchange)


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context for SSL and SASL_SSL (certificates verified, against KAFKA_SSL_CAFILE if set)."""
    if not kafka.security_protocol.endswith("SSL"):
        return None
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=kafka.ssl_cafile,
            certfile=kafka.ssl_certfile,
            keyfile=kafka.ssl_keyfile,
            password=kafka.ssl_key_password.get_secret_value() or None,
        )
    except (ssl.SSLError, OSError) as exc:
        given = [(env, getattr(kafka, field)) for env, field in SSL_FILES]
        files = ", ".join(f"{env}={path}" for env, path in given if path is not None)
        raise ConfigError(f"cannot load the TLS files ({files or 'system CAs'}): {exc}") from None
    context.check_hostname = kafka.ssl_check_hostname
    return context


def client_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
    config: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    context = ssl_context(kafka)
    if context is not None:
        config["ssl_context"] = context
    if kafka.security_protocol.startswith("SASL_"):
        config["sasl_mechanism"] = kafka.sasl_mechanism
        config["sasl_plain_username"] = kafka.sasl_username
        config["sasl_plain_password"] = kafka.sasl_password.get_secret_value()
    return config


def broker_credentials(kafka: KafkaSettings) -> faust.SASLCredentials | faust.SSLCredentials | None:
    """faust's ``broker_credentials``; SASLCredentials with a context means SASL_SSL, without it SASL_PLAINTEXT."""
    import faust  # here: the other clients and the CLI's quick paths need no faust

    context = ssl_context(kafka)
    if kafka.security_protocol.startswith("SASL_"):
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value(),
            ssl_context=context,
            mechanism=kafka.sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


async def explain_connection_failure(kafka: KafkaSettings) -> str | None:
    """Why the brokers refused the connection, when it is the credentials, TLS or a listener of
    another protocol; None when it is something else (nothing listening, a timeout).

    aiokafka's bootstrap logs the cause and raises only "Unable to bootstrap", so this opens one
    connection itself to find it.
    """
    config = client_config(kafka)
    mismatch = f"check that the listener expects KAFKA_SECURITY_PROTOCOL={kafka.security_protocol}"
    for server in (s.strip() for s in kafka.bootstrap_servers.split(",")):
        host, _, port = server.rpartition(":")
        try:
            await probe_connection(host, int(port), PROBE_TIMEOUT_S, **config)
        except ssl.SSLError as exc:
            return f"TLS handshake with {server} failed ({exc}): check KAFKA_SSL_CAFILE and the broker's certificate"
        except IllegalSaslStateError:
            return f"{server} is not a SASL listener: {mismatch}"
        except SASL_REFUSED as exc:
            return (
                f"{server} refused the SASL {kafka.sasl_mechanism} login of "
                f"KAFKA_SASL_USERNAME={kafka.sasl_username!r} ({type(exc).__name__}): "
                "check KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM"
            )
        except (ConnectionResetError, KafkaConnectionError):
            # Accepted, then dropped: TLS or SASL expected where the client sent neither, or the reverse.
            return f"{server} closed the connection: {mismatch}"
        except (KafkaError, OSError, TimeoutError, ValueError):
            continue
    return None
