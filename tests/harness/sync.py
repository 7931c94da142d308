"""Run a coroutine from plain (synchronous) test code: hypothesis drives plain functions."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on its own loop in a worker thread (hypothesis drives a plain
    function; the session's loop stays untouched)."""
    async def main() -> T:
        return await make()
    with concurrent.futures.ThreadPoolExecutor(1) as worker:
        return worker.submit(asyncio.run, main()).result()
