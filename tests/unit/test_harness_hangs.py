"""The hang watchdog names where a test's task waits and what a busy executor thread
runs (tests.harness.hangs: the summary line of a test pytest-timeout fails)."""

from __future__ import annotations

import asyncio
import threading

from tests.harness import hangs


async def test_a_stuck_task_and_a_busy_executor_thread_are_named() -> None:
    gate = threading.Event()

    async def waits_for_a_thread() -> None:
        await asyncio.to_thread(gate.wait, 10)

    task = asyncio.create_task(waits_for_a_thread())
    await asyncio.sleep(0.05)
    try:
        text = hangs.where_stuck()
    finally:
        gate.set()
        await task
    assert "tests/unit/test_harness_hangs.py:" in text
    assert "waits_for_a_thread > threads.py:" in text
    assert "(running Event.wait)" in text
    assert "no test task pending" not in text
