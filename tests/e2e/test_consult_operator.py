"""An operator's controls of a consultation end to end: real Asterisks, PostgreSQL, the
sites' servers and SIPp (carrier A is the customer's phone, the edge's ``operator`` phone
the advisor's). The operator's request goes over the callback site's API; the process
running the call gets it through PostgreSQL NOTIFY. Asserted: SIP facts from SIPp's
message logs, the RTP reaching the customer, and the consultation record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime

import pytest

from demo.stack import Stack
from tests.e2e.test_consult_calls import (
    BY_CODE,
    CONFIRM,
    SIP_ADVISOR,
    Admin,
    admin,
    events,
    record,
    stack,
    wait_for,
)
from tests.harness import asterisk as ast_harness
from tests.harness.rtp import RtpCapture
from tests.harness.sipp import CARRIER_A_PORT, media_port_for

pytestmark = pytest.mark.e2e
__all__ = ["admin", "stack"]      # the fixtures, as the consultation tests set them up


async def post(stack: Stack, admin: Admin, path: str, body: dict[str, object] | None = None
               ) -> tuple[int, dict[str, object]]:
    async with admin.session.post(stack.callback_url + path, headers=admin.headers,
                                  json=body) as resp:
        return resp.status, await resp.json()


@pytest.fixture
async def talking_settings(admin: Admin) -> AsyncIterator[None]:
    await admin.call("PUT", "/v1/advisor-settings", {"ring_timeout_s": 20, "lines": 10,
                                                      "misses_before_break": 3})
    yield


async def test_forced_end_plays_the_message_to_the_customer_then_hangs_up_both(
        stack: Stack, admin: Admin, talking_settings: None) -> None:
    """The customer talks with the advisor of code 5151 (a SIP phone that stays on the
    line); the operator ends the consultation over the API: the advisor gets a BYE at
    once, the customer hears the forced-end message (RTP from the site) and then gets a
    BYE; the record says forced_end."""
    chosen = await admin.advisor("朝陽", "5151", SIP_ADVISOR)
    customer = "07011110011"
    await admin.fund(customer)                     # billing admits a prepaid balance
    await admin.fund(customer)
    async with stack.carriers(digits=CONFIRM + BY_CODE + "5151") as roles:
        await asyncio.to_thread(stack.customer_call(customer).wait, 40)
        advisor, phone = roles["operator"], roles["carrier-a"]
        await wait_for(advisor, lambda m: m.direction == "sent" and m.status == 200
                       and m.cseq_method == "INVITE", 60)
        answered = await stack.wait_for_row(
            "callback", "SELECT consultation_id FROM advisor_events WHERE advisor_id = $1"
            " AND event = 'answered'", chosen)
        consultation_id = answered["consultation_id"]
        await asyncio.sleep(3)                                  # they talk
        wall_minus_monotonic = time.time() - time.monotonic()
        with RtpCapture("127.0.0.1", media_port_for(CARRIER_A_PORT)) as to_customer:
            status, body = await post(stack, admin, f"/v1/consultations/{consultation_id}/end")
            assert status == 202, body
            advisor_bye = await wait_for(advisor, lambda m: m.method == "BYE"
                                         and m.direction == "received", 20)
            customer_bye = await wait_for(phone, lambda m: m.method == "BYE"
                                          and m.direction == "received", 40)
        made = await record(stack, "+817011110011")
    farewell_s = ast_harness.prompt_seconds(stack.callback_site, "ja", "forced-end")
    heard_s = (customer_bye.at - advisor_bye.at).total_seconds()
    assert heard_s >= farewell_s - 0.3, (heard_s, farewell_s)
    assert heard_s <= farewell_s + 10, "hung up once the message finished"
    start = advisor_bye.at.timestamp() - wall_minus_monotonic
    end = customer_bye.at.timestamp() - wall_minus_monotonic
    played = [t for t, pt in to_customer.packets if pt == 0 and start <= t <= end]
    assert len(played) >= 0.8 * farewell_s / 0.02, (len(played), farewell_s)
    assert made["end_reason"] == "forced_end" and made["advisor_id"] == chosen
    assert made["method"] == "code" and made["talk_s"] >= 3
    assert [e for e, _ in await events(stack, chosen)] == [
        "online", "offered", "answered", "ended"]
    status, body = await post(stack, admin, f"/v1/consultations/{consultation_id}/end")
    assert status == 409 and body["error"] == { 
        "id": "consultation-not-running", "consultation_id": consultation_id,
        "message": f"consultation {consultation_id} is not in progress"}


async def test_hold_plays_music_to_the_customer_and_unhold_brings_back_the_advisor(
        stack: Stack, admin: Admin, talking_settings: None) -> None:
    """The advisor's phone sends no audio, so what the customer hears while bridged is
    silence; on hold they get the site's music on hold (audible PCMU), after unhold the
    silence of the bridge again. The record keeps the hold."""
    chosen = await admin.advisor("湊斗", "5252", SIP_ADVISOR)
    customer = "07011110012"
    await admin.fund(customer)                     # billing admits a prepaid balance
    async with stack.carriers(digits=CONFIRM + BY_CODE + "5252") as roles:
        await asyncio.to_thread(stack.customer_call(customer).wait, 40)
        await wait_for(roles["operator"], lambda m: m.direction == "sent" and m.status == 200
                       and m.cseq_method == "INVITE", 60)
        answered = await stack.wait_for_row(
            "callback", "SELECT consultation_id FROM advisor_events WHERE advisor_id = $1"
            " AND event = 'answered'", chosen)
        consultation_id = answered["consultation_id"]
        with RtpCapture("127.0.0.1", media_port_for(CARRIER_A_PORT)) as to_customer:
            await asyncio.sleep(3)                                  # talking
            held_at = time.monotonic()
            status, body = await post(stack, admin, f"/v1/consultations/{consultation_id}/hold")
            assert status == 202, body
            await asyncio.sleep(5)                                  # on hold
            unheld_at = time.monotonic()
            status, body = await post(stack, admin,
                                      f"/v1/consultations/{consultation_id}/unhold")
            assert status == 202, body
            await asyncio.sleep(3)                                  # talking again
            back_until = time.monotonic()
        customer_leg = await stack.wait_for_row(
            "callback", "SELECT channel_id FROM callback_attempts WHERE leg = 'customer' "
            "AND answered AND endpoint LIKE '%7011110012%'")
        async with stack.callback_site.client() as ari:             # the customer hangs up
            await ari.hangup(customer_leg["channel_id"])
        made = await record(stack, "+817011110012")

    def audible(start: float, end: float) -> int:
        return len([t for t in to_customer.sounding if start <= t <= end])

    assert audible(held_at - 3, held_at) <= 5, "the advisor sends no sound"
    on_hold = audible(held_at + 1, unheld_at)            # a second for the request to land
    assert on_hold >= 0.8 * (unheld_at - held_at - 1) / 0.02, on_hold
    assert audible(unheld_at + 1, back_until) <= 5, "back in the bridge: no music"
    assert made["end_reason"] == "customer_hangup" and made["advisor_id"] == chosen
    (hold,) = made["holds"]
    held_s = (datetime.fromisoformat(hold["ended_at"])
              - datetime.fromisoformat(hold["started_at"])).total_seconds()
    assert 3 <= held_s <= 7, held_s
