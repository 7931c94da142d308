"""The callback worker's claim-and-sweep loop ends on a cancellation that arrives in the
same event-loop turn as a wake-up (a job's NOTIFY, its timer, a freed slot):
``asyncio.wait_for`` on 3.11 returned the wake-up and dropped the cancellation, so the loop
claimed again and ran on, and whoever stopped the worker waited for ever."""

from __future__ import annotations

import asyncio

from callback_server.testing import FakeAri, FixedRater
from callback_server.worker import Worker, WorkerSettings
from shared import ari
from tests.unit.test_shared_waits_cancel import ends_within, stop_runaway


class Claims:
    """The queue's claim, empty: counts the claims the loop makes."""

    def __init__(self) -> None:
        self.claims = 0

    async def claim_due(self, limit: int) -> tuple[list[object], float | None]:
        self.claims += 1
        return [], None


async def test_a_wake_up_with_the_cancellation_still_stops_the_sweep_loop() -> None:
    claims = Claims()
    router = ari.EventRouter()
    worker = Worker(store=claims, db_url="postgresql://unused", merchants={},  # type: ignore[arg-type]
                    flows={}, routes=None, client=FakeAri(router=router),  # type: ignore[arg-type]
                    router=router, rater=FixedRater(), ari_ready=asyncio.Event(),
                    settings=WorkerSettings(sweep_s=300.0))
    loop = asyncio.create_task(worker._loop())
    try:
        await asyncio.sleep(0.05)               # claimed once, waits for a wake-up
        assert claims.claims == 1
        worker._wake.set()                      # a job's NOTIFY, and in the same turn:
        loop.cancel()
        assert await ends_within(loop), "the sweep loop still runs 2 s after its cancel"
        assert loop.cancelled()
        assert claims.claims == 1               # no claim after the cancellation
    finally:
        await stop_runaway(loop)
