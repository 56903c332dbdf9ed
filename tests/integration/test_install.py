"""Installed as a user installs it: the wheel built from this checkout, in a fresh virtual environment,
run from outside the checkout without PYTHONPATH, finds its default model and serves it.

Fast and honest about the dependencies: the fresh environment gets only this project's wheel
(``pip install --no-deps``); its dependencies come from the test's own environment through a
``.pth`` file (the torch there is several GB; installing it again would prove only that PyPI works).
That environment also holds the extras (dev, onnx, text, ...), so the ``.pth`` names a folder of
links to the files of the base dependencies only (pyproject's ``dependencies``, followed through
their requirements): what runs there is what ``pip install .`` without extras gives.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import orjson
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT
from tests.integration.conftest import Names, create_topics, running_worker, worker_env
from tests.integration.streams import event_value, produce, read_outputs

# What a wheel is built from (pyproject.toml's package and license-files); the rest of the checkout is not needed.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "app", "models", "schemas")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(dist), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Deprecat" not in done.stdout + done.stderr, "the build warns of a deprecation"
    (built,) = dist.glob("kafka_inference_worker-*.whl")
    return built


def test_the_wheel_carries_the_default_models_schemas_and_licence(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    for shipped in (ROOT / "models").glob("*/*/*"):
        assert f"app/bundled/models/{shipped.relative_to(ROOT / 'models')}" in names
    for schema in (ROOT / "schemas").glob("*.schema.json"):
        assert f"app/bundled/schemas/{schema.name}" in names
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert not any(name.startswith(("tests/", "benchmarks/")) for name in names)


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh environment holding the wheel, with this environment's packages as its dependencies."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    base_site = base_only_site(tmp_path_factory.mktemp("base-site"))
    Path(site, "dependencies.pth").write_text(f"{base_site}\n")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return venv / "bin"


def base_distributions() -> set[str]:
    """The distributions pyproject's base ``dependencies`` need, followed through their requirements."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(spec) for spec in project["dependencies"]]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        requirement = todo.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.distribution(requirement.name).requires or []
        except metadata.PackageNotFoundError:
            continue
        extras = requirement.extras or {""}
        for spec in map(Requirement, requires):
            if spec.marker is None or any(spec.marker.evaluate({"extra": extra}) for extra in extras):
                todo.append(spec)
    return {name for name, _ in seen}


def base_only_site(folder: Path) -> Path:
    """``folder`` with a link to every top-level file and folder of the base distributions (from their
    RECORD): a site-packages holding the base dependencies and nothing else."""
    base = base_distributions()
    assert {"torch", "faust-streaming", "jsonschema"} <= base
    site = Path(sysconfig.get_paths()["purelib"])
    for distribution in metadata.distributions():
        if canonicalize_name(distribution.metadata["Name"]) not in base:
            continue
        for top in {Path(str(file)).parts[0] for file in distribution.files or ()}:
            if top not in ("..", "__pycache__") and (site / top).exists() and not (folder / top).exists():
                (folder / top).symlink_to(site / top)
    return folder


def test_the_fresh_environment_imports_only_the_base_dependencies(installed: Path, tmp_path: Path) -> None:
    def python(code: str) -> subprocess.CompletedProcess[str]:
        command = [str(installed / "python"), "-c", code]
        return subprocess.run(command, cwd=tmp_path, env=outside_env(), capture_output=True, text=True)

    quiet = python("import app.cli, app.worker, app.tools.demo, torch; torch.zeros(2).numpy()")
    assert (quiet.returncode, quiet.stderr) == (0, "")  # no warning either (torch warns without numpy)
    for extra in ("sklearn", "onnxruntime", "sentence_transformers", "confluent_kafka", "opentelemetry"):
        missing = python(f"import {extra}")
        assert missing.returncode == 1 and f"No module named '{extra}'" in missing.stderr, missing.stderr


def outside_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH to the checkout."""
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | extra


def test_the_command_runs_from_the_installed_copy(installed: Path, tmp_path: Path) -> None:
    where = subprocess.run(
        [str(installed / "python"), "-c", "import app; print(app.__file__)"],
        cwd=tmp_path,
        env=outside_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(installed.parent)), where
    done = subprocess.run(
        [str(installed / "inference-worker"), "--help"], cwd=tmp_path, env=outside_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "MODEL_DIR" in done.stdout and "worker" in done.stdout


def test_a_missing_model_dir_is_one_line_naming_it(installed: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(installed / "inference-worker"), "worker"],
        cwd=tmp_path,
        env=outside_env(MODEL_DIR=str(tmp_path / "nowhere"), KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"inference-worker: model error: MODEL_DIR {tmp_path / 'nowhere'} is not a folder: set MODEL_DIR to your "
        "model registry (<MODEL_DIR>/<name>/<version>/metadata.json)"
    ]


def test_an_installed_worker_serves_its_default_model(
    installed: Path, bootstrap_servers: str, names: Names, tmp_path: Path
) -> None:
    create_topics(bootstrap_servers, names)
    env = outside_env(**{k: v for k, v in worker_env(bootstrap_servers, names, tmp_path).items() if k != "PYTHONPATH"})
    command = (str(installed / "inference-worker"), "worker")
    with running_worker(env, tmp_path / "worker.log", command=command, cwd=tmp_path) as worker:
        status, body = worker.get("/models")
        assert status == 200
        assert orjson.loads(body)["breast-cancer"]["version"] == "2"
        asyncio.run(produce(bootstrap_servers, names.input_topic, [event_value(i) for i in range(20)]))
        outputs = asyncio.run(read_outputs(bootstrap_servers, (names.output_topic,), lambda got: len(got) >= 20))
    results = [orjson.loads(output.value) for output in outputs]
    assert sorted(r["event_id"] for r in results) == sorted(f"e-{i}" for i in range(20))
    assert {(r["model_name"], r["label"] in ("malignant", "benign")) for r in results} == {("breast-cancer", True)}
