"""Every artifact format round-trips: a tiny classifier exported to it in tmp_path, loaded through
the registry, gives the original's outputs; broken artifacts are one-line load errors; the
quantize and compile knobs keep outputs close."""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from app.errors import ModelLoadError
from app.models.formats import LOADERS
from app.models.metadata import ARTIFACT_FORMATS
from app.models.registry import ModelRegistry
from app.models.runner import ModelRunner, RunOptions

CPU = torch.device("cpu")
INPUT_SIZE = 6
LABELS = ["a", "b", "c"]


class TinyNet(nn.Module):
    """Imported by the state_dict format through its metadata's "module" (this file's path)."""

    def __init__(self, inputs: int = INPUT_SIZE, hidden: int = 16, classes: int = len(LABELS)) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.layers(features)
        return logits


@pytest.fixture(scope="module")
def original() -> TinyNet:
    torch.manual_seed(3)
    return TinyNet().eval()


@pytest.fixture(scope="module")
def rows() -> list[list[float]]:
    generator = torch.Generator().manual_seed(11)
    return torch.randn(37, INPUT_SIZE, generator=generator).tolist()


def expected_probabilities(module: nn.Module, rows: list[list[float]]) -> torch.Tensor:
    with torch.inference_mode():
        return torch.softmax(module(torch.tensor(rows)), dim=1)


def save_export(module: nn.Module, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.export.export(module, (torch.zeros(4, INPUT_SIZE),), dynamic_shapes={"features": {0: batch}})
    torch.export.save(program, path)


def save_torchscript(module: nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated; still readable
        torch.jit.save(torch.jit.script(module), str(path))


def save_state_dict(module: nn.Module, path: Path) -> None:
    torch.save(module.state_dict(), path)


def save_onnx(module: nn.Module, path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    torch.onnx.export(module, (torch.zeros(4, INPUT_SIZE),), str(path), dynamic_shapes=({0: batch},), dynamo=True)


FORMATS: dict[str, tuple[str, Callable[[nn.Module, Path], None], dict[str, Any]]] = {
    "torch.export": ("model.pt2", save_export, {}),
    "torchscript": ("model.pt", save_torchscript, {}),
    "state_dict": (
        "weights.pt",
        save_state_dict,
        {"module": f"{__name__}:TinyNet", "module_kwargs": {"inputs": INPUT_SIZE, "hidden": 16}},
    ),
    "onnx": ("model.onnx", save_onnx, {}),
}


def write_model(root: Path, fmt: str, module: nn.Module | None) -> Path:
    artifact, save, extra = FORMATS[fmt]
    folder = root / "tiny" / "1"
    folder.mkdir(parents=True, exist_ok=True)
    if module is not None:
        save(module, folder / artifact)
    metadata = {
        "name": "tiny",
        "version": "1",
        "format": fmt,
        "artifact": artifact,
        "kind": "classifier",
        "input_size": INPUT_SIZE,
        "labels": LABELS,
        **extra,
    }
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder / artifact


def load(root: Path, **options: Any) -> ModelRunner:
    return ModelRunner.load(ModelRegistry(root), "tiny", "1", CPU, RunOptions(**options))


def probabilities(runner: ModelRunner, rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor([[output.probabilities[label] for label in LABELS] for output in runner.predict(rows)])  # type: ignore[index]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_round_trips(fmt: str, tmp_path: Path, original: TinyNet, rows: list[list[float]]) -> None:
    write_model(tmp_path, fmt, original)
    runner = load(tmp_path)
    runner.warm_up(8)
    torch.testing.assert_close(probabilities(runner, rows), expected_probabilities(original, rows), atol=1e-5, rtol=0)
    assert runner.metadata.format == fmt
    runner.close()


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_corrupt_artifact_is_a_one_line_load_error(fmt: str, tmp_path: Path) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    write_model(tmp_path, fmt, None).write_bytes(b"\x00garbage, not a model\n")
    with pytest.raises(ModelLoadError, match="cannot load") as caught:
        load(tmp_path)
    assert "\n" not in str(caught.value)


def test_state_dict_never_unpickles_arbitrary_objects(tmp_path: Path, original: TinyNet) -> None:
    path = write_model(tmp_path, "state_dict", original)
    torch.save({**original.state_dict(), "payload": Exploit()}, path)
    with pytest.raises(ModelLoadError, match="cannot load"):
        load(tmp_path)
    assert not Exploit.ran


class Exploit:
    ran = False

    def __reduce__(self) -> tuple[Any, ...]:
        return (Exploit._run, ())

    @staticmethod
    def _run() -> None:
        Exploit.ran = True


@pytest.mark.parametrize(
    ("module_field", "message"),
    [
        ({"module": "no_such_package.models:Net"}, "cannot import"),
        ({"module": "json:dumps"}, "is not a torch.nn.Module"),
        ({"module": "TinyNet"}, "does not match model_metadata.schema.json at metadata.module"),
    ],
)
def test_state_dict_needs_an_importable_module_class(
    module_field: dict[str, str], message: str, tmp_path: Path, original: TinyNet
) -> None:
    path = write_model(tmp_path, "state_dict", original)
    metadata_path = path.parent / "metadata.json"
    metadata_path.write_text(json.dumps({**json.loads(metadata_path.read_text()), **module_field}))
    with pytest.raises(ModelLoadError, match=message):
        load(tmp_path)


def test_onnx_without_onnxruntime_says_which_extra(
    tmp_path: Path, original: TinyNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_model(tmp_path, "onnx", None).write_bytes(b"irrelevant")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(ModelLoadError, match=r"install the onnx extra: pip install '\.\[onnx\]'"):
        load(tmp_path)


def test_torchscript_on_a_torch_without_it_is_a_clear_error(
    tmp_path: Path, original: TinyNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_model(tmp_path, "torchscript", original)
    monkeypatch.delattr(torch.jit, "load")
    with pytest.raises(ModelLoadError, match=r"cannot load TorchScript; re-export it as torch\.export"):
        load(tmp_path)


@pytest.mark.parametrize("fmt", ["torch.export", "state_dict"])
def test_dynamic_int8_quantization_swaps_linear_layers(
    fmt: str, tmp_path: Path, original: TinyNet, rows: list[list[float]]
) -> None:
    write_model(tmp_path, fmt, original)
    runner = load(tmp_path, quantization="dynamic-int8")
    quantized = [m for m in runner._module.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(quantized) == 2
    torch.testing.assert_close(probabilities(runner, rows), expected_probabilities(original, rows), atol=0.02, rtol=0)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_knobs_refuse_modules_they_cannot_rewrite(fmt: str, tmp_path: Path, original: TinyNet) -> None:
    write_model(tmp_path, fmt, original)
    with pytest.raises(ModelLoadError, match="MODEL_COMPILE applies to torch modules"):
        load(tmp_path, torch_compile=True)
    with pytest.raises(ModelLoadError, match="MODEL_QUANTIZE applies to torch modules"):
        load(tmp_path, quantization="dynamic-int8")


def test_compiled_model_gives_the_same_outputs(tmp_path: Path, original: TinyNet, rows: list[list[float]]) -> None:
    write_model(tmp_path, "torch.export", original)
    runner = load(tmp_path, torch_compile=True)
    runner.warm_up(4)
    torch.testing.assert_close(probabilities(runner, rows), expected_probabilities(original, rows), atol=1e-5, rtol=0)


def test_every_artifact_format_the_metadata_accepts_has_a_loader() -> None:
    assert set(LOADERS) == set(ARTIFACT_FORMATS)


@pytest.mark.filterwarnings("ignore:.*type hint:UserWarning")  # MLflow's advice on predict's type hints
def test_an_mlflow_pyfunc_model_without_metadata_json_loads_with_the_metadata_it_was_logged_with(
    tmp_path: Path,
) -> None:
    """The fallback for models of the MLflow registry that are not in one of our formats."""
    pyfunc = pytest.importorskip("mlflow.pyfunc")
    from app.models.mlflow_registry import _name_in_metadata

    class Probabilities(pyfunc.PythonModel):  # type: ignore[misc,name-defined]
        """As an sklearn classifier's predict_proba: one probability per label."""

        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]  # no hints: MLflow reads them as a schema
            import numpy

            first = 1.0 / (1.0 + numpy.exp(-numpy.asarray(model_input, dtype=numpy.float64).sum(axis=1)))
            return numpy.stack([first, 1.0 - first], axis=1)

    folder = tmp_path / "pf" / "4"
    logged = {"kind": "classifier", "input_size": 3, "labels": ["yes", "no"], "positive_label": "yes"}
    pyfunc.save_model(str(folder), python_model=Probabilities(), metadata=logged)
    _name_in_metadata(folder, "pf", "4", "models:/pf/4")
    registry = ModelRegistry(tmp_path)
    metadata = registry.metadata("pf", "4")
    assert (metadata.format, metadata.version, metadata.labels) == ("mlflow.pyfunc", "4", ("yes", "no"))
    runner = ModelRunner.from_metadata(registry, metadata, CPU)
    runner.warm_up(4)
    outputs = runner.predict([[0.5, 0.25, 0.25], [-1.0, -1.0, 0.0]])
    expected = [1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(2.0))]
    assert [output.prediction for output in outputs] == pytest.approx(expected, abs=1e-5)
    assert [output.label for output in outputs] == ["yes", "no"]
