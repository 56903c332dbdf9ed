"""The worker's exceptions, one root with behaviour on the class.

    WorkerError
    ├── ConfigError        bad configuration: the worker refuses to start, with one line
    ├── ModelLoadError     a model directory that cannot be loaded or warmed up
    └── RecordError        one record cannot be predicted: it is dead-lettered, never retried
        ├── InvalidRecord  the input itself is bad (encoding, JSON, fields, size)
        └── ModelError     the model failed on this record alone (isolated from its batch)

``RecordError.error_class`` is the short, stable name written to the dead-letter headers.
"""

from __future__ import annotations

ERROR_CLASSES = (
    "empty_value",
    "oversized",
    "not_utf8",
    "invalid_json",
    "schema_violation",
    "non_finite",
    "wrong_feature_count",
    "wrong_feature_names",
    "wrong_input_kind",
    "unknown_model",
    "model_error",
    "unknown_schema",
    "schema_mismatch",
)
"""Every ``error_class`` a dead letter can carry (``dlq.error.class``)."""


class WorkerError(Exception):
    """Root of every error the worker raises on purpose."""


class ConfigError(WorkerError):
    """A setting is missing or invalid; the message is the one line shown to the operator."""


class ModelLoadError(WorkerError):
    """A model could not be found, loaded, or warmed up."""


class RecordError(WorkerError):
    """One record cannot be turned into a prediction; it goes to the dead-letter topic."""

    error_class = "record_error"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidRecord(RecordError):
    """The record's bytes or fields violate the event contract."""

    def __init__(self, error_class: str, reason: str) -> None:
        super().__init__(reason)
        self.error_class = error_class


class ModelError(RecordError):
    """The model raised on this record even when it ran alone."""

    error_class = "model_error"
