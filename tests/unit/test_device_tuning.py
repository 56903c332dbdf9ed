"""Per-device choices made at warm-up (app.models.tuning, ModelRunner.warm_up): the choice logic on
given timings, what a CPU runner chooses and reports, and the batcher handing over the next batch
while one is in flight (what lets a text model tokenize ahead). No timings are asserted."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
import torch

from app.models.registry import ModelRegistry
from app.models.runner import ModelRunner, RunOptions
from app.models.tuning import INLINE_FORWARD_MAX_MS, fastest, forward_batch_candidates, run_inline
from app.pipeline.batcher import MicroBatcher
from app.settings import REPO_ROOT, Settings

CPU, CUDA = torch.device("cpu"), torch.device("cuda:0")


def test_auto_execution_runs_short_batches_inline_on_any_device() -> None:
    assert run_inline("auto", INLINE_FORWARD_MAX_MS / 2)
    assert not run_inline("auto", INLINE_FORWARD_MAX_MS)
    assert run_inline("inline", 1000.0) and not run_inline("thread", 0.01)


def test_forward_batch_candidates_per_device() -> None:
    assert forward_batch_candidates(CPU, 0, 32, 256) == [32]  # the metadata's, measured for the CPU
    assert forward_batch_candidates(CUDA, 0, 32, 256) == [32, 64, 128, 256]
    assert forward_batch_candidates(CUDA, 0, 32, 100) == [32, 64, 100]
    assert forward_batch_candidates(CUDA, 0, 512, 256) == [256]
    assert forward_batch_candidates(CUDA, 48, 32, 256) == [48]  # MODEL_FORWARD_BATCH_SIZE overrides
    assert forward_batch_candidates(CPU, 48, 32, 256) == [48]


def test_fastest_takes_the_least_time_and_the_first_of_equals() -> None:
    assert fastest({32: 9.0, 64: 5.0, 128: 5.5}) == 64
    assert fastest({torch.float32: 3.0, torch.float16: 3.0}) == torch.float32
    with pytest.raises(ValueError, match="nothing was measured"):
        fastest({})


def test_forward_batch_size_and_half_precision_settings() -> None:
    models = Settings.from_env({"MODEL_FORWARD_BATCH_SIZE": "128", "MODEL_HALF_PRECISION": "true"}).models
    assert models.forward_batch_size == 128 and models.half_precision
    assert Settings.from_env({}).models.forward_batch_size == 0


def test_a_cpu_runner_chooses_reports_stages_and_describes_itself() -> None:
    runner = ModelRunner.load(
        ModelRegistry(REPO_ROOT / "models"), "breast-cancer", "latest", CPU, RunOptions(half=True)
    )
    try:
        runner.warm_up(64)
        assert runner.dtype == torch.float32  # float16 is for cuda only, allowed or not
        assert runner.batches_in_flight == 1  # nothing to tokenize ahead
        seen: list[Mapping[str, float]] = []
        runner.on_stages = seen.append
        rows = [[1.0] * runner.metadata.input_size] * 3
        outputs = asyncio.run(runner.predict_async(rows))
        assert len(outputs) == 3
        assert len(seen) == 1 and set(seen[0]) == {"inputs", "forward", "outputs"}
        assert all(seconds >= 0 for seconds in seen[0].values())
        assert runner.describe().startswith("cpu, float32")
    finally:
        runner.close()


def test_thread_execution_is_kept_when_the_user_sets_it() -> None:
    options = RunOptions(execution="thread")
    runner = ModelRunner.load(ModelRegistry(REPO_ROOT / "models"), "breast-cancer", "latest", CPU, options)
    try:
        runner.warm_up(8)
        assert not runner.inline and "on the model thread" in runner.describe()
    finally:
        runner.close()


async def test_the_next_batch_is_handed_over_while_one_is_in_flight() -> None:
    started: list[list[int]] = []
    release, two_started = asyncio.Event(), asyncio.Event()

    async def handler(items: list[int]) -> list[int]:
        started.append(items)
        if len(started) == 2:
            two_started.set()
        await release.wait()
        return [item * 10 for item in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(handler, max_batch_size=2, max_wait_s=0, batches_in_flight=2)
    batcher.start()
    futures = batcher.submit_many([1, 2, 3, 4, 5, 6])
    await asyncio.wait_for(two_started.wait(), 10)
    await asyncio.sleep(0.01)
    assert started == [[1, 2], [3, 4]]  # two in flight, the third waits for a slot
    release.set()
    assert [(await future).value for future in futures] == [10, 20, 30, 40, 50, 60]
    await batcher.stop()


async def test_one_batch_in_flight_by_default() -> None:
    started: list[list[int]] = []
    release, one_started = asyncio.Event(), asyncio.Event()

    async def handler(items: list[int]) -> list[int]:
        started.append(items)
        one_started.set()
        await release.wait()
        return items

    batcher: MicroBatcher[int, int] = MicroBatcher(handler, max_batch_size=2, max_wait_s=0)
    batcher.start()
    futures = batcher.submit_many([1, 2, 3, 4])
    await asyncio.wait_for(one_started.wait(), 10)
    await asyncio.sleep(0.01)
    assert started == [[1, 2]]
    release.set()
    await asyncio.gather(*futures)
    await batcher.stop()
