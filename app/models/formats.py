"""Artifact formats: one small loader per ``metadata.json`` "format", each returning a torch module.

- ``torch.export``: a ``.pt2`` program, ``torch.export.load(...).module()``.
- ``torchscript``: ``torch.jit.load`` (TorchScript is deprecated in torch; read while torch can).
- ``state_dict``: the class named by metadata's ``module`` ("package.module:ClassName") built with
  ``module_kwargs``, then weights from ``torch.load(weights_only=True)``.
- ``onnx``: an ONNX Runtime session (the ``onnx`` extra) wrapped as a module.
- ``sentence-transformers``: a model folder or ``package:<module>`` (the ``text`` extra), see
  ``app.models.embeddings``.
- ``mlflow.pyfunc``: an MLflow model folder (``MLmodel`` with the python_function flavour, the
  ``mlflow`` extra), the fallback for models from the MLflow registry that carry no metadata.json.

None of them but ``mlflow.pyfunc`` (a pyfunc model is its pickled code) unpickles arbitrary
objects. ``state_dict`` imports the class its metadata names:
the registry is trusted like the code (whoever writes metadata.json chooses what runs anyway).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.errors import ModelLoadError
from app.models.metadata import ModelMetadata

Loader = Callable[[Path, ModelMetadata], nn.Module]


def load_torch_export(version_dir: Path, metadata: ModelMetadata) -> nn.Module:
    module: nn.Module = torch.export.load(version_dir / metadata.artifact).module()
    return module


def load_torchscript(version_dir: Path, metadata: ModelMetadata) -> nn.Module:
    jit_load = getattr(torch.jit, "load", None)
    if jit_load is None:  # TorchScript is deprecated; a torch without it cannot read these artifacts
        raise ModelLoadError(
            f"model {metadata.name}/{metadata.version}: torch {torch.__version__} cannot load TorchScript; "
            "re-export it as torch.export"
        )
    module: nn.Module = jit_load(str(version_dir / metadata.artifact), map_location="cpu")
    return module


def load_state_dict(version_dir: Path, metadata: ModelMetadata) -> nn.Module:
    module = _construct(metadata)
    # weights_only: tensors and plain containers only, never arbitrary pickled objects.
    state = torch.load(version_dir / metadata.artifact, map_location="cpu", weights_only=True)
    module.load_state_dict(state)
    return module


def _construct(metadata: ModelMetadata) -> nn.Module:
    class_path = metadata.extra.get("module")
    kwargs = metadata.extra.get("module_kwargs", {})
    if not isinstance(class_path, str) or ":" not in class_path or not isinstance(kwargs, dict):
        raise ModelLoadError(
            f'model {metadata.name}/{metadata.version}: format state_dict needs "module": '
            '"package.module:ClassName" and optional "module_kwargs": {...} in metadata.json'
        )
    module_name, _, class_name = class_path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"model {metadata.name}/{metadata.version}: cannot import {class_path}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelLoadError(f"model {metadata.name}/{metadata.version}: {class_path} is not a torch.nn.Module")
    module: nn.Module = cls(**kwargs)
    return module.eval()


class OnnxModule(nn.Module):
    """An ONNX Runtime session behind a module's call: tensor in, tensor out, on the input's device.

    ONNX Runtime takes and returns numpy arrays on the CPU; the session takes float32 whatever
    dtype the runner holds, and the output comes back in the input's dtype.
    """

    def __init__(self, session: Any, output_name: str | None = None) -> None:
        super().__init__()
        self.session = session
        self.input_name: str = session.get_inputs()[0].name
        outputs = [output.name for output in session.get_outputs()]
        if output_name is not None and output_name not in outputs:
            raise ModelLoadError(f"ONNX model has no output {output_name!r} (output_name); it has {outputs}")
        self.output_name: str = output_name or outputs[0]

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        array = batch.detach().to(device="cpu", dtype=torch.float32).numpy()
        output = self.session.run([self.output_name], {self.input_name: array})[0]
        if not hasattr(output, "dtype"):  # e.g. skl2onnx's ZipMap: a list of {label: probability} maps
            raise TypeError(
                f"ONNX output {self.output_name!r} is not a tensor (a ZipMap? export with options={{'zipmap': False}})"
            )
        return torch.from_numpy(output).to(device=batch.device, dtype=batch.dtype)


def _import_extra(module: str, extra: str, what: str, metadata: ModelMetadata) -> Any:
    """``module`` from an optional extra; a load error naming the extra to install when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelLoadError(
            f"model {metadata.name}/{metadata.version} is {what}: install the {extra} extra: pip install '.[{extra}]'"
        ) from None


def load_onnx(version_dir: Path, metadata: ModelMetadata) -> nn.Module:
    onnxruntime = _import_extra("onnxruntime", "onnx", "ONNX", metadata)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same CPU budget as TORCH_THREADS
    # No spin-waiting between runs: spinning ONNX Runtime threads starve torch's own pool on the
    # same cores (measured: the default model at 47k rows/s with spinning, see MODEL_FORMATS.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(
        str(version_dir / metadata.artifact), options, providers=["CPUExecutionProvider"]
    )
    try:
        return OnnxModule(session, metadata.output_name)
    except ModelLoadError as exc:
        raise ModelLoadError(f"model {metadata.name}/{metadata.version}: {exc}") from None


def load_sentence_transformers(version_dir: Path, metadata: ModelMetadata) -> nn.Module:
    from app.models.embeddings import load_text_embedder  # keeps transformers out of tabular-only workers

    return load_text_embedder(version_dir, metadata)


class PyfuncModule(nn.Module):
    """An MLflow pyfunc model behind a module's call: rows in, its ``predict`` on them, a tensor out.

    A classifier's ``predict`` returns one probability per label (as ``predict_proba`` does); they
    come out as log-probabilities, so the runner's softmax gives them back. A regressor's returns
    one number per row.
    """

    def __init__(self, model: Any, classifier: bool) -> None:
        super().__init__()
        self.model = model
        self.classifier = classifier

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        import numpy

        output = numpy.asarray(self.model.predict(batch.detach().to(device="cpu", dtype=torch.float32).numpy()))
        values = torch.as_tensor(output, dtype=torch.float32)
        if self.classifier:
            values = torch.log(values.clamp_min(1e-30))
        return values.to(device=batch.device, dtype=batch.dtype)


def load_mlflow_pyfunc(version_dir: Path, metadata: ModelMetadata) -> nn.Module:
    pyfunc = _import_extra("mlflow.pyfunc", "mlflow", "an MLflow pyfunc model", metadata)
    if metadata.input != "features":
        raise ModelLoadError(f"model {metadata.name}/{metadata.version}: an MLflow pyfunc model takes features")
    model = pyfunc.load_model(str(version_dir / metadata.artifact))
    return PyfuncModule(model, metadata.kind == "classifier")


LOADERS: dict[str, Loader] = {
    "torch.export": load_torch_export,
    "torchscript": load_torchscript,
    "state_dict": load_state_dict,
    "onnx": load_onnx,
    "sentence-transformers": load_sentence_transformers,
    "mlflow.pyfunc": load_mlflow_pyfunc,
}
