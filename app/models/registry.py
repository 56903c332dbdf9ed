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

import torch

from app.errors import ModelLoadError
from app.models.formats import LOADERS
from app.models.metadata import METADATA_FILE, ModelMetadata


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders numeric parts as numbers: 1 < 2 < 10, 1.9 < 1.10."""
    parts = re.split(r"[.\-_]", version)
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in parts)


class ModelRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root

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
