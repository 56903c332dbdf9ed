"""A directory-based model registry: ``<root>/<name>/<version>/`` holds an artifact and metadata.json.

Versions sort numerically where they are numbers ("10" after "9", "1.10" after "1.9"), so
"latest" is the highest. Artifacts are loaded without unpickling arbitrary objects, by one
loader per format (``app.formats``): torch.export, TorchScript, a state_dict plus its module
class, ONNX, or a sentence-transformers folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from app.errors import ModelLoadError
from app.formats import LOADERS

METADATA_FILE = "metadata.json"
ENSEMBLE_FORMAT = "ensemble"
"""Built from its members' runners by ``app.catalog``; it has no artifact of its own."""
SUPPORTED_FORMATS = (*LOADERS, ENSEMBLE_FORMAT)
KINDS = ("classifier", "regressor", "embedding")
INPUTS = ("features", "text")


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
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, document: dict[str, Any], where: Path) -> ModelMetadata:
        try:
            metadata = cls(
                name=str(document["name"]),
                version=str(document["version"]),
                format=str(document["format"]),
                artifact=str(document["artifact"]),
                kind=str(document["kind"]),
                # Text models take a string, not a vector: they have no input_size.
                input_size=int(document["input_size"] if document.get("input") != "text" else 0),
                feature_names=tuple(document.get("feature_names", ())),
                labels=tuple(document.get("labels", ())),
                positive_label=document.get("positive_label"),
                input=str(document.get("input", "features")),
                extra={k: v for k, v in document.items() if k not in _CORE_FIELDS},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{where}: metadata is missing or has a bad field: {exc!r}") from None
        metadata.validate(where)
        return metadata

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
}


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders numeric parts as numbers: 1 < 2 < 10, 1.9 < 1.10."""
    parts = re.split(r"[.\-_]", version)
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in parts)


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root

    def versions(self, name: str) -> list[str]:
        model_dir = self.root / name
        if not model_dir.is_dir():
            raise ModelLoadError(f"model {name!r} not found: no folder {model_dir}")
        found = [child.name for child in model_dir.iterdir() if (child / METADATA_FILE).is_file()]
        return sorted(found, key=version_key)

    def resolve(self, name: str, version: str = "latest") -> str:
        available = self.versions(name)
        if not available:
            raise ModelLoadError(f"model {name!r} has no versions under {self.root / name}")
        if version == "latest":
            return available[-1]
        if version not in available:
            raise ModelLoadError(f"model {name!r} has no version {version!r} (have: {', '.join(available)})")
        return version

    def metadata(self, name: str, version: str = "latest") -> ModelMetadata:
        version_dir = self.root / name / self.resolve(name, version)
        path = version_dir / METADATA_FILE
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{path}: cannot read metadata: {exc}") from None
        if not isinstance(document, dict):
            raise ModelLoadError(f"{path}: metadata must be a JSON object")
        metadata = ModelMetadata.from_dict(document, path)
        if (metadata.name, metadata.version) != (name, version_dir.name):
            raise ModelLoadError(
                f"{path}: metadata says {metadata.name}/{metadata.version}, folder is {name}/{version_dir.name}"
            )
        return metadata

    def load_module(self, metadata: ModelMetadata) -> torch.nn.Module:
        version_dir = self.root / metadata.name / metadata.version
        try:
            return LOADERS[metadata.format](version_dir, metadata)
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to deserialise is a load error
            path = version_dir / metadata.artifact
            raise ModelLoadError(f"{path}: cannot load {metadata.format} artifact: {exc!r}") from None
