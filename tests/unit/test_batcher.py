"""The micro-batching core, with no broker: flush on size, time and an idle input; one outcome per item; isolation."""

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


class GatedHandler(RecordingHandler):
    """Holds each batch until the test opens the gate: the model is busy meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    async def __call__(self, items: list[int]) -> list[int]:
        self.started.set()
        await self.gate.wait()
        return await super().__call__(items)


async def test_a_flush_closes_a_partial_batch_without_waiting_for_max_wait() -> None:
    handler = RecordingHandler()
    batcher = MicroBatcher(handler, max_batch_size=100, max_wait_s=60.0)
    batcher.start()
    futures = batcher.submit_many([1, 2, 3])
    batcher.flush()
    results = await asyncio.wait_for(asyncio.gather(*futures), timeout=5)  # not 60 s
    assert handler.batches == [[1, 2, 3]]
    assert [r.batch_size for r in results] == [3, 3, 3]
    await batcher.stop()


async def test_flushed_items_beyond_the_batch_size_go_in_full_batches_without_waiting() -> None:
    handler = RecordingHandler()
    batcher = MicroBatcher(handler, max_batch_size=4, max_wait_s=60.0)
    batcher.start()
    futures = batcher.submit_many(list(range(10)))
    batcher.flush()
    await asyncio.wait_for(asyncio.gather(*futures), timeout=5)
    assert handler.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    await batcher.stop()


async def test_items_after_a_flush_wait_to_fill_a_batch_as_usual() -> None:
    """Under load nothing is flushed, and batches still fill up to max_batch_size."""
    handler = GatedHandler()
    batcher = MicroBatcher(handler, max_batch_size=4, max_wait_s=60.0)
    batcher.start()
    first = batcher.submit_many([0])
    batcher.flush()
    await asyncio.wait_for(handler.started.wait(), timeout=5)  # [0] is in the model
    later = batcher.submit_many([1, 2])  # no flush: more input is on its way
    handler.gate.set()
    await asyncio.wait_for(asyncio.gather(*first), timeout=5)
    for _ in range(20):
        await asyncio.sleep(0)
    assert handler.batches == [[0]]  # [1, 2] waits for the batch to fill (or for max_wait_s)
    later += batcher.submit_many([3, 4, 5])
    results = await asyncio.wait_for(asyncio.gather(*later[:4]), timeout=5)
    assert handler.batches == [[0], [1, 2, 3, 4]]
    assert {r.batch_size for r in results} == {4}
    assert not later[4].done()  # 5 waits for more, or for max_wait_s
    await batcher.stop()


async def test_items_flushed_while_the_model_is_busy_go_together_as_soon_as_it_is_free() -> None:
    handler = GatedHandler()
    batcher = MicroBatcher(handler, max_batch_size=100, max_wait_s=60.0)
    batcher.start()
    futures = batcher.submit_many([0])
    batcher.flush()
    await asyncio.wait_for(handler.started.wait(), timeout=5)
    futures += batcher.submit_many([1])
    futures += batcher.submit_many([2])
    batcher.flush()
    handler.gate.set()
    await asyncio.wait_for(asyncio.gather(*futures), timeout=5)
    assert handler.batches == [[0], [1, 2]]
    await batcher.stop()


async def test_a_flush_with_nothing_queued_changes_nothing() -> None:
    handler = RecordingHandler()
    batcher = MicroBatcher(handler, max_batch_size=2, max_wait_s=60.0)
    batcher.start()
    batcher.flush()
    futures = batcher.submit_many([1])
    for _ in range(20):
        await asyncio.sleep(0)
    assert handler.batches == []  # the earlier flush does not cover items submitted after it
    futures += batcher.submit_many([2])
    await asyncio.wait_for(asyncio.gather(*futures), timeout=5)
    assert handler.batches == [[1, 2]]
    await batcher.stop()


@pytest.mark.parametrize(("size", "wait", "retries"), [(0, 1.0, 0), (1, -1.0, 0), (1, 1.0, -1)])
def test_rejects_bad_arguments(size: int, wait: float, retries: int) -> None:
    async def handler(items: list[int]) -> list[int]:
        return items

    with pytest.raises(ValueError):
        MicroBatcher(handler, max_batch_size=size, max_wait_s=wait, retries=retries)
