"""``shared.site.log_asterisk_reachability`` (both servers' start-up) passes on its
caller's cancellation even when it comes in the same event-loop turn as Asterisk's answer:
``asyncio.wait_for`` on 3.11 returned the answer and dropped the cancellation, so a
start-up cancelled then (a stop during start-up) carried on as if nothing had happened."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from shared.site import log_asterisk_reachability
from tests.unit.test_shared_waits_cancel import ends_within, stop_runaway

log = logging.getLogger("test.site")


class Asterisk:
    """ARI's ``GET /asterisk/info``, answered when the test says."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[dict[str, Any]] = \
            asyncio.get_running_loop().create_future()

    async def asterisk_info(self) -> dict[str, Any]:
        return await self.answer


async def test_a_cancellation_with_asterisk_s_answer_is_passed_on(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "test.site")
    asterisk = Asterisk()
    starting = asyncio.create_task(log_asterisk_reachability(
        asterisk, "http://127.0.0.1:8088", log, "meanwhile"))  # type: ignore[arg-type]
    try:
        await asyncio.sleep(0.05)                   # it waits for the answer
        asterisk.answer.set_result({"system": {"version": "22.0.0"}})  # and in that turn:
        starting.cancel()
        assert await ends_within(starting), "it did not end within 2 s"
        assert starting.cancelled(), "the start-up's cancellation was dropped"
        assert "reachable" not in caplog.text
    finally:
        await stop_runaway(starting)


async def test_an_answer_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "test.site")
    asterisk = Asterisk()
    asterisk.answer.set_result({"system": {"version": "22.0.0"}})
    await log_asterisk_reachability(asterisk, "http://127.0.0.1:8088", log,  # type: ignore[arg-type]
                                    "meanwhile")
    assert "Asterisk 22.0.0 reachable at http://127.0.0.1:8088" in caplog.text
