"""The micro-batching core, with no broker: flush on size and time, one outcome per item, isolation."""

from __future__ import annotations

import asyncio

import pytest

from app.errors import ModelError
from app.pipeline.batcher import MicroBatcher


class RecordingHandler:
    def __init__(self, poison: set[int] | None = None, fail_times: int = 0) -> None:
        self.batches: list[list[int]] = []
        self.poison = poison or set()
        self.fail_times = fail_times

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        if self.fail_times > 0:
            self.fail_times -= 1
            raise RuntimeError("transient failure")
        if self.poison & set(items):
            raise ValueError(f"poison in {items}")
        return [item * 10 for item in items]


async def test_flushes_when_the_batch_is_full() -> None:
    handler = RecordingHandler()
    batcher = MicroBatcher(handler, max_batch_size=4, max_wait_s=60.0)
    batcher.start()
    futures = [batcher.submit(i) for i in range(8)]
    results = await asyncio.wait_for(asyncio.gather(*futures), timeout=5)
    assert [r.value for r in results] == [i * 10 for i in range(8)]
    assert handler.batches == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert {r.batch_size for r in results} == {4}
    await batcher.stop()


async def test_flushes_a_partial_batch_after_max_wait_from_the_first_arrival() -> None:
    handler = RecordingHandler()
    batcher = MicroBatcher(handler, max_batch_size=100, max_wait_s=0.05)
    batcher.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = batcher.submit(1)
    await asyncio.sleep(0.02)
    second = batcher.submit(2)
    results = await asyncio.wait_for(asyncio.gather(first, second), timeout=5)
    elapsed = loop.time() - started
    assert handler.batches == [[1, 2]]
    assert [r.batch_size for r in results] == [2, 2]
    assert 0.04 <= elapsed < 0.5  # closed by the first item's deadline, not by the second's
    await batcher.stop()


async def test_every_item_gets_exactly_one_result_in_order() -> None:
    handler = RecordingHandler()
    batcher = MicroBatcher(handler, max_batch_size=7, max_wait_s=0.001)
    batcher.start()
    futures = []
    for i in range(100):
        futures.append(batcher.submit(i))
        if i % 13 == 0:
            await asyncio.sleep(0)
    results = await asyncio.gather(*futures)
    assert [r.value for r in results] == [i * 10 for i in range(100)]
    assert sorted(item for batch in handler.batches for item in batch) == list(range(100))
    assert max(len(batch) for batch in handler.batches) <= 7
    await batcher.stop()


async def test_a_transient_failure_is_retried_for_the_whole_batch() -> None:
    handler = RecordingHandler(fail_times=1)
    batcher = MicroBatcher(handler, max_batch_size=3, max_wait_s=60.0, retries=1)
    batcher.start()
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)))
    assert [r.value for r in results] == [0, 10, 20]
    assert handler.batches == [[0, 1, 2], [0, 1, 2]]
    await batcher.stop()


async def test_a_poison_item_is_isolated_and_the_rest_of_its_batch_succeeds() -> None:
    handler = RecordingHandler(poison={5})
    batcher = MicroBatcher(handler, max_batch_size=8, max_wait_s=60.0, retries=1)
    batcher.start()
    futures = [batcher.submit(i) for i in range(8)]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert isinstance(outcomes[5], ModelError)
    assert "poison" in outcomes[5].reason
    for i, outcome in enumerate(outcomes):
        if i != 5:
            assert not isinstance(outcome, BaseException)
            assert outcome.value == i * 10
    # Bisection, not one call per item: far fewer calls than a retry of each of the 8 items alone.
    assert len(handler.batches) <= 2 + 2 * 3 + 1
    await batcher.stop()


async def test_a_batch_that_always_fails_fails_every_item() -> None:
    handler = RecordingHandler(poison=set(range(4)))
    batcher = MicroBatcher(handler, max_batch_size=4, max_wait_s=60.0, retries=0)
    batcher.start()
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)
    assert all(isinstance(outcome, ModelError) for outcome in outcomes)
    await batcher.stop()


async def test_a_handler_returning_the_wrong_number_of_outputs_is_a_failure() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1] if len(items) > 1 else []

    batcher = MicroBatcher(short, max_batch_size=2, max_wait_s=60.0, retries=0)
    batcher.start()
    outcomes = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    assert all(isinstance(outcome, ModelError) for outcome in outcomes)
    await batcher.stop()


async def test_stop_finishes_queued_items_and_refuses_new_ones() -> None:
    handler = RecordingHandler()
    batcher = MicroBatcher(handler, max_batch_size=100, max_wait_s=60.0)
    batcher.start()
    futures = [batcher.submit(i) for i in range(5)]
    await batcher.stop()
    assert all(future.done() for future in futures)
    with pytest.raises(RuntimeError):
        batcher.submit(6)


@pytest.mark.parametrize(("size", "wait", "retries"), [(0, 1.0, 0), (1, -1.0, 0), (1, 1.0, -1)])
def test_rejects_bad_arguments(size: int, wait: float, retries: int) -> None:
    async def handler(items: list[int]) -> list[int]:
        return items

    with pytest.raises(ValueError):
        MicroBatcher(handler, max_batch_size=size, max_wait_s=wait, retries=retries)
