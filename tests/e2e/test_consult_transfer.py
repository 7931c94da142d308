"""A consult transfer end to end: real Asterisks, PostgreSQL, the sites' servers and
SIPp. Carrier A is the customer's phone and the first advisor's (a PSTN number: carrier
B refuses, carrier A answers); the second advisor is the edge's ``operator`` phone (a
SIP contact). The operator's requests go over the callback site's API and reach the
process running the call through PostgreSQL NOTIFY. Asserted: SIP facts from SIPp's
message logs, the RTP reaching the second advisor once the first one left, the
advisors' presence events and the consultation record.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from demo.stack import Stack
from tests.e2e.test_consult_calls import (
    BY_CODE,
    CONFIRM,
    SIP_ADVISOR,
    Admin,
    admin,
    events,
    pstn,
    record,
    ring_outcomes,
    stack,
    wait_for,
)
from tests.e2e.test_consult_operator import post
from tests.harness.rtp import RtpCapture
from tests.harness.sipp import OPERATOR_PORT, media_port_for

pytestmark = pytest.mark.e2e
__all__ = ["admin", "stack"]      # the fixtures, as the consultation tests set them up


async def test_consult_transfer_ends_with_the_customer_talking_to_the_second_advisor(
        stack: Stack, admin: Admin) -> None:
    """The customer talks with the advisor of code 6161 (PSTN); the operator transfers
    the consultation to a second advisor (SIP): the customer is held, the second
    advisor's phone is rung and answers, then the transfer is completed: the first
    advisor gets a BYE, the customer's audio reaches the second advisor, and the record
    has the completed transfer with the second advisor as the one the customer ended
    with."""
    await admin.call("PUT", "/v1/advisor-settings", {"ring_timeout_s": 20, "lines": 10,
                                                      "misses_before_break": 3})
    first = await admin.advisor("颯", "6161", pstn("+81312340061"))
    second = await admin.advisor("澪", "6262", SIP_ADVISOR)
    customer = "07011110061"
    await admin.fund(customer)
    # the customer's phone keeps sending PCMU (silence) for a minute after its keys
    async with stack.carriers(digits=CONFIRM + BY_CODE + "6161",
                              pcap_options={"tail_ms": 60_000}) as roles:
        await asyncio.to_thread(stack.customer_call(customer).wait, 40)
        phones, operator = roles["carrier-a"], roles["operator"]
        first_invite = await wait_for(phones, lambda m: m.method == "INVITE"
                                      and m.ruri_user == "81312340061", 60)
        answered = await stack.wait_for_row(
            "callback", "SELECT consultation_id FROM advisor_events WHERE advisor_id = $1"
            " AND event = 'answered'", first)
        consultation_id = answered["consultation_id"]
        await asyncio.sleep(2)                                        # they talk
        status, body = await post(stack, admin, f"/v1/consultations/{consultation_id}"
                                                "/transfer", {"advisor_id": second})
        assert status == 202, body
        invite = await wait_for(operator, lambda m: m.method == "INVITE", 30)
        await wait_for(operator, lambda m: m.direction == "sent" and m.status == 200
                       and m.cseq_method == "INVITE", 20)
        await asyncio.sleep(2)                                        # the advisors talk
        assert not [m for m in phones.messages() if m.method == "BYE"], "nobody left yet"
        wall_minus_monotonic = time.time() - time.monotonic()
        with RtpCapture("127.0.0.1", media_port_for(OPERATOR_PORT)) as to_second:
            status, body = await post(stack, admin, f"/v1/consultations/{consultation_id}"
                                                    "/transfer/complete")
            assert status == 202, body
            first_bye = await wait_for(phones, lambda m: m.method == "BYE"
                                       and m.direction == "received"
                                       and m.call_id == first_invite.call_id, 20)
            await asyncio.sleep(5)                                    # customer and second
        customer_leg = await stack.wait_for_row(
            "callback", "SELECT channel_id FROM callback_attempts WHERE leg = 'customer' "
            "AND answered AND endpoint LIKE '%7011110061%'")
        async with stack.callback_site.client() as ari:             # the customer hangs up
            await ari.hangup(customer_leg["channel_id"])
        second_bye = await wait_for(operator, lambda m: m.method == "BYE"
                                    and m.direction == "received", 20)
        made = await record(stack, "+817011110061")
    assert invite.ruri_user == "operator"
    # after the first advisor left, what reaches the second advisor is the customer's
    # audio (PCMU, a packet per 20 ms), bridged
    start = first_bye.at.timestamp() - wall_minus_monotonic + 0.5
    heard = [t for t, pt in to_second.packets if pt == 0 and start <= t <= start + 4]
    assert len(heard) >= 0.8 * 4 / 0.02, len(heard)
    assert second_bye.at > first_bye.at
    assert made["end_reason"] == "customer_hangup" and made["advisor_id"] == second
    (transfer,) = made["transfers"]
    assert transfer["to_advisor_id"] == second and transfer["to_number"] is None
    assert transfer["outcome"] == "completed"
    assert ring_outcomes(made) == [(first, "answered"), (second, "answered")]
    (hold,) = made["holds"]
    assert hold["ended_at"] is not None
    assert [e for e, _ in await events(stack, first)] == [
        "online", "offered", "answered", "ended"]
    assert [e for e, _ in await events(stack, second)] == [
        "online", "offered", "answered", "ended"]
    carriers = [c["carrier_id"] for c in made["leg_costs"]]
    assert "edge-trunk" in carriers and "carrier-a" in carriers, carriers
