"""kafka/ready.py's reading of a Metadata v0 response: when is a local cluster ready."""

from __future__ import annotations

import importlib.util
import struct
import sys
from types import ModuleType

from tests.conftest import ROOT


def ready_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kafka_ready", ROOT / "kafka" / "ready.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def string(text: str) -> bytes:
    return struct.pack(">h", len(text)) + text.encode()


def int32s(values: list[int]) -> bytes:
    return struct.pack(">i", len(values)) + b"".join(struct.pack(">i", v) for v in values)


def response(brokers: list[int], partitions: list[tuple[int, list[int], list[int]]]) -> bytes:
    """A Metadata v0 response: ``brokers`` node ids, one topic 'probe' with (leader, replicas, isr) partitions."""
    body = struct.pack(">i", 7) + struct.pack(">i", len(brokers))
    for node in brokers:
        body += struct.pack(">i", node) + string("127.0.0.1") + struct.pack(">i", 9191 + node)
    body += struct.pack(">i", 1) + struct.pack(">h", 0) + string("probe") + struct.pack(">i", len(partitions))
    for index, (leader, replicas, isr) in enumerate(partitions):
        body += struct.pack(">hii", 0, index, leader) + int32s(replicas) + int32s(isr)
    return body


def test_a_cluster_is_ready_when_every_partition_is_led_and_fully_in_sync() -> None:
    ready = ready_module()
    full = response([1, 2, 3], [(1, [1, 2, 3], [1, 2, 3]), (2, [2, 3, 1], [2, 3, 1])])
    assert ready.cluster_ready(ready.parse_metadata(full), 3, "probe")


def test_a_cluster_is_not_ready_with_a_broker_missing_a_replica_behind_or_no_leader() -> None:
    ready = ready_module()
    missing = response([1, 2], [(1, [1, 2, 3], [1, 2])])
    behind = response([1, 2, 3], [(1, [1, 2, 3], [1, 2])])
    leaderless = response([1, 2, 3], [(-1, [1, 2, 3], [1, 2, 3])])
    for metadata in (missing, behind, leaderless):
        assert not ready.cluster_ready(ready.parse_metadata(metadata), 3, "probe")
    assert not ready.cluster_ready(ready.parse_metadata(response([1, 2, 3], [])), 3, "probe")
