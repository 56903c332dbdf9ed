"""Trace context through a worker process and the real broker: each input's ``traceparent`` and
``tracestate`` (and a configured extra header) reach its result and its shadow result, its dead
letter keeps every header, and with TRACING=otlp the worker exports a span per batch, linked to
its inputs' trace contexts, to an OTLP/HTTP endpoint (a local receiver that decodes the protobuf)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.integration.conftest import Names, create_topics, running_worker, worker_env
from tests.integration.streams import Output, Record, event_value, produce, read_outputs, user_key

EVENTS = 40
BAD_EVERY = 10  # events 9, 19, ... are malformed: dead letters


def trace_id(index: int) -> str:
    return f"{index + 1:032x}"


def headers_of(index: int) -> tuple[tuple[str, bytes], ...]:
    """Every event but e-3 carries a trace context, a request id to propagate, and a header not to."""
    if index == 3:
        return (("x-request-id", b"r-3"),)
    return (
        ("traceparent", f"00-{trace_id(index)}-{index + 1:016x}-01".encode()),
        ("tracestate", f"vendor=v{index}".encode()),
        ("x-request-id", f"r-{index}".encode()),
        ("x-internal", b"not for outputs"),
    )


def record(index: int) -> Record:
    value = b"{not json" if index % BAD_EVERY == BAD_EVERY - 1 else event_value(index)
    return Record(value, user_key(index), headers=headers_of(index))


class OtlpReceiver:
    """Takes OTLP/HTTP trace exports (protobuf) on a local port, as a collector would."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/v1/traces":
                    request = ExportTraceServiceRequest()
                    request.ParseFromString(body)
                    receiver.requests.append(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def spans(self) -> list[Any]:
        return [
            span
            for request in self.requests
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]

    def service_names(self) -> set[str]:
        return {
            attribute.value.string_value
            for request in self.requests
            for resource_spans in request.resource_spans
            for attribute in resource_spans.resource.attributes
            if attribute.key == "service.name"
        }


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def test_trace_context_reaches_results_shadows_and_dead_letters_and_batches_are_exported_as_spans(
    bootstrap_servers: str, names: Names, tmp_path: Path, receiver: OtlpReceiver
) -> None:
    create_topics(bootstrap_servers, names)
    env = worker_env(
        bootstrap_servers,
        names,
        tmp_path,
        MODEL_ROUTING='{"breast-cancer": {"split": {"1": 1}, "shadow": ["2"]}}',
        PROPAGATED_HEADERS="traceparent,tracestate,X-Request-Id",
        TRACING="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="200",
        OTEL_SERVICE_NAME="it-inference-worker",
    )
    bad = {index for index in range(EVENTS) if index % BAD_EVERY == BAD_EVERY - 1}
    good = EVENTS - len(bad)
    topics = (names.output_topic, names.shadow_topic, names.dead_letter_topic)
    with running_worker(env, tmp_path / "worker.log"):
        asyncio.run(produce(bootstrap_servers, names.input_topic, record, EVENTS))
        outputs = asyncio.run(read_outputs(bootstrap_servers, topics, lambda seen: len(seen) >= 2 * good + len(bad)))
        exported = asyncio.run(_wait_for_spans(receiver, good))
    assert exported, f"spans exported: {len(receiver.spans())}"

    def index_of(output: Output) -> int:
        if output.topic == names.dead_letter_topic:
            return int(dict(output.headers)["x-request-id"].decode()[2:])
        return int(output.result["event_id"].removeprefix("e-"))

    by_topic: dict[str, dict[int, Output]] = {}
    for output in outputs:
        by_topic.setdefault(output.topic, {})[index_of(output)] = output
    assert set(by_topic[names.output_topic]) == set(by_topic[names.shadow_topic]) == set(range(EVENTS)) - bad
    for topic in (names.output_topic, names.shadow_topic):
        for index, output in by_topic[topic].items():
            expected = [(k, v) for k, v in headers_of(index) if k != "x-internal"]
            assert output.headers == expected, (topic, index)
    assert set(by_topic[names.dead_letter_topic]) == bad
    for index, output in by_topic[names.dead_letter_topic].items():
        original = list(headers_of(index))
        assert output.headers[: len(original)] == original  # every input header, untouched, first
        assert dict(output.headers)["dlq.error.class"] == b"invalid_json"

    spans = receiver.spans()
    assert receiver.service_names() == {"it-inference-worker"}
    assert {span.name for span in spans} == {"predict breast-cancer"}
    linked = [link.trace_id.hex() for span in spans for link in span.links]
    traced_good = {trace_id(index) for index in range(EVENTS) if index not in bad and index != 3}
    # Each traced valid input is linked from the batch of the served version and from the shadow's.
    assert sorted(linked) == sorted([*traced_good, *traced_good])
    sizes = [
        next(attribute.value.int_value for attribute in span.attributes if attribute.key == "inference.batch.size")
        for span in spans
    ]
    assert sum(sizes) == 2 * good


async def _wait_for_spans(receiver: OtlpReceiver, good: int, timeout_s: float = 30.0) -> bool:
    """Until the spans of every served and shadow record were exported (the SDK exports every 200 ms)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        total = 0
        for span in receiver.spans():
            for attribute in span.attributes:
                if attribute.key == "inference.batch.size":
                    total += attribute.value.int_value
        if total >= 2 * good:
            return True
        await asyncio.sleep(0.2)
    return False
