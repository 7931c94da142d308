"""Waiting for a wake-up with a time limit, without losing a cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

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
