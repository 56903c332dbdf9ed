"""A model version's metadata.json, parsed and checked: what the model takes, returns and is called.

The document is checked against ``schemas/model_metadata.schema.json`` (shipped in the package),
then for what a schema cannot express; any problem is one ``ModelLoadError`` line naming the file.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from app.errors import ModelLoadError
from app.settings import BUNDLED_SCHEMAS

METADATA_FILE = "metadata.json"
ENSEMBLE_FORMAT = "ensemble"
"""Built from its members' runners by ``app.models.catalog``; it has no artifact of its own."""
MLFLOW_PYFUNC_FORMAT = "mlflow.pyfunc"
"""An MLflow model with the python_function flavour, from the MLflow registry (``app.models.mlflow_registry``)."""
ARTIFACT_FORMATS = ("torch.export", "torchscript", "state_dict", "onnx", "sentence-transformers", MLFLOW_PYFUNC_FORMAT)
"""Each has its loader in ``app.models.formats.LOADERS``."""
SUPPORTED_FORMATS = (*ARTIFACT_FORMATS, ENSEMBLE_FORMAT)
KINDS = ("classifier", "regressor", "embedding")
INPUTS = ("features", "text")
OUTPUTS = ("logits", "probabilities", "score", "embedding")
"""What a model returns per input (metadata ``output``); see the schema's description."""
DEFAULT_OUTPUT = {"classifier": "logits", "regressor": "score", "embedding": "embedding"}
SCHEMA_FILE = "model_metadata.schema.json"


@functools.cache
def _schema() -> Draft202012Validator:
    return Draft202012Validator(json.loads((BUNDLED_SCHEMAS / SCHEMA_FILE).read_text()))


def check_against_schema(document: dict[str, Any], where: Path) -> None:
    """Raise ModelLoadError, one line, when ``document`` does not match the metadata schema."""
    error = best_match(_schema().iter_errors(document))
    if error is not None:
        at = "".join(f"[{step!r}]" if isinstance(step, int) else f".{step}" for step in error.absolute_path)
        message = error.message if len(error.message) <= 300 else error.message[:300] + "..."
        raise ModelLoadError(f"{where}: does not match {SCHEMA_FILE} at metadata{at}: {message}")


class ModelKey(NamedTuple):
    """One version of one model: how the catalog keys its runners; shown as ``name/version``."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}/{self.version}"


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    version: str
    format: str
    artifact: str
    kind: str
    input_size: int
    feature_names: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    positive_label: str | None = None
    input: str = "features"
    """What events carry for this model: ``features`` (input_size numbers) or ``text`` (a string)."""
    output: str = "logits"
    """What the model returns: ``logits``, ``probabilities``, ``score`` or ``embedding`` (``OUTPUTS``)."""
    output_name: str | None = None
    """ONNX: the graph output to read; None: the first."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, document: dict[str, Any], where: Path) -> ModelMetadata:
        check_against_schema(document, where)
        try:
            kind = str(document["kind"])
            metadata = cls(
                name=str(document["name"]),
                version=str(document["version"]),
                format=str(document["format"]),
                artifact=str(document["artifact"]),
                kind=kind,
                # Text models take a string, not a vector: they have no input_size.
                input_size=int(document["input_size"] if document.get("input") != "text" else 0),
                feature_names=tuple(document.get("feature_names", ())),
                labels=tuple(document.get("labels", ())),
                positive_label=document.get("positive_label"),
                input=str(document.get("input", "features")),
                output=str(document.get("output", DEFAULT_OUTPUT.get(kind, "logits"))),
                output_name=document.get("output_name"),
                extra={k: v for k, v in document.items() if k not in _CORE_FIELDS},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{where}: metadata is missing or has a bad field: {exc!r}") from None
        metadata.validate(where)
        return metadata

    @property
    def key(self) -> ModelKey:
        return ModelKey(self.name, self.version)

    def validate(self, where: Path) -> None:
        problems = []
        if self.format not in SUPPORTED_FORMATS:
            problems.append(f"format {self.format!r} is not one of {SUPPORTED_FORMATS}")
        if self.kind not in KINDS:
            problems.append(f"kind {self.kind!r} is not one of {KINDS}")
        if self.input not in INPUTS:
            problems.append(f"input {self.input!r} is not one of {INPUTS}")
        if self.input == "features" and self.input_size < 1:
            problems.append("input_size must be >= 1")
        dimension = self.extra.get("dimension")
        if self.kind == "embedding" and not (isinstance(dimension, int) and dimension > 0):
            problems.append("an embedding model needs its output 'dimension' (an integer >= 1)")
        if self.kind == "classifier" and len(self.labels) < 2:
            problems.append("a classifier needs at least two labels")
        if self.positive_label is not None and self.positive_label not in self.labels:
            problems.append(f"positive_label {self.positive_label!r} is not among the labels")
        if self.input == "features" and self.feature_names and len(self.feature_names) != self.input_size:
            problems.append(f"{len(self.feature_names)} feature_names for input_size {self.input_size}")
        if self.output not in OUTPUTS:
            problems.append(f"output {self.output!r} is not one of {OUTPUTS}")
        if self.output_name is not None and self.format != "onnx":
            problems.append("output_name applies to ONNX models only")
        if problems:
            raise ModelLoadError(f"{where}: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "format": self.format,
            "artifact": self.artifact,
            "kind": self.kind,
            "input": self.input,
            **({"input_size": self.input_size} if self.input == "features" else {}),
            "feature_names": list(self.feature_names),
            "labels": list(self.labels),
            "positive_label": self.positive_label,
            "output": self.output,
            **({"output_name": self.output_name} if self.output_name is not None else {}),
            **self.extra,
        }


_CORE_FIELDS = {
    "name",
    "version",
    "format",
    "artifact",
    "kind",
    "input_size",
    "feature_names",
    "labels",
    "positive_label",
    "input",
    "output",
    "output_name",
}
