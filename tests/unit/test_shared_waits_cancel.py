"""``shared.waits.cancel_and_wait``: a ``close()``'s "cancel this task and wait for it"
takes the task's own cancellation and passes on its caller's; and :func:`ends_within`,
the bounded wait the ``*cancel*`` tests use (never a hang)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from shared.waits import cancel_and_wait


async def ends_within(task: asyncio.Task[Any], seconds: float = 2.0) -> bool:
    """Whether ``task`` has ended within ``seconds`` (it is left as it is: a test that
    finds it still running says so, then :func:`stop_runaway` ends it)."""
    try:
        async with asyncio.timeout(seconds):
            await asyncio.wait({task})
    except TimeoutError:
        return False
    return True


async def stop_runaway(task: asyncio.Task[Any]) -> None:
    """Cancel a task that a failed test left running, and wait (bounded) for it."""
    if not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=5)


async def until(condition: Callable[[], bool], limit_s: float = 5.0) -> None:
    """Return once ``condition()`` holds; AssertionError after ``limit_s``."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {limit_s} s")
        await asyncio.sleep(0.01)


async def test_the_task_s_own_cancellation_is_taken() -> None:
    task = asyncio.create_task(asyncio.sleep(60))
    await asyncio.sleep(0)
    await cancel_and_wait(task)                 # no CancelledError here
    assert task.cancelled()


async def test_a_task_that_ended_already_is_fine_and_its_error_is_raised() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    done = asyncio.create_task(asyncio.sleep(0))
    failed = asyncio.create_task(fails())
    await asyncio.wait({done, failed})
    await cancel_and_wait(done)
    with pytest.raises(ValueError, match="boom"):
        await cancel_and_wait(failed)


async def test_the_caller_s_own_cancellation_is_passed_on() -> None:
    """The caller is cancelled while it waits for the task to end: it ends cancelled,
    where ``except CancelledError: pass`` carried on as if nothing had happened."""
    task = asyncio.create_task(asyncio.sleep(60))
    await asyncio.sleep(0)
    closing = asyncio.create_task(cancel_and_wait(task))
    await asyncio.sleep(0)                      # it has cancelled the task and waits
    closing.cancel()                            # before the task has ended
    try:
        assert await ends_within(closing), "cancel_and_wait did not end within 2 s"
        assert task.cancelled()
        assert closing.cancelled(), "the caller's cancellation was swallowed"
    finally:
        await stop_runaway(closing)
        await stop_runaway(task)


async def slow_to_end(release: asyncio.Event) -> None:
    """A task that is slow to end: cancelled, it finishes its cleanup first (until the
    test sets ``release``), whatever further cancellations come meanwhile, and then ends
    cancelled."""
    try:
        await asyncio.sleep(3600)
    finally:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                pass                        # the cleanup goes on


async def test_the_caller_s_cancellation_is_passed_on_while_the_task_is_slow_to_end(
        ) -> None:
    """It comes at once: the caller does not wait for the task's cleanup (``await task``
    handed the cancellation to the task, which took it and went on, so the caller waited,
    and with a task that ended normally then, never heard of it)."""
    release = asyncio.Event()
    task = asyncio.create_task(slow_to_end(release))
    await asyncio.sleep(0)
    closing = asyncio.create_task(cancel_and_wait(task))
    await asyncio.sleep(0.05)                   # it has cancelled the task and waits
    closing.cancel()
    try:
        assert await ends_within(closing), "the caller waited for the task's cleanup"
        assert closing.cancelled(), "the caller's cancellation was swallowed"
        assert not task.done()                  # still cleaning up, on its own
    finally:
        release.set()
        await stop_runaway(closing)
        await stop_runaway(task)
    assert await ends_within(task) and task.cancelled()


async def test_in_a_cleanup_of_a_cancelled_caller_the_task_s_cancellation_is_taken() -> None:
    """A ``finally`` that stops a task while its own task is being cancelled (aiohttp's
    ``web.run_app`` cancels its main task on SIGTERM, then runs the cleanup contexts in
    it): the task's CancelledError is the task's, the cleanup goes on. Asking
    ``current_task().cancelling()`` took it for the caller's and cut the cleanup short."""
    cleaned: list[str] = []

    async def server() -> None:
        task = asyncio.create_task(asyncio.sleep(3600))
        try:
            await asyncio.sleep(3600)
        finally:
            await cancel_and_wait(task)
            cleaned.append("the rest of the cleanup")

    running = asyncio.create_task(server())
    await asyncio.sleep(0.01)
    running.cancel()
    try:
        assert await ends_within(running), "the cleanup did not end within 2 s"
        assert cleaned == ["the rest of the cleanup"]
        assert running.cancelled()              # its own cancellation, still passed on
    finally:
        await stop_runaway(running)
