"""``QualityBoard.close()`` passes on its caller's own cancellation (it caught every
CancelledError of ``await task``, the caller's included, as ``RatingService.close()``
did before aedd602)."""

from __future__ import annotations

import asyncio

from routing_rates.quality import QualityBoard
from tests.unit.test_shared_waits_cancel import ends_within, stop_runaway


class NoDatabase(QualityBoard):
    """The board's refresh loop as it runs, with the figures' query left out."""

    async def refresh(self) -> None:
        pass


async def test_close_passes_on_its_caller_s_cancellation() -> None:
    board = await NoDatabase(pool=None, refresh_s=300.0).start()    # type: ignore[arg-type]
    refresher = board._task
    assert refresher is not None
    closing = asyncio.create_task(board.close())
    await asyncio.sleep(0)                  # close() has cancelled the loop and waits
    closing.cancel()                        # its caller's own cancellation
    try:
        assert await ends_within(closing), "close() did not end within 2 s"
        assert refresher.cancelled()
        assert closing.cancelled(), "close() swallowed its caller's cancellation"
    finally:
        await stop_runaway(closing)
        await stop_runaway(refresher)


async def test_close_alone_ends_the_loop_quietly() -> None:
    board = await NoDatabase(pool=None, refresh_s=300.0).start()    # type: ignore[arg-type]
    refresher = board._task
    assert refresher is not None
    await board.close()
    assert refresher.cancelled() and board._task is None
