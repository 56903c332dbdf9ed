"""The model catalog: routes, hot reload, failed versions, retirement, ensembles."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from app.errors import ConfigError, InvalidRecord, ModelLoadError
from app.models.catalog import ModelCatalog
from app.models.metadata import ModelKey
from app.models.runner import Runner
from app.settings import REPO_ROOT, Settings

MODELS = REPO_ROOT / "models"
ROW = [float(n) for n in range(30)]


def add_version(root: Path, version: str, source: str = "1", name: str = "breast-cancer") -> Path:
    """Copy a shipped version of the default model into ``root`` under another version number."""
    target = root / name / version
    shutil.copytree(MODELS / "breast-cancer" / source, target)
    metadata = json.loads((target / "metadata.json").read_text())
    (target / "metadata.json").write_text(json.dumps({**metadata, "name": name, "version": version}))
    return target


def catalog_for(root: Path, **overrides: Any) -> ModelCatalog:
    models = dataclasses.replace(Settings.from_env({}).models, model_dir=root, **overrides)
    catalog = ModelCatalog(models, warm_up_batch_size=4)
    catalog.load()
    return catalog


def serving_versions(catalog: ModelCatalog, users: int = 50) -> set[str]:
    return {catalog.select(None, f"user-{n}")[0].metadata.version for n in range(users)}


async def test_a_new_version_is_loaded_warmed_and_switched_to(tmp_path: Path) -> None:
    add_version(tmp_path, "1")
    catalog = catalog_for(tmp_path)
    retired: list[Runner] = []
    catalog.on_retired = retired.append
    old = catalog.serving("breast-cancer")
    assert serving_versions(catalog) == {"1"}

    add_version(tmp_path, "2", source="2")
    changes = await catalog.refresh()

    assert changes == {"breast-cancer": {"route": {"split": {"2": 1.0}, "shadow": []}}}
    new = catalog.serving("breast-cancer")
    assert new.warm and new.metadata.version == "2"
    assert serving_versions(catalog) == {"2"}
    assert retired == [old]  # the pipeline closes it once its last records are out
    assert await catalog.refresh() == {}  # nothing new: nothing changes


async def test_a_broken_version_is_reported_and_the_old_one_keeps_serving(tmp_path: Path) -> None:
    add_version(tmp_path, "1")
    catalog = catalog_for(tmp_path)
    broken = add_version(tmp_path, "2")
    (broken / "model.pt2").write_bytes(b"not a torch.export archive")

    changes = await catalog.refresh()

    assert "cannot load" in changes["breast-cancer"]["error"]
    assert serving_versions(catalog) == {"1"}
    snapshot = catalog.snapshot()["breast-cancer"]
    assert snapshot["version"] == "1" and "cannot load" in snapshot["failed"]["2"]
    failures = catalog._metrics.model_load_failures.labels("breast-cancer", "2")._value.get()
    assert failures == 1
    await catalog.refresh()  # same files: not tried again
    assert catalog._metrics.model_load_failures.labels("breast-cancer", "2")._value.get() == 1

    shutil.copy(MODELS / "breast-cancer" / "2" / "model.pt2", broken / "model.pt2")  # fixed in place
    await catalog.refresh()
    assert serving_versions(catalog) == {"2"}
    assert catalog.snapshot()["breast-cancer"]["failed"] == {}


async def test_routing_file_changes_apply_at_run_time(tmp_path: Path) -> None:
    add_version(tmp_path, "1")
    add_version(tmp_path, "2", source="2")
    add_version(tmp_path, "3")
    routing = tmp_path / "routing.json"
    routing.write_text('{"breast-cancer": {"split": {"1": 1}}}')
    catalog = catalog_for(tmp_path, routing_file=routing)
    assert serving_versions(catalog) == {"1"}
    assert set(catalog.runners) == {ModelKey("breast-cancer", "1")}  # only what a route names is loaded

    routing.write_text('{"breast-cancer": {"split": {"1": 50, "2": 50}, "shadow": ["3"]}}')
    await catalog.refresh()
    assert serving_versions(catalog, users=200) == {"1", "2"}
    _, shadows = catalog.select("breast-cancer", "user-1")
    assert [shadow.metadata.version for shadow in shadows] == ["3"]

    routing.write_text("{broken")
    assert "not valid JSON" in (await catalog.refresh())["error"]
    assert serving_versions(catalog, users=200) == {"1", "2"}  # a bad file changes nothing


def test_unknown_models_and_bad_routes_fail_at_start(tmp_path: Path) -> None:
    add_version(tmp_path, "1")
    with pytest.raises(ConfigError, match="not in MODEL_NAMES: other"):
        catalog_for(tmp_path, model_routing='{"other": {"split": {"1": 1}}}')
    with pytest.raises(ModelLoadError, match="no version '7'"):
        catalog_for(tmp_path, model_routing='{"breast-cancer": {"split": {"7": 1}}}')
    catalog = catalog_for(tmp_path)
    with pytest.raises(InvalidRecord) as caught:
        catalog.select("nope", "user")
    assert caught.value.error_class == "unknown_model"


def ensemble(root: Path, method: str, weights: tuple[float, float] = (1.0, 1.0)) -> None:
    folder = root / "pair" / "1"
    folder.mkdir(parents=True)
    metadata = json.loads((MODELS / "breast-cancer-ensemble" / "1" / "metadata.json").read_text())
    members = [
        {"name": "breast-cancer", "version": version, "weight": weight}
        for version, weight in zip(("1", "2"), weights, strict=True)
    ]
    metadata.update(name="pair", method=method, members=members)
    (folder / "metadata.json").write_text(json.dumps(metadata))


def test_mean_ensemble_averages_its_members(tmp_path: Path) -> None:
    add_version(tmp_path, "1")
    add_version(tmp_path, "2", source="2")
    ensemble(tmp_path, "mean", (1.0, 3.0))
    catalog = catalog_for(tmp_path, model_names=("pair",))
    runner = catalog.serving("pair")
    one, two = (catalog_for(tmp_path, model_version=v).serving("breast-cancer") for v in ("1", "2"))
    rows = [ROW, [0.0] * 30]
    for combined, first, second in zip(runner.predict(rows), one.predict(rows), two.predict(rows), strict=True):
        assert combined.prediction == pytest.approx((first.prediction + 3 * second.prediction) / 4)
        assert combined.probabilities is not None
        assert sum(combined.probabilities.values()) == pytest.approx(1.0)
    assert runner.metadata.extra["members"] == [
        {"name": "breast-cancer", "version": "1", "weight": 1.0},
        {"name": "breast-cancer", "version": "2", "weight": 3.0},
    ]


def test_vote_ensemble_reports_vote_shares(tmp_path: Path) -> None:
    add_version(tmp_path, "1")
    add_version(tmp_path, "2", source="2")
    ensemble(tmp_path, "vote", (1.0, 3.0))
    catalog = catalog_for(tmp_path, model_names=("pair",))
    second = catalog_for(tmp_path, model_version="2").serving("breast-cancer")
    for output, heavier in zip(catalog.serving("pair").predict([ROW]), second.predict([ROW]), strict=True):
        assert output.label == heavier.label  # weight 3 of 4 always wins
        assert output.probabilities is not None and max(output.probabilities.values()) >= 0.75


def test_ensemble_members_must_agree(tmp_path: Path) -> None:
    add_version(tmp_path, "1")
    add_version(tmp_path, "2", source="2")
    ensemble(tmp_path, "vote")
    metadata_path = tmp_path / "pair" / "1" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata_path.write_text(
        json.dumps({**metadata, "input_size": 12, "feature_names": metadata["feature_names"][:12]})
    )
    with pytest.raises(ModelLoadError, match="input_size 30 != 12"):
        catalog_for(tmp_path, model_names=("pair",))
