"""Web click-to-call end to end: ``POST /v1/consultations`` on the callback site, which
dials both parties and bridges them.

Real Asterisks, PostgreSQL, servers and SIPp: carrier A is the customer's phone (carrier
B, the cheapest for mobiles, refuses with 503 first), the edge's ``operator`` phone is an
advisor with a SIP contact (reached over the edge trunk). The merchant rings the customer
first, or (one test) the advisor. Asserted: SIP facts from SIPp's message logs (each BYE
matched to its dialog by Call-ID), RTP to each phone, the consultation record and the job
in the callback site's database, and that nothing is billed when the advisor does not
answer.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from demo.stack import MerchantOptions, Stack
from tests.e2e.test_consult_calls import (
    SIP_ADVISOR,
    Admin,
    assert_heard_each_other,
    events,
    phones_media,
    record,
    ring_outcomes,
    wait_for,
)
from tests.harness import asterisk as ast_harness
from tests.harness.rtp import RtpCapture
from tests.harness.sipp import CARRIER_A_PORT, SipMessage, media_port_for

pytestmark = pytest.mark.e2e

ACME = MerchantOptions(pre_callback_delay_s="0", ivr_flow="consult")


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with Stack(tmp_path_factory.mktemp("click"), merchants=(ACME,),
                     db_prefix="cbgw_e2e_click", log_level="DEBUG") as running:
        yield running


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[Admin]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=stack.client_ssl())) as session:
        yield Admin(stack, session)


async def click_to_call(admin: Admin, customer: str, advisor_id: int) -> dict[str, Any]:
    """The web page's request: 202 with the consultation's id."""
    async with admin.session.post(admin.url + "/v1/consultations", json={
            "customer_number": customer, "advisor_id": advisor_id},
            headers={**admin.headers, "Idempotency-Key": str(uuid.uuid4())}) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 202, body
        return body


def received_bye(invite: SipMessage) -> Any:
    """The BYE the phone that answered ``invite`` received in that dialog."""
    return lambda m: m.method == "BYE" and m.direction == "received" \
        and m.call_id == invite.call_id


async def test_customer_first_both_answer_talk_both_ways_and_the_record_says_click_to_call(
        stack: Stack, admin: Admin) -> None:
    """The customer's phone rings first (carrier B refuses, carrier A answers), hears the
    connecting prompt while the advisor's SIP phone rings; the advisor answers, both
    hear each other, the advisor hangs up after 20 s and the customer is hung up."""
    await admin.call("PUT", "/v1/advisor-settings", {
        "ring_timeout_s": 20, "lines": 10, "misses_before_break": 3,
        "click_to_call_first": "customer"})
    advisor = await admin.advisor("紗良", "5101", SIP_ADVISOR)
    customer = "+817011110101"
    await admin.fund("0" + customer[3:])
    async with stack.carriers(operator="uas_answer_dtmf_bye.xml",
                              pcap_options={"tail_ms": 25_000}) as roles:
        phone, desk = roles["carrier-a"], roles["operator"]
        wall_minus_monotonic = time.time() - time.monotonic()
        with phones_media() as (to_advisor, to_customer):
            queued = await click_to_call(admin, customer, advisor)
            refused = await wait_for(roles["carrier-b"], lambda m: m.method == "INVITE", 30)
            rung = await wait_for(phone, lambda m: m.method == "INVITE", 30)
            picked_up = await wait_for(phone, lambda m: m.direction == "sent"
                                       and m.status == 200 and m.cseq_method == "INVITE", 10)
            invite = await wait_for(desk, lambda m: m.method == "INVITE", 30)
            ok = await wait_for(desk, lambda m: m.direction == "sent" and m.status == 200
                                and m.cseq_method == "INVITE", 10)
            advisor_bye = await wait_for(desk, lambda m: m.method == "BYE"
                                         and m.direction == "sent"
                                         and m.call_id == invite.call_id, 40)
        customer_bye = await wait_for(phone, received_bye(rung), 20)
    assert refused.ruri_user == rung.ruri_user == "817011110101"
    assert refused.at <= rung.at <= picked_up.at <= invite.at, "the customer is rung first"
    assert invite.ruri_user == "operator", "the advisor's contact is rung"
    assert invite.from_user is not None and invite.from_user.endswith("7011110101"), \
        "the advisor sees the customer's number"
    assert_heard_each_other(ok, wall_minus_monotonic, advisor=to_advisor,
                            customer=to_customer)
    assert customer_bye.at >= advisor_bye.at, "the advisor hung up first"
    made = await record(stack, customer)
    assert made["consultation_id"] == queued["consultation_id"]
    assert made["callback_id"] == queued["callback_id"]
    assert made["method"] == "click_to_call" and made["advisor_id"] == advisor
    assert made["end_reason"] == "advisor_hangup" and made["answered_at"] is not None
    assert ring_outcomes(made) == [(advisor, "answered")]
    on_wire = (advisor_bye.at - ok.at).total_seconds()
    assert abs(made["talk_s"] - on_wire) <= 2, (made["talk_s"], on_wire)
    job = await stack.wait_for_row(
        "callback", "SELECT status, reason FROM callback_requests WHERE callback_id = $1 "
        "AND status <> 'dialing'", queued["callback_id"])
    assert (job["status"], job["reason"]) == ("completed", "answered")
    assert [e for e, _ in await events(stack, advisor)] == [
        "online", "offered", "answered", "ended"]


async def test_advisor_first_then_the_customer_and_the_talk_counts_from_their_answer(
        stack: Stack, admin: Admin) -> None:
    """The merchant rings the advisor first: their SIP phone answers and hears the
    connecting prompt while the customer is dialled (carrier B refuses, A answers); the
    two then hear each other and the talk (the record's answer) starts at the customer's
    answer."""
    await admin.call("PUT", "/v1/advisor-settings", {
        "ring_timeout_s": 20, "lines": 10, "misses_before_break": 3,
        "click_to_call_first": "advisor"})
    advisor = await admin.advisor("律", "5103", SIP_ADVISOR)
    customer = "+817011110103"
    await admin.fund("0" + customer[3:])
    async with stack.carriers(operator="uas_answer_dtmf_bye.xml",
                              pcap_options={"tail_ms": 25_000}) as roles:
        phone, desk = roles["carrier-a"], roles["operator"]
        wall_minus_monotonic = time.time() - time.monotonic()
        with phones_media() as (to_advisor, to_customer):
            queued = await click_to_call(admin, customer, advisor)
            invite = await wait_for(desk, lambda m: m.method == "INVITE", 30)
            rung = await wait_for(phone, lambda m: m.method == "INVITE", 30)
            ok = await wait_for(phone, lambda m: m.direction == "sent"
                                and m.status == 200 and m.cseq_method == "INVITE", 10)
            advisor_bye = await wait_for(desk, lambda m: m.method == "BYE"
                                         and m.direction == "sent"
                                         and m.call_id == invite.call_id, 40)
        await wait_for(phone, received_bye(rung), 20)
    assert invite.ruri_user == "operator" and invite.at <= rung.at, "the advisor first"
    assert rung.ruri_user == "817011110103"
    start = ok.at.timestamp() - wall_minus_monotonic
    for name, rtp in (("advisor", to_advisor), ("customer", to_customer)):
        heard = [t for t, pt in rtp.packets if pt == 0 and start <= t <= start + 5]
        assert len(heard) >= 0.8 * 5 / 0.02, (name, len(heard))
    made = await record(stack, customer)
    assert made["consultation_id"] == queued["consultation_id"]
    assert made["method"] == "click_to_call" and made["end_reason"] == "advisor_hangup"
    on_wire = (advisor_bye.at - ok.at).total_seconds()
    assert abs(made["talk_s"] - on_wire) <= 2, (made["talk_s"], on_wire)


async def test_the_advisor_not_answering_the_customer_hears_why_then_bye_nothing_billed(
        stack: Stack, admin: Admin) -> None:
    """The customer answers; the advisor's phone rings out (the merchant's 5 s): the
    customer hears the no-answer prompt, for about its length, then BYE; the prepaid
    reservation is released with nothing charged."""
    await admin.call("PUT", "/v1/advisor-settings", {
        "ring_timeout_s": 5, "lines": 10, "misses_before_break": 3,
        "click_to_call_first": "customer"})
    advisor = await admin.advisor("湊斗", "5102", SIP_ADVISOR)
    customer = "+817011110102"
    funded = 10_000
    await admin.fund("0" + customer[3:], funded)
    async with stack.carriers(operator="uas_ring_no_answer.xml",
                              pcap_options={"tail_ms": 30_000}) as roles:
        phone, desk = roles["carrier-a"], roles["operator"]
        wall_minus_monotonic = time.time() - time.monotonic()
        with RtpCapture("127.0.0.1", media_port_for(CARRIER_A_PORT)) as to_customer:
            queued = await click_to_call(admin, customer, advisor)
            rung = await wait_for(phone, lambda m: m.method == "INVITE", 30)
            invite = await wait_for(desk, lambda m: m.method == "INVITE", 30)
            cancel = await wait_for(desk, lambda m: m.method == "CANCEL"
                                    and m.call_id == invite.call_id, 20)
            bye = await wait_for(phone, received_bye(rung), 40)
    prompt_s = ast_harness.prompt_seconds(stack.callback_site, "ja", "party-no-answer")
    heard_s = (bye.at - cancel.at).total_seconds()
    assert prompt_s - 0.5 <= heard_s <= prompt_s + 4, (heard_s, prompt_s)
    since = cancel.at.timestamp() - wall_minus_monotonic
    until = bye.at.timestamp() - wall_minus_monotonic
    sounding = [t for t in to_customer.sounding if since <= t <= until]
    assert sounding and sounding[-1] - sounding[0] >= 0.8 * prompt_s, (
        len(sounding), prompt_s)
    made = await record(stack, customer)
    assert made["consultation_id"] == queued["consultation_id"]
    assert made["method"] == "click_to_call" and made["answered_at"] is None
    assert made["end_reason"] == "no_advisor" and made["talk_s"] == 0
    assert ring_outcomes(made) == [(advisor, "missed")]
    job = await stack.wait_for_row(
        "callback", "SELECT status, reason FROM callback_requests WHERE callback_id = $1 "
        "AND status <> 'dialing'", queued["callback_id"])
    assert (job["status"], job["reason"]) == ("failed", "advisor_no_answer")
    # nothing billed: the reservation released whole, no charge, the balance intact
    settled = await stack.fetch(
        "callback", "SELECT s.total_yen, s.talk_s FROM billing_settlements s "
        "JOIN billing_reservations r ON r.id = s.reservation_id "
        "WHERE r.consultation_id = $1", queued["consultation_id"])
    assert [(r["total_yen"], r["talk_s"]) for r in settled] in ([], [(0, 0)])
    charges = await stack.fetch(
        "callback", "SELECT t.amount_yen FROM billing_transactions t "
        "JOIN billing_accounts a ON a.id = t.account_id "
        "WHERE a.account = $1 AND t.kind = 'charge'", customer)
    assert charges == []
