"""Waiting for a wake-up with a time limit, and stopping a task, without losing a
cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], timeout_s: float) -> T | None:
    """``awaitable``'s result, or None once ``timeout_s`` have passed.

    Not ``asyncio.wait_for``: on Python 3.11 it returns a result that arrives in the same
    event-loop turn as a cancellation and drops the cancellation, so a loop waiting this
    way runs on and whoever stops it waits for ever."""
    try:
        async with asyncio.timeout(timeout_s):
            return await awaitable
    except TimeoutError:
        return None


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended (a ``close()``'s or ``stop()``'s).

    Its own CancelledError is taken; the caller's is passed on, at once, even while the
    task is still finishing its cleanup. The wait is ``asyncio.wait``: it never raises the
    task's outcome and does not hand the caller's cancellation on to the task, so a
    CancelledError out of it is the caller's. Around ``await task`` none of the ways to
    tell them apart holds: ``except CancelledError: pass`` swallowed the caller's (a
    shutdown, a test's time limit carried on as if nothing had happened); asking
    ``current_task().cancelling()`` takes the task's own for the caller's in a cleanup that
    runs while its task is being cancelled (aiohttp's cleanup contexts on SIGTERM), cutting
    the cleanup short; and a task that takes the cancellation handed on to it and ends
    normally drops it. An exception the task ended with is raised."""
    task.cancel()
    await asyncio.wait({task})      # a CancelledError here is the caller's own
    if not task.cancelled():
        task.result()               # raises what the task ended with, if anything
