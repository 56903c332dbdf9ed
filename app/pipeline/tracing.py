"""Trace context: carried from each input to its outputs, and optional OpenTelemetry spans per batch.

An input's ``traceparent`` and ``tracestate`` headers (W3C Trace Context; ``PROPAGATED_HEADERS``
names them and any others) are copied onto its result and shadow results, so a consumer of the
predictions continues the producer's trace. Dead letters keep every input header anyway.

With ``TRACING=otlp`` (the ``tracing`` extra), each model batch is a span, ``predict <model>``,
linked to the trace context of every input it carries (a batch has many parents, so links, not
one parent), with the model version, batch size and failed records as attributes. Spans are
exported by the OpenTelemetry SDK's OTLP/HTTP exporter, configured by the standard
``OTEL_EXPORTER_OTLP_*`` and ``OTEL_SERVICE_NAME`` variables, which the SDK reads itself.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from app.errors import ConfigError
from app.models.runner import Runner
from app.pipeline.batcher import BatchScope
from app.records.dead_letters import Headers
from app.settings import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.trace import SpanContext, Tracer

SERVICE_NAME = "inference-worker"
INSTRUMENTATION = "app.pipeline"


def carried(headers: Headers, names: Collection[str]) -> Headers:
    """The headers of an input that its outputs carry (``names`` lower-case), in their order."""
    if not headers:
        return []
    return [(key, value) for key, value in headers if key.lower() in names]


class BatchTracer:
    """Spans per model batch, linked to the inputs' trace contexts."""

    def __init__(self, tracer: Tracer) -> None:
        from opentelemetry.trace import Link, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = tracer
        self._propagator = TraceContextTextMapPropagator()
        self._link = Link
        self._error = (Status, StatusCode.ERROR)

    def context_of(self, headers: Headers) -> SpanContext | None:
        """The trace context an input's headers carry, if a valid one."""
        if not headers:
            return None
        from opentelemetry.trace import get_current_span

        carrier = {
            key.lower(): value.decode("latin-1") for key, value in headers if key.lower() in TRACE_CONTEXT_HEADERS
        }
        if "traceparent" not in carrier:
            return None
        context = get_current_span(self._propagator.extract(carrier)).get_span_context()
        return context if context.is_valid else None

    def scope(self, runner: Runner) -> BatchScope:
        """The span around each batch of ``runner``'s batcher."""
        metadata = runner.metadata
        name = f"predict {metadata.name}"

        @contextmanager
        def batch_span(tags: list[Any]) -> Iterator[Callable[[int], None]]:
            links = [self._link(context) for context in tags if context is not None]
            attributes: dict[str, str | int] = {
                "inference.model.name": metadata.name,
                "inference.model.version": metadata.version,
                "inference.batch.size": len(tags),
            }
            with self._tracer.start_as_current_span(name, links=links, attributes=attributes) as span:

                def failed(count: int) -> None:
                    span.set_attribute("inference.batch.failed_records", count)
                    if count:
                        status, error = self._error
                        span.set_status(status(error, f"{count} of {len(tags)} records failed"))

                yield failed

        return batch_span


TRACE_CONTEXT_HEADERS = frozenset({"traceparent", "tracestate"})


def start_tracing(settings: TracingSettings, processor: SpanProcessor | None = None) -> BatchTracer | None:
    """The batch tracer TRACING asks for (None when off); ``processor`` replaces the OTLP exporter (tests).

    Raises ConfigError when the tracing extra is not installed."""
    if settings.tracing == "off" and processor is None:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise ConfigError("TRACING=otlp needs OpenTelemetry: pip install 'kafka-inference-worker[tracing]'") from None
    if processor is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter())
    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = Resource.create({"service.name": SERVICE_NAME})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(processor)
    return BatchTracer(provider.get_tracer(INSTRUMENTATION))
