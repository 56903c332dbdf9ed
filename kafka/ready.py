"""Readiness probe for a Kafka broker using only the standard library.

Sends one Metadata v0 request over plain TCP and checks that the broker
answers with itself in the broker list. Used by kafka.sh before any Python
dependency is installed, so it must not import aiokafka.

Usage: python3 ready.py HOST:PORT [TIMEOUT_S]   (exit 0 when ready)
"""

from __future__ import annotations

import socket
import struct
import sys

METADATA_API_KEY = 3
CLIENT_ID = b"kafka-local-ready"


def metadata_request(correlation_id: int) -> bytes:
    header = struct.pack(">hhih", METADATA_API_KEY, 0, correlation_id, len(CLIENT_ID)) + CLIENT_ID
    body = struct.pack(">i", 0)  # v0: an empty topic list asks for all topics
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


def broker_count(host: str, port: int, timeout_s: float) -> int:
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.settimeout(timeout_s)
        sock.sendall(metadata_request(correlation_id=7))
        (size,) = struct.unpack(">i", read_exact(sock, 4))
        response = read_exact(sock, size)
    correlation_id, brokers = struct.unpack(">ii", response[:8])
    if correlation_id != 7:
        raise ConnectionError(f"unexpected correlation id {correlation_id}")
    return int(brokers)


def main() -> int:
    host, _, port = sys.argv[1].rpartition(":")
    timeout_s = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    try:
        return 0 if broker_count(host, int(port), timeout_s) > 0 else 1
    except (OSError, struct.error):
        return 1


if __name__ == "__main__":
    sys.exit(main())
