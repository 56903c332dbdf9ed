"""The model registry and runner against the committed default model and broken copies of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from app.errors import ModelLoadError
from app.models.registry import ModelRegistry, version_key
from app.models.runner import ModelRunner, warmup_sizes
from app.settings import REPO_ROOT

MODELS = REPO_ROOT / "models"


@pytest.fixture
def registry_copy(tmp_path: Path) -> ModelRegistry:
    shutil.copytree(MODELS / "breast-cancer", tmp_path / "breast-cancer")
    return ModelRegistry(tmp_path)


def test_version_order_is_numeric() -> None:
    assert sorted(["10", "9", "1.10", "1.9", "2"], key=version_key) == ["1.9", "1.10", "2", "9", "10"]


def test_latest_is_the_highest_version(registry_copy: ModelRegistry) -> None:
    source = registry_copy.root / "breast-cancer" / "1"
    for version in ("2", "10"):
        target = registry_copy.root / "breast-cancer" / version
        shutil.rmtree(target, ignore_errors=True)  # the shipped version 2 is replaced by a copy of 1
        shutil.copytree(source, target)
        metadata = json.loads((target / "metadata.json").read_text())
        (target / "metadata.json").write_text(json.dumps({**metadata, "version": version}))
    assert registry_copy.versions("breast-cancer") == ["1", "2", "10"]
    assert registry_copy.metadata("breast-cancer").version == "10"
    assert registry_copy.metadata("breast-cancer", "2").version == "2"


def test_default_model_predicts_probabilities_that_sum_to_one() -> None:
    runner = ModelRunner.load(ModelRegistry(MODELS), "breast-cancer", "latest", torch.device("cpu"))
    stats = runner.metadata.extra["sample_stats"]
    outputs = runner.predict([stats["malignant"]["mean"], stats["benign"]["mean"]])
    assert [output.label for output in outputs] == ["malignant", "benign"]
    for output in outputs:
        assert output.probabilities is not None
        assert sum(output.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert output.prediction == pytest.approx(output.probabilities["malignant"])
    runner.close()


def test_warm_up_covers_every_bucket() -> None:
    assert warmup_sizes(1) == [1]
    assert warmup_sizes(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert warmup_sizes(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    runner = ModelRunner.load(ModelRegistry(MODELS), "breast-cancer", "1", torch.device("cpu"))
    assert not runner.warm
    runner.warm_up(64)
    assert runner.warm
    runner.close()


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda d: (d / "model.pt2").write_bytes(b"not a model"), "cannot load"),
        (lambda d: (d / "metadata.json").write_text("{"), "cannot read metadata"),
        (
            lambda d: (d / "metadata.json").write_text('{"name": "breast-cancer"}'),
            "does not match model_metadata.schema.json",
        ),
        (lambda d: (d / "model.pt2").unlink(), "cannot load"),
    ],
)
def test_a_broken_model_directory_is_one_clear_load_error(
    registry_copy: ModelRegistry, breakage: object, message: str
) -> None:
    breakage(registry_copy.root / "breast-cancer" / "1")  # type: ignore[operator]
    with pytest.raises(ModelLoadError, match=message):
        ModelRunner.load(registry_copy, "breast-cancer", "1", torch.device("cpu"))


def test_unknown_model_and_version_are_load_errors(registry_copy: ModelRegistry) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        registry_copy.metadata("no-such-model")
    with pytest.raises(ModelLoadError, match="no version '9'"):
        registry_copy.metadata("breast-cancer", "9")
