"""Models from a real MLflow model registry (``mlflow server``, sqlite backend, local artifact folder):
promotion by moving an alias mid-stream, a broken version promoted, aliases in a split, and the
one-line refusals at start."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.errors import ModelLoadError
from app.models.routing import Route, pick_version
from scripts.register_model import register
from tests.conftest import free_port, run_worker_to_exit
from tests.integration.conftest import Names, WorkerProcess, worker_env
from tests.integration.streams import keyed_by_user, produce
from tests.integration.test_model_lifecycle import MODELS, assert_switched_from_1_to_2, event, read_all, worker

RATE = 1000.0
AT_MOST = 60_000  # events the stream may send (a minute); it stops once both promotions are done


def registered_name() -> str:
    """A registered model of this test only: the server lives for the whole session."""
    return f"bc-{uuid.uuid4().hex[:8]}"


def set_alias(tracking_uri: str, name: str, alias: str, version: str) -> None:
    import mlflow

    mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri).set_registered_model_alias(
        name, alias, version
    )


def broken_copy(tmp_path: Path) -> Path:
    """Version 2's folder with a truncated artifact, as a bad upload would leave it."""
    folder = tmp_path / "broken"
    shutil.copytree(MODELS / "breast-cancer" / "2", folder)
    (folder / "model.pt2").write_bytes(b"truncated upload")
    return folder


def models_view(running: WorkerProcess, name: str) -> dict[str, Any]:
    status, body = running.get("/models")
    assert status == 200
    view: dict[str, Any] = json.loads(body)[name]
    return view


async def until_view(
    running: WorkerProcess, name: str, condition: Callable[[dict[str, Any]], bool], what: str, timeout_s: float = 120.0
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition(await asyncio.to_thread(models_view, running, name)):
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def test_moving_the_alias_mid_stream_switches_versions_losing_nothing(
    mlflow_tracking_uri: str, bootstrap_servers: str, names: Names, tmp_path: Path
) -> None:
    name = registered_name()
    one = register(mlflow_tracking_uri, MODELS / "breast-cancer" / "1", name, ("champion",))
    two = register(mlflow_tracking_uri, MODELS / "breast-cancer" / "2", name)
    three = register(mlflow_tracking_uri, broken_copy(tmp_path), name)
    assert (one, two, three) == ("1", "2", "3")
    events = [event(n, f"u-{n % 40}") for n in range(AT_MOST)]
    env = {
        "MODEL_URI": f"models:/{name}@champion",
        "MLFLOW_TRACKING_URI": mlflow_tracking_uri,
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "MODEL_POLL_INTERVAL_S": "0.5",
    }

    async def scenario(running: WorkerProcess) -> tuple[int, list[dict[str, Any]]]:
        landed = asyncio.Event()
        streaming = asyncio.ensure_future(
            produce(bootstrap_servers, names.input_topic, lambda i: keyed_by_user(events[i]), len(events), RATE, landed)
        )
        await asyncio.sleep(2.0)
        await asyncio.to_thread(set_alias, mlflow_tracking_uri, name, "champion", "2")  # promotion mid-stream
        await until_view(running, name, lambda view: view["version"] == "2", "version 2 serving")
        await asyncio.sleep(1.0)
        await asyncio.to_thread(set_alias, mlflow_tracking_uri, name, "champion", "3")  # a broken one promoted
        await until_view(running, name, lambda view: "3" in view["failed"], "version 3 refused")
        await asyncio.sleep(1.0)
        landed.set()
        sent = len(await streaming)
        return sent, await read_all(bootstrap_servers, names.output_topic, sent)

    with worker(bootstrap_servers, names, tmp_path, **env) as running:
        sent, results = asyncio.run(scenario(running))
        view = models_view(running, name)
        assert running.process.poll() is None

    assert {result["model_name"] for result in results} == {name}
    assert_switched_from_1_to_2(results, sent)  # registry versions 1 and 2 are models/breast-cancer/1 and /2

    assert view["version"] == "2" and view["loaded"] == ["2"] and view["source"] == f"models:/{name}/2"
    assert "cannot load" in view["failed"]["3"]
    assert sorted(path.name for path in (tmp_path / "cache" / name).iterdir()) == ["1", "2", "3"]


def test_aliases_split_the_traffic_and_shadow(
    mlflow_tracking_uri: str, bootstrap_servers: str, names: Names, tmp_path: Path
) -> None:
    name = registered_name()
    register(mlflow_tracking_uri, MODELS / "breast-cancer" / "1", name, ("champion",))
    register(mlflow_tracking_uri, MODELS / "breast-cancer" / "2", name, ("challenger",))
    register(mlflow_tracking_uri, MODELS / "breast-cancer" / "1", name, ("candidate",))
    routing = {name: {"split": {"champion": 90, "challenger": 10}, "shadow": ["candidate"]}}
    env = {
        "MODEL_URI": f"models:/{name}@champion",
        "MLFLOW_TRACKING_URI": mlflow_tracking_uri,
        "MODEL_CACHE_DIR": str(tmp_path / "cache"),
        "MODEL_ROUTING": json.dumps(routing),
        "MODEL_POLL_INTERVAL_S": "0",
    }
    users = [f"user-{n}" for n in range(2000)]
    events = [event(n, user) for n, user in enumerate(users)]
    with worker(bootstrap_servers, names, tmp_path, **env) as running:
        asyncio.run(produce(bootstrap_servers, names.input_topic, [keyed_by_user(e) for e in events]))
        served = asyncio.run(read_all(bootstrap_servers, names.output_topic, len(events)))
        shadowed = asyncio.run(read_all(bootstrap_servers, names.shadow_topic, len(events)))
        view = models_view(running, name)

    assert view["route"] == {"split": {"1": 90.0, "2": 10.0}, "shadow": ["3"]}
    assert view["aliases"] == {"champion": "1", "challenger": "2", "candidate": "3"}
    assert len(served) == len(events) and len({r["event_id"] for r in served}) == len(served)
    route = Route((("1", 90.0), ("2", 10.0)))
    for result in served:
        assert result["model_version"] == pick_version(route, result["user_id"])
    share = Counter(result["model_version"] for result in served)["2"] / len(users)
    assert abs(share - 0.10) < 0.03, share  # binomial sd over 2000 users at p=0.1: 0.0067
    assert sorted(r["event_id"] for r in shadowed) == sorted(r["event_id"] for r in served)
    assert {(r["model_version"], r["shadow"]) for r in shadowed} == {("3", True)}


def test_an_unknown_alias_stops_the_start_with_one_line(
    mlflow_tracking_uri: str, bootstrap_servers: str, names: Names, tmp_path: Path
) -> None:
    name = registered_name()
    register(mlflow_tracking_uri, MODELS / "breast-cancer" / "1", name, ("champion",))
    env = worker_env(
        bootstrap_servers,
        names,
        tmp_path,
        MODEL_URI=f"models:/{name}@nope",
        MLFLOW_TRACKING_URI=mlflow_tracking_uri,
        MODEL_CACHE_DIR=str(tmp_path / "cache"),
        WEB_PORT=str(free_port()),
    )
    done = run_worker_to_exit(env, timeout_s=120)
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"inference-worker: model error: registered model {name!r} alias 'nope' not found in the MLflow registry "
        f"at {mlflow_tracking_uri}"
    )


def test_unknown_models_and_versions_and_an_unreachable_server_are_one_line(
    mlflow_tracking_uri: str, tmp_path: Path
) -> None:
    from app.models.mlflow_registry import MlflowModelRegistry

    name = registered_name()
    register(mlflow_tracking_uri, MODELS / "breast-cancer" / "1", name, ("champion",))
    registry = MlflowModelRegistry(mlflow_tracking_uri, tmp_path / "cache")
    assert registry.resolve(name, "champion") == registry.resolve(name, "latest") == registry.resolve(name, "1") == "1"
    where = f"not found in the MLflow registry at {mlflow_tracking_uri}"
    for version, expected in [
        ("2", f"registered model {name!r} version 2 {where}"),
        ("challenger", f"registered model {name!r} alias 'challenger' {where}"),
    ]:
        with pytest.raises(ModelLoadError) as raised:
            registry.resolve(name, version)
        assert str(raised.value) == expected
    with pytest.raises(ModelLoadError) as raised:
        registry.resolve("no-such-model", "champion")
    assert str(raised.value) == f"registered model 'no-such-model' alias 'champion' {where}"
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ModelLoadError) as raised:
        MlflowModelRegistry(closed, tmp_path / "cache").resolve(name, "champion")
    assert str(raised.value) == (
        f"cannot reach the MLflow tracking server MLFLOW_TRACKING_URI={closed}: start it or fix the URI"
    )
