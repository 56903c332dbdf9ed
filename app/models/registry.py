"""A directory-based model registry: ``<root>/<name>/<version>/`` holds an artifact and metadata.json.

Versions sort numerically where they are numbers ("10" after "9", "1.10" after "1.9"), so
"latest" is the highest. Artifacts are loaded without unpickling arbitrary objects, by one
loader per format (``app.models.formats``): torch.export, TorchScript, a state_dict plus its module
class, ONNX, or a sentence-transformers folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Protocol

import torch

from app.errors import ModelLoadError
from app.models.formats import LOADERS
from app.models.metadata import METADATA_FILE, ModelMetadata
from app.models.routing import LATEST
from app.settings import ModelSettings


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders numeric parts as numbers: 1 < 2 < 10, 1.9 < 1.10."""
    parts = re.split(r"[.\-_]", version)
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in parts)


class Registry(Protocol):
    """Where versions are found and loaded from: a folder (``ModelRegistry``) or an MLflow model registry."""

    def is_alias(self, version: str) -> bool:
        """Whether ``version`` stands for a version the registry names (``latest``, an MLflow alias)."""
        ...

    def resolve(self, name: str, version: str = LATEST) -> str: ...

    def metadata(self, name: str, version: str = LATEST) -> ModelMetadata: ...

    def load_module(self, metadata: ModelMetadata) -> torch.nn.Module: ...

    def fingerprint(self, name: str, version: str) -> int:
        """Changes when the version's files change, so a version that failed to load is tried again."""
        ...


def open_registry(settings: ModelSettings) -> Registry:
    """The registry MODEL_URI names (MLflow), else the folder MODEL_DIR."""
    if settings.from_mlflow:
        from app.models.mlflow_registry import MlflowModelRegistry  # the mlflow extra, imported only when used

        return MlflowModelRegistry(settings.mlflow_tracking_uri, settings.model_cache_dir)
    return ModelRegistry(settings.model_dir)


def local_model_dir(settings: ModelSettings) -> Path:
    """The folder holding the served versions' files: MODEL_DIR, or MODEL_CACHE_DIR for MLflow's."""
    return settings.model_cache_dir if settings.from_mlflow else settings.model_dir


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root

    def is_alias(self, version: str) -> bool:
        return version == LATEST

    def versions(self, name: str) -> list[str]:
        model_dir = self.root / name
        if not self.root.is_dir():
            raise ModelLoadError(
                f"MODEL_DIR {self.root} is not a folder: set MODEL_DIR to your model registry "
                "(<MODEL_DIR>/<name>/<version>/metadata.json)"
            )
        if not model_dir.is_dir():
            raise ModelLoadError(f"model {name!r} not found: no folder {model_dir} (MODEL_DIR={self.root})")
        found = [child.name for child in model_dir.iterdir() if (child / METADATA_FILE).is_file()]
        return sorted(found, key=version_key)

    def resolve(self, name: str, version: str = LATEST) -> str:
        available = self.versions(name)
        if not available:
            raise ModelLoadError(f"model {name!r} has no versions under {self.root / name}")
        if version == LATEST:
            return available[-1]
        if version not in available:
            raise ModelLoadError(f"model {name!r} has no version {version!r} (have: {', '.join(available)})")
        return version

    def metadata(self, name: str, version: str = LATEST) -> ModelMetadata:
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

    def fingerprint(self, name: str, version: str) -> int:
        folder = self.root / name / version
        try:
            return hash(tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*"))))
        except OSError:
            return 0
