"""Readiness probe for a Kafka broker or cluster using only the standard library.

Sends one Metadata v0 request over plain TCP. Used by kafka.sh before any Python dependency is
installed, so it must not import aiokafka.

    python3 ready.py HOST:PORT [TIMEOUT_S]
        ready when the broker answers with at least one broker in its list
    python3 ready.py HOST:PORT [TIMEOUT_S] --brokers N --topic NAME
        ready when the metadata lists N brokers and every partition of topic NAME has a leader and
        all N replicas in sync (the request names the topic, so a broker with
        auto.create.topics.enable creates it, with the cluster's default replication factor)

Exit 0 when ready, 1 otherwise.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
from dataclasses import dataclass

METADATA_API_KEY = 3
CLIENT_ID = b"kafka-local-ready"
CORRELATION_ID = 7


@dataclass(frozen=True)
class Partition:
    error_code: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


@dataclass(frozen=True)
class Metadata:
    brokers: tuple[int, ...]
    """Node ids."""
    topics: dict[str, tuple[int, list[Partition]]]
    """Per topic: its error code and partitions."""


def metadata_request(topics: list[str]) -> bytes:
    header = struct.pack(">hhih", METADATA_API_KEY, 0, CORRELATION_ID, len(CLIENT_ID)) + CLIENT_ID
    body = struct.pack(">i", len(topics))  # v0: an empty list asks for all topics
    for topic in topics:
        name = topic.encode()
        body += struct.pack(">h", len(name)) + name
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        data += chunk
    return data


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def unpack(self, fmt: str) -> tuple[int, ...]:
        values = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return values

    def int16(self) -> int:
        return self.unpack(">h")[0]

    def int32(self) -> int:
        return self.unpack(">i")[0]

    def string(self) -> str:
        size = self.int16()
        text = self.data[self.at : self.at + size].decode()
        self.at += size
        return text

    def int32s(self) -> tuple[int, ...]:
        return tuple(self.int32() for _ in range(self.int32()))


def parse_metadata(response: bytes) -> Metadata:
    reader = Reader(response)
    if reader.int32() != CORRELATION_ID:
        raise ConnectionError("unexpected correlation id")
    brokers = []
    for _ in range(reader.int32()):
        brokers.append(reader.int32())
        reader.string()  # host
        reader.int32()  # port
    topics: dict[str, tuple[int, list[Partition]]] = {}
    for _ in range(reader.int32()):
        error_code = reader.int16()
        name = reader.string()
        partitions = []
        for _ in range(reader.int32()):
            partition_error = reader.int16()
            reader.int32()  # partition id
            leader = reader.int32()
            partitions.append(Partition(partition_error, leader, reader.int32s(), reader.int32s()))
        topics[name] = (error_code, partitions)
    return Metadata(tuple(brokers), topics)


def fetch_metadata(host: str, port: int, timeout_s: float, topics: list[str]) -> Metadata:
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.settimeout(timeout_s)
        sock.sendall(metadata_request(topics))
        (size,) = struct.unpack(">i", read_exact(sock, 4))
        return parse_metadata(read_exact(sock, size))


def cluster_ready(metadata: Metadata, brokers: int, topic: str) -> bool:
    """``brokers`` brokers listed, and every partition of ``topic`` led and fully in sync."""
    if len(metadata.brokers) != brokers:
        return False
    error_code, partitions = metadata.topics.get(topic, (-1, []))
    if error_code != 0 or not partitions:
        return False
    return all(p.error_code == 0 and p.leader >= 0 and len(p.isr) == brokers for p in partitions)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("server", help="HOST:PORT")
    parser.add_argument("timeout_s", nargs="?", type=float, default=5.0)
    parser.add_argument("--brokers", type=int, default=0, help="brokers the cluster must list")
    parser.add_argument("--topic", default="", help="topic whose partitions must be led and fully in sync")
    args = parser.parse_args()
    host, _, port = args.server.rpartition(":")
    try:
        metadata = fetch_metadata(host, int(port), args.timeout_s, [args.topic] if args.topic else [])
    except (OSError, struct.error, UnicodeDecodeError):
        return 1
    if args.brokers:
        return 0 if cluster_ready(metadata, args.brokers, args.topic) else 1
    return 0 if metadata.brokers else 1


if __name__ == "__main__":
    sys.exit(main())
