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

    Its own CancelledError is taken; the caller's is passed on: a bare ``except
    CancelledError: pass`` around ``await task`` cannot tell them apart, so a caller
    cancelled while it waits (a shutdown, a test's time limit) would carry on as if
    nothing happened. An exception the task ended with is raised."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise           # the caller's own cancellation, not the task's
