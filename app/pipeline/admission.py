"""Decode and admit: the stages before batching (decode -> admit -> batch -> predict -> ...).

A record comes in; out comes either an ``Admitted`` input, routed to the model version that
serves it (and to the shadow versions that see a copy), or a ``Refused`` record with the reason
it goes to the dead-letter topic. Refusing here, record by record, keeps bad input out of the
batches: a model only ever sees inputs of the kind and size it takes. With a result cache, an
input seen recently is admitted with its cached output and needs no forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from app.errors import InvalidRecord, RecordError
from app.models.catalog import ModelCatalog
from app.models.metadata import ModelKey
from app.models.runner import ModelOutput, Runner
from app.pipeline.batcher import Batched
from app.pipeline.cache import ResultCache
from app.records.dead_letters import Headers
from app.records.events import PredictionEvent, SourceRef, parse_event
from app.records.wire_format import Decode


class InboundRecord(NamedTuple):
    source: SourceRef
    key: bytes | None
    value: bytes | None
    headers: Headers = []
    timestamp_ms: int | None = None


CacheKey = tuple[ModelKey, tuple[float, ...] | str]


# Not frozen: a frozen dataclass costs about three times as much to build, once per record.
@dataclass(slots=True)
class Admitted:
    """A valid event and the versions that compute it; built here, only read after."""

    record: InboundRecord
    event: PredictionEvent
    runner: Runner
    shadows: list[Runner]
    """Versions whose results go to the shadow topic only (the catalog's own list)."""
    cached: Batched[ModelOutput] | None = None
    """A cache hit: the output, from no batch (batch size 0)."""
    cache_key: CacheKey | None = None
    """A cache miss: where the output goes once computed."""


@dataclass(slots=True)
class Refused:
    """A record that goes to the dead-letter topic untouched, and why."""

    record: InboundRecord
    error: RecordError
    runner: Runner | None
    """The version it was routed to, when routing got that far: its dead letter names that model."""


class Admission:
    def __init__(
        self,
        catalog: ModelCatalog,
        max_record_bytes: int,
        cache: ResultCache[ModelOutput] | None = None,
        decode: Decode | None = None,
    ) -> None:
        """``decode``: how a value becomes an event (INPUT_FORMAT); None: plain JSON, ``parse_event``."""
        self._catalog = catalog
        self._max_record_bytes = max_record_bytes
        self._cache = cache
        self._decode = decode

    def admit(self, record: InboundRecord) -> Admitted | Refused:
        runner = None
        try:
            if self._decode is None:
                event = parse_event(record.value, record.source, self._max_record_bytes)
            else:
                event = self._decode(record.value, record.source)
            runner, shadows = self._catalog.select(event.model, event.user_id)
            event = check_input(event, runner)
        except InvalidRecord as exc:
            return Refused(record, exc, runner)
        if self._cache is None:
            return Admitted(record, event, runner, shadows)
        key = cache_key(runner, event)
        cached = self._cache.get(key)
        if cached is None:
            return Admitted(record, event, runner, shadows, cache_key=key)
        return Admitted(record, event, runner, shadows, cached=Batched(cached, 0))


def check_input(event: PredictionEvent, runner: Runner) -> PredictionEvent:
    """The event with its features in the model's order; InvalidRecord when its input does not fit the model."""
    wanted = runner.metadata.input
    given = "features" if event.text is None else "text"
    if given != wanted:
        raise InvalidRecord("wrong_input_kind", f"the event carries {given}, model {runner.key} takes {wanted}")
    if event.text is not None:
        return event
    if event.named_features is not None:
        return event.with_features(ordered_features(event.named_features, runner))
    expected = runner.metadata.input_size
    if len(event.features) != expected:
        raise InvalidRecord(
            "wrong_feature_count", f"{len(event.features)} features given, model {runner.key} takes {expected}"
        )
    return event


def ordered_features(named: dict[str, float], runner: Runner) -> list[float]:
    """Named features as the model takes them: in the order of its metadata's ``feature_names``."""
    names = runner.metadata.feature_names
    if not names:
        raise InvalidRecord(
            "wrong_feature_names", f"model {runner.key} has no feature_names: send 'features' as an array"
        )
    try:
        features = [named[name] for name in names]
    except KeyError:
        missing = [name for name in names if name not in named]
        raise InvalidRecord(
            "wrong_feature_names", f"model {runner.key} needs {len(missing)} more: {_listed(missing)}"
        ) from None
    if len(named) != len(names):
        unknown = [name for name in named if name not in set(names)]
        raise InvalidRecord("wrong_feature_names", f"model {runner.key} takes no {_listed(unknown)}")
    return features


def _listed(names: list[str]) -> str:
    shown = ", ".join(repr(name[:64]) for name in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def cache_key(runner: Runner, event: PredictionEvent) -> CacheKey:
    """The input itself, not only its hash, so colliding inputs never share a result."""
    return runner.key, tuple(event.features) if event.text is None else event.text
