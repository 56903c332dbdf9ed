"""The private faust and aiokafka names the worker relies on (all in ``app.kafka.transport``) still
exist with the signatures it was written against: an upgrade that changes one fails here."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faust.transport.drivers import aiokafka as aiokafka_driver

from app.kafka import transport
from app.kafka.transport import UPSTREAM_PINS, missing_pins


def test_every_pinned_private_name_exists_with_its_signature() -> None:
    assert missing_pins() == []


def test_a_pinned_name_that_disappears_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    defined_in = next(cls for cls in aiokafka_driver.Consumer.__mro__ if "_drain_messages" in cls.__dict__)
    monkeypatch.delattr(defined_in, "_drain_messages")
    assert missing_pins() == ["faust.transport.drivers.aiokafka.Consumer._drain_messages is gone"]


def test_a_pinned_method_whose_parameters_change_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    async def reshaped(self: object, offsets: object, *, retries: int = 1) -> bool:
        return True

    monkeypatch.setattr(aiokafka_driver.Consumer, "_commit", reshaped)
    assert missing_pins() == [
        "faust.transport.drivers.aiokafka.Consumer._commit takes ('self', 'offsets', 'retries'), "
        "pinned ('self', 'offsets')"
    ]


async def test_the_private_attributes_the_transport_reads_exist_on_live_objects() -> None:
    """Attributes set in constructors cannot be seen on the class: look at real instances."""
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    for name in ("_subscription", "_isolation_level"):
        assert hasattr(consumer, name), f"AIOKafkaConsumer.{name} is gone"
    assert hasattr(consumer._subscription, "subscription")
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
    assert hasattr(producer, "_txn_manager")
    for name in ("_read_offset", "_committed_offset", "_unacked_messages", "_stopped", "_thread"):
        assert transport._set_in_init(aiokafka_driver.Consumer, name), f"faust Consumer.{name} is gone"
    assert len(UPSTREAM_PINS) >= 10


def test_the_connection_probe_can_open_a_connection_as_it_did() -> None:
    import inspect

    from aiokafka.conn import create_conn

    assert {"host", "port", "request_timeout_ms"} <= set(inspect.signature(create_conn).parameters)
