"""Presence by phone end to end: real Asterisks, PostgreSQL, both servers, SIPp as the
advisor's phone.

The advisor calls the merchant's presence numbers at the edge from the phone registered
with the callback site: each call gets 183 with the announcement (RTP read off the
wire) and a final 486, never a 200 OK (0 billed seconds), and the advisor's state
changes in the callback site's database with an ``advisor_events`` row via ``phone``.
An unknown phone hears that it is not registered and nothing changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from demo.stack import CALL_CENTER_TOKEN, MerchantOptions, Stack
from tests.harness.asterisk import prompt_seconds
from tests.harness.rtp import RtpCapture
from tests.harness.sipp import (
    CUSTOMER_IP,
    CUSTOMER_PORT,
    SipMessage,
    SippRole,
    media_port_for,
)

pytestmark = pytest.mark.e2e

ADVISOR_PHONE = "09011112222"
ONLINE, OFFLINE = "0120123457", "0120123458"
PCMU = 0    # the only audio codec the phone offers
ACME = MerchantOptions(presence_online_number=ONLINE, presence_offline_number=OFFLINE)


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with Stack(tmp_path_factory.mktemp("presence"), merchants=(ACME,),
                     db_prefix="cbgw_e2e_presence", log_level="DEBUG") as running:
        yield running


async def add_advisor(stack: Stack, phone: str) -> int:
    """The merchant registers the advisor over the callback site's API."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=stack.client_ssl())) as session, session.post(
            f"{stack.callback_url}/v1/advisors",
            headers={"Authorization": f"Bearer {CALL_CENTER_TOKEN}"},
            json={"display_name": "月読 さくら", "code": "0123", "price_per_minute_yen": 280,
                  "contact": {"kind": "pstn", "number": phone}}) as resp:
        body = await resp.json()
        assert resp.status == 201, body
        return int(body["id"])


async def call(stack: Stack, caller: str, dialled: str) -> tuple[SippRole, RtpCapture]:
    """One call from ``caller`` to ``dialled``, with the RTP sent to the phone."""
    with RtpCapture(CUSTOMER_IP, media_port_for(CUSTOMER_PORT)) as rtp:
        phone = stack.customer_call(caller, dialled=dialled)
        await asyncio.to_thread(phone.wait, 40)
        await asyncio.sleep(0.2)   # the last packets of the stream
    return phone, rtp


def status_at(messages: list[SipMessage], status: int) -> SipMessage:
    return next(m for m in messages if m.status == status)


def assert_announced_and_rejected(stack: Stack, phone: SippRole, rtp: RtpCapture,
                                  prompt: str) -> None:
    """183 with SDP, the ``prompt`` as early media (its length of RTP), then 486; no 200."""
    statuses = phone.statuses_received()
    assert 200 not in statuses, f"the edge answered the advisor's call: {statuses}"
    assert 183 in statuses and statuses[-1] == 486, statuses
    messages = phone.dialog_messages()
    assert status_at(messages, 183).has_sdp
    heard = (status_at(messages, 486).at - status_at(messages, 183).at).total_seconds()
    length = prompt_seconds(stack.edge_site, "ja", prompt)
    assert abs(heard - length) <= 0.5, (prompt, heard, length)
    pcmu = [at for at, payload_type in rtp.packets if payload_type == PCMU]
    assert len(pcmu) >= 0.8 * length / 0.02, (prompt, len(pcmu), length)
    assert abs(rtp.seconds(PCMU) - length) <= 0.5, (prompt, rtp.seconds(PCMU), length)


async def presence(stack: Stack, advisor_id: int) -> tuple[str, list[dict[str, Any]]]:
    rows = await stack.fetch("callback", "SELECT desk FROM advisor_presence "
                                         "WHERE advisor_id = $1", advisor_id)
    events = await stack.fetch("callback", "SELECT event, via, before, after FROM "
                                           "advisor_events WHERE advisor_id = $1 ORDER BY id",
                               advisor_id)
    return str(rows[0]["desk"]), [dict(e) for e in events]


async def test_an_advisor_goes_online_and_offline_by_phone_never_answered(
        stack: Stack) -> None:
    advisor_id = await add_advisor(stack, ADVISOR_PHONE)
    assert await presence(stack, advisor_id) == ("offline", [])

    phone, rtp = await call(stack, ADVISOR_PHONE, ONLINE)
    assert_announced_and_rejected(stack, phone, rtp, "presence-online")
    assert await presence(stack, advisor_id) == ("standby", [
        {"event": "online", "via": "phone", "before": "offline", "after": "standby"}])

    phone, rtp = await call(stack, ADVISOR_PHONE, OFFLINE)
    assert_announced_and_rejected(stack, phone, rtp, "presence-offline")
    desk, events = await presence(stack, advisor_id)
    assert desk == "offline" and events[-1] == {
        "event": "offline", "via": "phone", "before": "standby", "after": "offline"}

    # An unknown phone is told so, and nobody's state changes.
    phone, rtp = await call(stack, "08099998888", ONLINE)
    assert_announced_and_rejected(stack, phone, rtp, "presence-not-registered")
    assert await presence(stack, advisor_id) == (desk, events)
    total = await stack.fetch("callback", "SELECT count(*) AS n FROM advisor_events")
    assert total[0]["n"] == 2
