"""Models from an MLflow model registry (``MODEL_URI=models:/<name>@<alias>``), served like local ones.

A version's artifacts are downloaded once into ``<MODEL_CACHE_DIR>/<name>/<version>/`` (to a
staging folder, renamed into place when complete), which is the layout of the directory registry,
so the loaders it has read them: a folder with our ``metadata.json`` (torch.export, TorchScript,
state_dict, ONNX, sentence-transformers) as ``scripts/register_model.py`` logs it, or else an
MLflow model whose ``MLmodel`` has the ``python_function`` flavour (loaded with
``mlflow.pyfunc``; what the model takes and returns comes from the ``metadata`` it was logged
with, see ``app.models.formats.load_mlflow_pyfunc``). The metadata served names the registered
model and its registry version number, whatever the files say.

Versions of a route are registry version numbers, ``latest`` (the highest), or aliases
(``champion``, ``challenger``), resolved on every poll: moving an alias is a promotion. Registry
versions are immutable, so a downloaded version is never fetched again. The MLflow client is
only imported here, from the ``mlflow`` extra.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from app.errors import ConfigError, ModelLoadError
from app.models.metadata import METADATA_FILE, MLFLOW_PYFUNC_FORMAT, ModelMetadata
from app.models.registry import ModelRegistry
from app.models.routing import LATEST

log = logging.getLogger(__name__)

MLMODEL_FILE = "MLmodel"

# The MLflow client retries a refused connection 7 times with a doubling pause (minutes) and waits
# 120 s for an answer: a worker that cannot reach its registry should say so in seconds. Each is
# only a default: the operator's environment wins.
_CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # a progress bar is noise in a worker's log
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow reports usage to its makers by default; a worker does not
}


class MlflowModelRegistry:
    """The directory registry's interface over an MLflow model registry and a local download cache."""

    def __init__(self, tracking_uri: str, cache_dir: Path) -> None:
        for variable, value in _CLIENT_DEFAULTS.items():
            os.environ.setdefault(variable, value)
        try:
            import mlflow
        except ImportError:
            raise ConfigError("MODEL_URI needs the MLflow client: pip install '.[mlflow]'") from None
        self.tracking_uri = tracking_uri
        self.cache = ModelRegistry(cache_dir)
        self._mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self._client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    @property
    def root(self) -> Path:
        return self.cache.root

    def is_alias(self, version: str) -> bool:
        """Whether the registry must be asked which version ``version`` is (an alias or ``latest``)."""
        return not version.isdigit()

    def versions(self, name: str) -> list[str]:
        found = self._call(name, lambda: self._client.search_model_versions(f"name = '{name}'"))
        return sorted((str(found_version.version) for found_version in found), key=int)

    def resolve(self, name: str, version: str = LATEST) -> str:
        """The version number an alias, ``latest`` or a number stands for; ModelLoadError with one line if none."""
        if version == LATEST:
            available = self.versions(name)
            if not available:
                raise ModelLoadError(f"registered model {name!r} has no versions in the MLflow registry")
            return available[-1]
        if version.isdigit():
            found = self._call(name, lambda: self._client.get_model_version(name, version), f"version {version}")
        else:
            found = self._call(
                name, lambda: self._client.get_model_version_by_alias(name, version), f"alias {version!r}"
            )
        return str(found.version)

    def metadata(self, name: str, version: str = LATEST) -> ModelMetadata:
        """The version's metadata, downloading its artifacts first when they are not in the cache."""
        number = self.resolve(name, version)
        if not (self.root / name / number).is_dir():
            self._download(name, number)
        return self.cache.metadata(name, number)

    def load_module(self, metadata: ModelMetadata) -> torch.nn.Module:
        return self.cache.load_module(metadata)

    def fingerprint(self, name: str, version: str) -> int:
        """Registry versions are immutable: one that failed to load is not tried again."""
        return 0

    def _download(self, name: str, version: str) -> None:
        uri = f"models:/{name}/{version}"
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".download-{name}-{version}-", dir=self.root))
        try:
            try:
                local = Path(self._mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(staging)))
            except Exception as exc:  # noqa: BLE001 - any failure to fetch is this version's load error
                raise ModelLoadError(f"{uri}: cannot download its artifacts from {self.tracking_uri}: {exc}") from None
            folder = _model_folder(local, uri)
            _name_in_metadata(folder, name, version, uri)
            (self.root / name).mkdir(exist_ok=True)
            try:
                os.rename(folder, self.root / name / version)  # whole or not at all
            except OSError:
                if not (self.root / name / version).is_dir():  # else another worker put it there first
                    raise
            log.info("downloaded %s from %s into %s", uri, self.tracking_uri, self.root / name / version)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _call(self, name: str, request: Any, what: str = "") -> Any:
        """One registry request; its failure as ModelLoadError with one line naming the model (and what)."""
        from mlflow.exceptions import MlflowException

        subject = f"registered model {name!r}" + (f" {what}" if what else "")
        unreachable = ModelLoadError(
            f"cannot reach the MLflow tracking server MLFLOW_TRACKING_URI={self.tracking_uri}: start it or fix the URI"
        )
        try:
            return request()
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise ModelLoadError(f"{subject} not found in the MLflow registry at {self.tracking_uri}") from None
            if "failed with exception" in str(exc):  # the client's wording for a request that got no answer
                raise unreachable from None
            raise ModelLoadError(
                f"{subject}: the MLflow registry at {self.tracking_uri} failed: {_first_line(exc)}"
            ) from None
        except OSError:
            raise unreachable from None


def _model_folder(local: Path, uri: str) -> Path:
    """The downloaded folder that holds metadata.json or MLmodel (the artifacts' root, or its one child)."""
    for candidate in (local, *sorted(child for child in local.iterdir() if child.is_dir())):
        if (candidate / METADATA_FILE).is_file() or (candidate / MLMODEL_FILE).is_file():
            return candidate
    raise ModelLoadError(f"{uri}: its artifacts hold neither {METADATA_FILE} nor an MLflow {MLMODEL_FILE}")


def _name_in_metadata(folder: Path, name: str, version: str, uri: str) -> None:
    """Write metadata.json naming the registered model and version: from the artifacts' own metadata.json,
    or else from the metadata an MLflow pyfunc model was logged with."""
    path = folder / METADATA_FILE
    try:
        if path.is_file():
            document = json.loads(path.read_text())
        else:
            import yaml

            mlmodel = yaml.safe_load((folder / MLMODEL_FILE).read_text()) or {}
            if "python_function" not in mlmodel.get("flavors", {}):
                raise ModelLoadError(
                    f"{uri}: an MLflow model without {METADATA_FILE} needs the python_function flavour"
                )
            document = {"artifact": ".", **(mlmodel.get("metadata") or {}), "format": MLFLOW_PYFUNC_FORMAT}
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{uri}: cannot read its metadata: {exc}") from None
    if not isinstance(document, dict):
        raise ModelLoadError(f"{uri}: {METADATA_FILE} must be a JSON object")
    path.write_text(json.dumps({**document, "name": name, "version": version, "source": uri}, indent=2))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
