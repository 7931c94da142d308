"""The callback Asterisk crashes (``kill -9``) with a call-back answered.

Asterisk's own record of the leg dies with it (its hangup handler never runs), so the
server settles the call from what it saw: answered, and up until the moment it lost the
events websocket, which is the crash. The customer is billed until then, not for the
outage until Asterisk was back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import aiohttp
import pytest

from demo.stack import MerchantOptions, Stack
from tests.harness import asterisk as ast_harness

pytestmark = pytest.mark.e2e

OUTAGE_S = 4.0


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with Stack(tmp_path_factory.mktemp("crash"),
                     merchants=(MerchantOptions(pre_callback_delay_s="0"),),
                     db_prefix="cbgw_e2e_crash") as running:
        yield running


async def test_a_call_cut_by_an_asterisk_crash_is_billed_until_the_crash(
        stack: Stack) -> None:
    trigger = {"edge_call_id": f"edge-crash-{uuid.uuid4()}", "merchant_id": "acme",
               "caller": "+819012340077", "dialed": "+81120123456",
               "received_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
               "announce_mode": "early_media"}
    async with stack.carriers(a="uas_answer_hold.xml", b="uas_answer_hold.xml"):
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=stack.client_ssl())) as session:
            status, body = await stack.post_link(session, "/v1/link/callbacks", trigger)
        assert status == 202 and body["status"] == "queued", body
        leg = await stack.wait_for_row(
            "callback", "SELECT channel_id, answered_at FROM callback_attempts"
            " WHERE callback_id = $1 AND answered_at IS NOT NULL", body["callback_id"],
            timeout_s=30)
        await asyncio.sleep(2.0)                        # the customer is in the IVR
        crashed_at = datetime.now(UTC)
        await asyncio.to_thread(ast_harness.kill9, "callback")
        await asyncio.sleep(OUTAGE_S)
        await asyncio.to_thread(ast_harness.ensure_running, "callback")
        cdr = await stack.wait_for_row("callback", "SELECT * FROM cdrs WHERE call_id = $1",
                                       leg["channel_id"], timeout_s=60)

    assert cdr["disposition"] == "answered" and cdr["answered_at"] is not None
    # ended when the websocket dropped (the crash), not when Asterisk was back
    assert abs(cdr["ended_at"] - crashed_at) < timedelta(seconds=1), (cdr, crashed_at)
    up_s = Decimal(str((crashed_at - cdr["answered_at"]).total_seconds()))
    assert abs(cdr["duration_s"] - up_s) < Decimal("1"), (cdr["duration_s"], up_s)
    assert cdr["duration_s"] < up_s + Decimal(str(OUTAGE_S)) - 1
