"""Runaway spend on the real stack: a carrier that answers and never hangs up.

The call is torn down at the maximum call length; its cost trips the daily
spend cap, which refuses the next origination at once and alerts the operator.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from demo.stack import MerchantOptions, Stack

pytestmark = pytest.mark.e2e

MAX_CALL_S = 10          # the smallest the config allows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
async def alerts() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook receiver standing in for the operator's alerting."""
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(json.loads(await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/alerts", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/alerts", received
    await runner.cleanup()


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory,
                alerts: tuple[str, list[dict[str, Any]]]) -> AsyncIterator[Stack]:
    env = {
        "CALLBACK__GUARD__MAX_CALL_S": str(MAX_CALL_S),
        # One 10 s call on the cheapest carrier (0.125 USD/min, 6/6) costs 0.025 USD.
        "CALLBACK__GUARD__CAPS__GLOBAL__SPEND_DAILY": '"0.01"',
        "CALLBACK__GUARD__ALERTS__WEBHOOK_URL": alerts[0],
    }
    async with Stack(tmp_path_factory.mktemp("runaway"),
                     merchants=(MerchantOptions(pre_callback_delay_s="0"),),
                     db_prefix="cbgw_e2e_runaway", extra_env=env) as running:
        yield running


def trigger(caller: str) -> dict[str, str]:
    return {"edge_call_id": f"edge-test-{uuid.uuid4()}", "merchant_id": "acme",
            "caller": caller, "dialed": "+81120123456",
            "received_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "announce_mode": "early_media"}


async def test_endless_call_is_cut_at_the_maximum_and_the_spend_cap_stops_the_next(
        stack: Stack, alerts: tuple[str, list[dict[str, Any]]]) -> None:
    connector = aiohttp.TCPConnector(ssl=stack.client_ssl())
    async with aiohttp.ClientSession(connector=connector) as session:
        async with stack.carriers(a="uas_answer_forever.xml", b="uas_answer_forever.xml",
                            digits="1") as roles:
            status, body = await stack.post_link(session, "/v1/link/callbacks",
                                                 trigger("+819077778888"))
            assert status == 202 and body["status"] == "queued", body
            cdr = await stack.wait_for_row(
                "callback", "SELECT * FROM cdrs WHERE destination = '+819077778888' "
                "AND disposition = 'answered'", timeout_s=MAX_CALL_S + 20)
            phone = next(r for r in roles.values() if r.invites_received())
            messages = phone.dialog_messages()
            ok = next(m for m in messages if m.direction == "sent" and m.status == 200
                      and m.cseq_method == "INVITE")
            bye = next(m for m in messages if m.method == "BYE" and m.call_id == ok.call_id)
            on_the_line = (bye.at - ok.at).total_seconds()
            assert bye.direction == "received", "the gateway, not the phone, ended the call"
            assert abs(on_the_line - MAX_CALL_S) <= 2, on_the_line
            assert cdr["carrier_cost"] is not None and cdr["carrier_cost"] > 0

            # The call's cost crossed the daily cap: the next origination is refused at once.
            invites_before = sum(len(r.invites_received()) for r in roles.values())
            sent_at = time.monotonic()
            status, body = await stack.post_link(session, "/v1/link/callbacks",
                                                 trigger("+819066667777"))
            assert status == 202, body
            refusal = await stack.wait_for_row(
                "callback", "SELECT * FROM guard_refusals WHERE reason = 'cap_spend_daily'",
                timeout_s=10)
            assert time.monotonic() - sent_at <= 10.0, "the cap did not refuse at once"
            await asyncio.sleep(1.0)
            assert sum(len(r.invites_received()) for r in roles.values()) == invites_before
            assert refusal["stage"] == "dial"  # refused as the leg was to be dialled

    kinds = {a.get("kind") for a in alerts[1]}
    assert kinds & {"cap_tripped", "cap_reached"}, alerts[1]
