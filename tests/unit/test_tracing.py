"""Trace context goes from each input to its outputs, and each model batch is a span linked to the
trace contexts of its inputs (OpenTelemetry SDK, in-memory exporter; the broker-side propagation is
in tests/integration/test_tracing.py)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from app.models.catalog import ModelCatalog
from app.models.runner import Runner
from app.pipeline.batcher import MicroBatcher
from app.pipeline.inference import InboundRecord, InferencePipeline
from app.pipeline.tracing import carried, start_tracing
from app.records.events import SourceRef
from app.settings import Settings, TracingSettings, defaults
from tests.unit.test_pipeline import DEFAULTS, AckingProducer, catalog, runner, shadowed

__all__ = ["catalog", "runner", "shadowed"]  # fixtures shared with test_pipeline

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e47{:02x}"
PARENT_ID = "00f067aa0ba902{:02x}"


def traceparent(n: int) -> bytes:
    return f"00-{TRACE_ID.format(n)}-{PARENT_ID.format(n)}-01".encode()


def traced_record(offset: int, runner: Runner, traced: bool = True) -> InboundRecord:
    features = [1.0] * runner.metadata.input_size
    value = orjson.dumps({"event_id": f"e{offset}", "user_id": f"u{offset}", "features": features, "timestamp": 0})
    headers = [("content-type", b"application/json")]
    if traced:
        headers += [("traceparent", traceparent(offset)), ("TraceState", f"vendor=v{offset}".encode())]
    return InboundRecord(SourceRef("events", 0, offset), b"u", value, headers)


def test_outputs_carry_only_the_propagated_headers_case_insensitively() -> None:
    headers = [("traceparent", b"tp"), ("X-Tenant", b"t1"), ("tracestate", b"ts"), ("other", b"o")]
    assert carried(headers, {"traceparent", "tracestate"}) == [("traceparent", b"tp"), ("tracestate", b"ts")]
    assert carried(headers, {"traceparent", "x-tenant"}) == [("traceparent", b"tp"), ("X-Tenant", b"t1")]
    assert carried([], {"traceparent"}) == []


def test_propagated_headers_and_tracing_are_settings() -> None:
    assert defaults(TracingSettings) == TracingSettings(("traceparent", "tracestate"), "off")
    settings = Settings.from_env({"PROPAGATED_HEADERS": "traceparent, tracestate, baggage", "TRACING": "otlp"})
    assert settings.tracing == TracingSettings(("traceparent", "tracestate", "baggage"), "otlp")
    assert start_tracing(defaults(TracingSettings)) is None


async def test_results_and_shadow_results_carry_their_inputs_trace_context(
    shadowed: ModelCatalog, runner: Runner
) -> None:
    producer = AckingProducer()
    tracing = dataclasses.replace(defaults(TracingSettings), propagated_headers=("traceparent", "tracestate"))
    settings = dataclasses.replace(DEFAULTS.batching, max_wait_ms=1.0)
    pipeline = InferencePipeline(settings, DEFAULTS.topics, shadowed, producer, 0.01, tracing=tracing)
    pipeline.start()
    await pipeline.submit_many([(traced_record(n, runner, traced=n != 2), lambda: None) for n in range(4)])
    await pipeline.drain()
    await pipeline.stop()
    by_topic: dict[str, dict[int, list[tuple[str, bytes]]]] = {}
    for record in producer.sent:
        assert record.source is not None
        by_topic.setdefault(record.topic, {})[record.source.offset] = record.headers
    assert set(by_topic) == {"predictions", "predictions.shadow"}
    for outputs in by_topic.values():
        assert outputs[2] == []  # an input without trace context: its outputs have no headers
        for n in (0, 1, 3):
            assert outputs[n] == [("traceparent", traceparent(n)), ("TraceState", f"vendor=v{n}".encode())]


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


async def test_each_batch_is_a_span_linked_to_its_inputs_trace_contexts(
    catalog: ModelCatalog, runner: Runner, exporter: InMemorySpanExporter
) -> None:
    tracer = start_tracing(defaults(TracingSettings), SimpleSpanProcessor(exporter))
    assert tracer is not None
    settings = dataclasses.replace(DEFAULTS.batching, max_wait_ms=50.0, max_batch_size=4)
    producer = AckingProducer()
    pipeline = InferencePipeline(settings, DEFAULTS.topics, catalog, producer, 0.01, tracer=tracer)
    pipeline.start()
    records = [traced_record(n, runner, traced=n != 5) for n in range(6)]
    await pipeline.submit_many([(record, lambda: None) for record in records])
    await pipeline.drain()
    await pipeline.stop()
    spans = sorted(exporter.get_finished_spans(), key=lambda span: span.start_time or 0)
    assert [span.name for span in spans] == ["predict breast-cancer"] * 2  # batches of 4 and 2
    assert [span.attributes["inference.batch.size"] for span in spans if span.attributes] == [4, 2]
    linked = [[(f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") for link in s.links] for s in spans]
    assert linked == [
        [(TRACE_ID.format(n), PARENT_ID.format(n)) for n in range(4)],
        [(TRACE_ID.format(4), PARENT_ID.format(4))],  # event 5 carried no trace context
    ]
    for span in spans:
        assert span.attributes is not None
        assert span.attributes["inference.model.version"] == runner.metadata.version
        assert span.attributes["inference.batch.failed_records"] == 0
        assert span.status.status_code is StatusCode.UNSET
        assert span.resource.attributes["service.name"] == "inference-worker"


async def test_a_batch_with_failed_records_is_an_error_span(exporter: InMemorySpanExporter) -> None:
    tracer = start_tracing(defaults(TracingSettings), SimpleSpanProcessor(exporter))
    assert tracer is not None

    scope_runner: Any = SimpleNamespace(metadata=SimpleNamespace(name="poisoned", version="7"))  # all it reads

    async def forward(items: list[int]) -> list[int]:
        if 3 in items:
            raise ValueError("poison")
        return items

    batcher = MicroBatcher(forward, max_batch_size=4, max_wait_s=1.0, retries=0, scope=tracer.scope(scope_runner))
    batcher.start()
    futures = batcher.submit_many([1, 2, 3, 4], tags=[None] * 4)
    await batcher.stop()
    assert [future.exception() is not None for future in futures] == [False, False, True, False]
    (span,) = exporter.get_finished_spans()
    assert span.name == "predict poisoned" and span.attributes is not None
    assert span.attributes["inference.batch.failed_records"] == 1
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "1 of 4 records failed"
