"""The stall report names the whole chain of coroutines each task is suspended in."""

from __future__ import annotations

import asyncio
import logging

import pytest

from app.kafka import transport


async def innermost(gate: asyncio.Event) -> None:
    await gate.wait()


async def middle(gate: asyncio.Event) -> None:
    await innermost(gate)


def test_the_report_names_each_coroutine_a_task_awaits_outermost_first(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        waiting = asyncio.ensure_future(middle(gate))
        waiting.set_name("waiting-task")
        await asyncio.sleep(0)
        await transport._report_stall(0)
        gate.set()
        await waiting

    with caplog.at_level(logging.WARNING, logger=transport.log.name):
        asyncio.run(scenario())
    line = next(line for line in caplog.text.splitlines() if line.startswith("waiting-task: "))
    names = [step.split(":")[1] for step in line.removeprefix("waiting-task: ").split(" -> ")]
    assert names[:3] == ["middle", "innermost", "wait"]
