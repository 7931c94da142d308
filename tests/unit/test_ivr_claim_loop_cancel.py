"""The claim loop's idle wait ends on a cancellation that arrives in the same event-loop
turn as a wake-up (``asyncio.wait_for`` on 3.11 returned the wake-up and dropped the
cancellation: the notification and SMS workers then never stopped)."""

from __future__ import annotations

import asyncio

from ivr_platform import claim_loop


async def test_a_wake_up_with_the_cancellation_still_stops_the_loop() -> None:
    woken: asyncio.Queue[str] = asyncio.Queue()
    claims = 0

    async def run_once() -> int:
        nonlocal claims
        claims += 1
        return 0

    task = asyncio.create_task(claim_loop._claim_forever(run_once, 10, 300.0, woken))
    await asyncio.sleep(0.05)                    # idle, waiting for a wake-up
    assert claims == 1
    woken.put_nowait("sendable")                 # a NOTIFY, and in the same turn:
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert task in done and task.cancelled()
    assert claims == 1                           # no claim after the cancellation
