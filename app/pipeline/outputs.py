"""Build outputs: the stage after predict (... -> predict -> build outputs -> deliver -> ack).

An input's outcome becomes the record to publish: its PredictionResult on the output topic (with
the input's trace context headers, ``PROPAGATED_HEADERS``), or,
when it cannot be predicted, the input itself on the dead-letter topic, untouched, with the reason
in the headers, so that nothing is silently dropped. A shadow version's result goes to the shadow
topic only; it never takes the served result's place.

Each output travels to delivery with a ``Confirmation``: what the broker's acknowledgement settles.
An input's own outcome (``Predicted`` or ``DeadLettered``) carries its ack and gives the statistics
their ``Observation``; a ``ShadowResult`` acks nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from app.errors import RecordError
from app.kafka.delivery import OutboundRecord
from app.logs import record_fields
from app.models.catalog import ModelCatalog
from app.models.runner import ModelOutput, Runner
from app.pipeline.admission import Admitted, InboundRecord
from app.pipeline.batcher import Batched
from app.pipeline.tracing import carried
from app.records.dead_letters import dead_letter_headers
from app.records.events import SourceRef, event_id_of
from app.records.observations import Observation, source_name
from app.records.results import build_result, encode_result
from app.records.wire_format import Encode
from app.settings import TopicSettings

log = logging.getLogger(__name__)

Ack = Callable[[], Any]
"""Mark the input record done (may return an awaitable)."""


# Only what delivery and the statistics need, so the event and its input are freed once built.
@dataclass(slots=True)
class Predicted:
    """An input whose PredictionResult was built."""

    source: SourceRef
    ack: Ack
    runner: Runner
    event_time_ms: float
    output: Batched[ModelOutput]
    latency_s: float
    """From the event's time to the result's building, as the result says."""

    def __str__(self) -> str:
        return str(self.source)

    def observation(self) -> Observation:
        source, metadata, output = self.source, self.runner.metadata, self.output.value
        return Observation(
            metadata.name,
            metadata.version,
            self.event_time_ms,
            source_name(source.topic, source.partition),
            source.offset,
            prediction=output.prediction,
            label=output.label,
            latency_ms=self.latency_s * 1000.0,
            batch_size=self.output.batch_size,
        )


@dataclass(slots=True)
class DeadLettered:
    """An input sent to the dead-letter topic."""

    record: InboundRecord
    ack: Ack
    error: RecordError
    runner: Runner
    """The version it was meant for: the one it was routed to, else the default model's."""

    def __str__(self) -> str:
        return str(self.record.source)

    def observation(self) -> Observation:
        record, metadata = self.record, self.runner.metadata
        event_time_ms = record.timestamp_ms if record.timestamp_ms is not None else time.time() * 1000.0
        source = source_name(record.source.topic, record.source.partition)
        return Observation(metadata.name, metadata.version, event_time_ms, source, record.source.offset, True)


@dataclass(slots=True)
class ShadowResult:
    """A shadow version's result for an input."""

    runner: Runner
    source: SourceRef

    def __str__(self) -> str:
        return f"shadow {self.runner.key} of {self.source}"


Confirmation = Predicted | DeadLettered | ShadowResult
"""What the broker's acknowledgement of one output settles."""


class Outputs:
    """Builds each output record and its confirmation, for the topics in the settings."""

    def __init__(
        self,
        topics: TopicSettings,
        catalog: ModelCatalog,
        encode: Encode = encode_result,
        encode_shadow: Encode = encode_result,
        propagated_headers: Collection[str] = (),
    ) -> None:
        """``encode``, ``encode_shadow``: how results are written to the output and shadow topics (OUTPUT_FORMAT);
        ``propagated_headers``: the input headers results carry (names compared case-insensitively)."""
        self._topics = topics
        self._catalog = catalog
        self._encode = encode
        self._encode_shadow = encode_shadow
        self._propagated = frozenset(name.lower() for name in propagated_headers)

    def predicted(self, admitted: Admitted, ack: Ack, output: Batched[ModelOutput]) -> tuple[Predicted, OutboundRecord]:
        record = admitted.record
        result = build_result(
            admitted.event,
            output.value,
            admitted.runner.metadata,
            output.batch_size,
            record.source,
            admitted.cached is not None,
        )
        outbound = self._answer(self._topics.output_topic, self._encode, record, result)
        predicted = Predicted(
            record.source, ack, admitted.runner, admitted.event.event_time_ms, output, result["latency_ms"] / 1000.0
        )
        return predicted, outbound

    def dead_lettered(
        self, record: InboundRecord, ack: Ack, error: RecordError, runner: Runner | None, event_id: str | None = None
    ) -> tuple[DeadLettered, OutboundRecord]:
        """``event_id``: the event's, when it was decoded; else read from the value as far as it goes."""
        runner = runner or self._catalog.serving(self._catalog.default_model)
        source, metadata = record.source, runner.metadata
        event_id = event_id or event_id_of(record.value, source)
        fields = record_fields(
            *source, event_id, error_class=error.error_class, model=metadata.name, version=metadata.version
        )
        log.warning("dead-lettering %s: %s: %s", source, error.error_class, error.reason, extra=fields)
        headers = dead_letter_headers(error, source, record.headers, metadata)
        topic = self._topics.dead_letter_topic
        outbound = OutboundRecord(
            topic, record.key, record.value, headers, record.timestamp_ms, source=source, event_id=event_id
        )
        return DeadLettered(record, ack, error, runner), outbound

    def shadow(
        self, admitted: Admitted, runner: Runner, output: Batched[ModelOutput]
    ) -> tuple[ShadowResult, OutboundRecord]:
        record = admitted.record
        result = build_result(admitted.event, output.value, runner.metadata, output.batch_size, record.source)
        result["shadow"] = True
        outbound = self._answer(self._topics.shadow_topic, self._encode_shadow, record, result)
        return ShadowResult(runner, record.source), outbound

    def _answer(self, topic: str, encode: Encode, record: InboundRecord, result: dict[str, Any]) -> OutboundRecord:
        """A result as the record for ``topic``: its input's key, and the input headers results carry."""
        headers = carried(record.headers, self._propagated)
        return OutboundRecord(
            topic, record.key, encode(result), headers, source=record.source, event_id=result["event_id"]
        )
