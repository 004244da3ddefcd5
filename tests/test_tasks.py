"""backend.tasks.cancel_and_wait: stops a task, and never swallows the caller's own cancel (real event loop)."""

from __future__ import annotations

import asyncio

import pytest

from backend.tasks import cancel_and_wait


async def test_it_cancels_a_running_task_and_waits_for_its_cleanup() -> None:
    cleaned = asyncio.Event()

    async def worker() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0.01)  # cleanup that itself awaits
            cleaned.set()

    task = asyncio.create_task(worker())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled() and cleaned.is_set()
    await cancel_and_wait(task)  # a finished task: nothing to do
    await cancel_and_wait(None)


async def test_a_bound_around_a_stuck_close_trips_instead_of_being_swallowed() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:  # ignores its first cancel, as a task caught mid-cleanup does
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await release.wait()

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await cancel_and_wait(task)
    assert task.cancelled()  # the bound's cancel reached the task it was waiting for as well
    release.set()
