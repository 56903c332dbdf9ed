"""Model lifecycle against the real broker: hot reload mid-stream, a broken version, weighted
sticky routing, shadow versions, routing changed at run time, ensembles and the result cache."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from app.models.registry import ModelRegistry
from app.models.routing import Route, pick_version
from app.models.runner import ModelRunner
from app.settings import REPO_ROOT
from tests.integration.conftest import Names, WorkerProcess, create_topics, running_worker, worker_env
from tests.integration.streams import keyed_by_user, produce, read_outputs

MODELS = REPO_ROOT / "models"


SAMPLE_STATS = json.loads((MODELS / "breast-cancer" / "1" / "metadata.json").read_text())["sample_stats"]


def features(index: int) -> list[float]:
    """Rows between the two classes' means, where the two versions' scores differ."""
    blend = 0.35 + 0.2 * ((index * 37) % 101) / 100
    benign, malignant = SAMPLE_STATS["benign"]["mean"], SAMPLE_STATS["malignant"]["mean"]
    return [b + (m - b) * blend for b, m in zip(benign, malignant, strict=True)]


def event(index: int, user: str, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"e-{index}",
        "user_id": user,
        "features": features(index),
        "timestamp": int(time.time() * 1000),
        **extra,
    }


def install(models: Path, version: str, source: str, name: str = "breast-cancer") -> None:
    """Copy a shipped version in under ``version``, appearing at once (rename), as a deploy would."""
    staging = models / f".staging-{name}-{version}"
    shutil.copytree(MODELS / name / source, staging)
    metadata = json.loads((staging / "metadata.json").read_text())
    (staging / "metadata.json").write_text(json.dumps({**metadata, "version": version}))
    (models / name).mkdir(parents=True, exist_ok=True)
    os.rename(staging, models / name / version)


async def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 90.0) -> list[dict[str, Any]]:
    """Every record on ``topic``, once ``expected`` arrived and nothing more came for 2 s."""
    outputs = await read_outputs(bootstrap, (topic,), lambda seen: len(seen) >= expected, timeout_s, settle_s=2.0)
    return [output.result for output in outputs]


def worker(bootstrap: str, names: Names, tmp_path: Path, **extra: str) -> Any:
    create_topics(bootstrap, names)
    env = worker_env(bootstrap, names, tmp_path, STATS_ENABLED="false", **extra)
    return running_worker(env, tmp_path / "worker.log")


def reference(version: str) -> ModelRunner:
    return ModelRunner.load(ModelRegistry(MODELS), "breast-cancer", version, torch.device("cpu"))


async def until_models(
    worker: WorkerProcess, condition: Callable[[dict[str, Any]], bool], what: str, timeout_s: float = 120.0
) -> None:
    """Wait until the worker's /models view of breast-cancer meets ``condition``: however long a load takes."""
    deadline = time.monotonic() + timeout_s
    while not condition((await asyncio.to_thread(models_view, worker))["breast-cancer"]):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def models_view(worker: WorkerProcess) -> dict[str, Any]:
    status, body = worker.get("/models")
    assert status == 200
    document: dict[str, Any] = json.loads(body)
    return document


def assert_switched_from_1_to_2(results: list[dict[str, Any]], sent: int) -> None:
    """A switch from version 1 to 2 (``models/breast-cancer/1`` and ``/2``) mid-stream: every event
    predicted once, each partition on 1 then on 2, and each score the one its version computes."""
    per_event = Counter(result["event_id"] for result in results)
    assert set(per_event) == {f"e-{n}" for n in range(sent)}, "an event has no prediction"
    assert max(per_event.values()) == 1, "an event was predicted twice across the switch"
    versions = Counter(result["model_version"] for result in results)
    assert set(versions) == {"1", "2"} and min(versions.values()) > 500, versions

    # Per partition, offsets before the switch ran on 1 and every later one on 2: no flapping.
    by_partition: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for result in results:
        by_partition[result["partition"]].append((result["offset"], result["model_version"]))
    for partition, tagged in by_partition.items():
        in_order = [version for _, version in sorted(tagged)]
        assert in_order == sorted(in_order), f"partition {partition} went back to an older version"

    # The tag names the model that produced the number: recompute each with both versions.
    one, two = reference("1"), reference("2")
    indexes = [int(result["event_id"][2:]) for result in results]
    by_one = one.predict([features(n) for n in indexes])
    by_two = two.predict([features(n) for n in indexes])
    differ = 0
    for result, first, second in zip(results, by_one, by_two, strict=True):
        expected = first if result["model_version"] == "1" else second
        other = second if result["model_version"] == "1" else first
        assert result["prediction"] == pytest.approx(expected.prediction, abs=1e-5)
        differ += abs(other.prediction - expected.prediction) > 1e-4
    assert differ > len(results) // 2, "the two versions agree too often for the tag check to mean anything"


RATE = 1000.0
AT_MOST = 60_000  # events the hot-reload stream may send (a minute); it stops once both versions landed


def test_hot_reload_mid_stream_loses_nothing_and_tags_each_result(
    bootstrap_servers: str, names: Names, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    install(models, "1", "1")
    events = [event(n, f"u-{n % 40}") for n in range(AT_MOST)]

    async def scenario(running: WorkerProcess) -> tuple[int, list[dict[str, Any]]]:
        landed = asyncio.Event()
        streaming = asyncio.ensure_future(
            produce(bootstrap_servers, names.input_topic, lambda i: keyed_by_user(events[i]), len(events), RATE, landed)
        )
        await asyncio.sleep(2.0)
        install(models, "2", "2")  # a new version lands while events flow
        await until_models(running, lambda view: view["version"] == "2", "version 2 serving")
        await asyncio.sleep(1.0)
        broken = models / "breast-cancer" / ".staging-3"
        shutil.copytree(MODELS / "breast-cancer" / "2", broken)
        (broken / "model.pt2").write_bytes(b"truncated upload")
        metadata = json.loads((broken / "metadata.json").read_text())
        (broken / "metadata.json").write_text(json.dumps({**metadata, "version": "3"}))
        os.rename(broken, models / "breast-cancer" / "3")  # and then a broken one
        await until_models(running, lambda view: "3" in view["failed"], "version 3 refused")
        await asyncio.sleep(1.0)
        landed.set()
        sent = len(await streaming)
        return sent, await read_all(bootstrap_servers, names.output_topic, sent)

    with worker(bootstrap_servers, names, tmp_path, MODEL_DIR=str(models), MODEL_POLL_INTERVAL_S="0.5") as running:
        sent, results = asyncio.run(scenario(running))
        view = models_view(running)["breast-cancer"]
        _, metrics = running.get("/metrics")
        assert running.process.poll() is None

    assert_switched_from_1_to_2(results, sent)

    assert view["version"] == "2" and view["loaded"] == ["2"]
    assert "cannot load" in view["failed"]["3"]
    assert b'inference_model_load_failures_total{model="breast-cancer",version="3"} 1.0' in metrics


def test_split_shadow_runtime_change_ensemble_and_cache(bootstrap_servers: str, names: Names, tmp_path: Path) -> None:
    models = tmp_path / "models"
    for version, source in (("1", "1"), ("2", "2"), ("3", "1")):
        install(models, version, source)
    shutil.copytree(MODELS / "breast-cancer-ensemble", models / "breast-cancer-ensemble")
    routing = tmp_path / "routing.json"
    routing.write_text('{"breast-cancer": {"split": {"1": 90, "2": 10}, "shadow": ["3"]}}')
    users = [f"user-{n}" for n in range(2000)]
    split_events = [event(n, users[n % len(users)]) for n in range(2 * len(users))]  # two events per user
    env = {
        "MODEL_DIR": str(models),
        "MODEL_NAMES": "breast-cancer,breast-cancer-ensemble",
        "ROUTING_FILE": str(routing),
        "MODEL_POLL_INTERVAL_S": "0",  # no timer: the change below applies through the admin endpoint
        "RESULT_CACHE_SIZE": "1000",
    }
    with worker(bootstrap_servers, names, tmp_path, **env) as running:
        asyncio.run(produce(bootstrap_servers, names.input_topic, [keyed_by_user(e) for e in split_events]))
        served = asyncio.run(read_all(bootstrap_servers, names.output_topic, len(split_events)))
        shadowed = asyncio.run(read_all(bootstrap_servers, names.shadow_topic, len(split_events)))

        routing.write_text('{"breast-cancer": {"split": {"2": 1}}}')  # changed at run time, no restart
        assert models_view(running)["breast-cancer"]["route"]["split"] == {"1": 90.0, "2": 10.0}
        request = urllib.request.Request(f"http://127.0.0.1:{running.port}/models/reload", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        assert answer["changes"] == {"breast-cancer": {"route": {"split": {"2": 1.0}, "shadow": []}}}
        assert models_view(running)["breast-cancer"]["loaded"] == ["2"]  # 1 and 3 retired
        later = [event(100_000 + n, users[n]) for n in range(200)]
        ensemble = [event(200_000 + n, f"e-user-{n}", model="breast-cancer-ensemble") for n in range(20)]
        asyncio.run(produce(bootstrap_servers, names.input_topic, [keyed_by_user(e) for e in later + ensemble]))
        total = len(split_events) + len(later) + len(ensemble)
        everything = asyncio.run(read_all(bootstrap_servers, names.output_topic, total))
        # The same inputs again, as new events: the cache answers them without a forward.
        repeated = [{**document, "event_id": f"again-{document['event_id']}"} for document in later[:50]]
        asyncio.run(produce(bootstrap_servers, names.input_topic, [keyed_by_user(e) for e in repeated]))
        everything = asyncio.run(read_all(bootstrap_servers, names.output_topic, total + len(repeated)))

    # Weighted, sticky split: every result on the version the route gives its user.
    route = Route((("1", 90.0), ("2", 10.0)))
    assert len(served) == len(split_events) and len({r["event_id"] for r in served}) == len(served)
    for result in served:
        assert result["model_version"] == pick_version(route, result["user_id"])
    user_versions = {r["user_id"]: r["model_version"] for r in served}
    share = Counter(user_versions.values())["2"] / len(users)
    # Binomial sd over 2000 users at p=0.1 is 0.0067; 0.03 is about 4.5 of them.
    assert abs(share - 0.10) < 0.03, share

    # Shadows: one result per event on the shadow topic, from version 3, never on the main topic.
    assert sorted(r["event_id"] for r in shadowed) == sorted(r["event_id"] for r in served)
    assert {(r["model_version"], r["shadow"]) for r in shadowed} == {("3", True)}
    assert all("shadow" not in r and r["model_version"] != "3" for r in everything)

    by_id = {r["event_id"]: r for r in everything}
    assert {by_id[d["event_id"]]["model_version"] for d in later} == {"2"}
    for document in ensemble:
        result = by_id[document["event_id"]]
        assert result["model_name"] == "breast-cancer-ensemble"
        assert result["members"] == [
            {"name": "breast-cancer", "version": "1", "weight": 1.0},
            {"name": "breast-cancer", "version": "2", "weight": 1.0},
        ]
    for document in repeated:
        again, first = by_id[document["event_id"]], by_id[document["event_id"].removeprefix("again-")]
        assert (again["cache_hit"], again["batch_size"]) == (True, 0)
        assert again["prediction"] == first["prediction"] and again["model_version"] == first["model_version"]
