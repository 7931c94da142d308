"""Prepaid consultations end to end: real Asterisks, PostgreSQL, the sites' servers and
SIPp (carrier A is the customer's phone, the edge's ``operator`` phone the advisor's, who
stays on the line). The balance is entered over the billing API (a bank transfer), the
merchant bills by the second. Asserted: SIP facts from SIPp's message logs, the audio
reaching the customer, the consultation record and the ledger.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from billing.rating import Terms, rate, seconds_affordable
from demo.stack import Stack
from tests.e2e.test_consult_calls import (
    BY_CODE,
    CONFIRM,
    SIP_ADVISOR,
    Admin,
    admin,
    events,
    invites_to,
    record,
    stack,
    wait_for,
)
from tests.harness import asterisk as ast_harness
from tests.harness.rtp import RtpCapture
from tests.harness.sipp import CARRIER_A_PORT, SipMessage, media_port_for

pytestmark = pytest.mark.e2e
__all__ = ["admin", "stack"]      # the fixtures, as the consultation tests set them up

PRICE = 200                       # yen a minute (the advisors the tests make)
TERMS = Terms(PRICE, unit_s=1)
#: pays for 90 s of talk at 200 yen a minute by the second (300 × 60 // 200 = 90)
BALANCE_YEN = 300
ALLOWED_S = 90
#: a reservation's first slice: the warning's minute and a slice (consult_meter.SLICE_S)
FIRST_SLICE_S = 60 + 60
#: pays for 270 s, shared by two calls: 120 s each at first, then the last 30 s
SHARED_YEN = 900
SHARED_S = 270


def heard_warning(to_customer: RtpCapture, warn_at: float, warning_s: float) -> None:
    """The warning reached the customer at ``warn_at`` (monotonic): audio where there
    was none just before."""
    quiet = [t for t in to_customer.sounding if warn_at - 5 <= t <= warn_at - 1]
    warned = [t for t in to_customer.sounding if warn_at - 1 <= t <= warn_at + warning_s + 2]
    assert len(quiet) <= 10, (len(quiet), warn_at)
    assert len(warned) >= 0.6 * warning_s / 0.02, (len(warned), warning_s, warn_at)


async def test_a_small_balance_is_warned_a_minute_before_and_cut_off_when_it_runs_out(
        stack: Stack, admin: Admin) -> None:
    """The customer's balance pays for 90 s with advisor 6161: 60 s before the end the
    customer hears 「残り一分です」 while bridged; at the end the advisor's leg is hung up,
    the customer hears the cut-off message, then the gateway's BYE; the ledger charges the
    record's talk seconds (what the hold did not use is no longer held)."""
    await admin.call("PUT", "/v1/advisor-settings", {"ring_timeout_s": 20, "lines": 10,
                                                      "misses_before_break": 3})
    await admin.call("PUT", "/v1/billing/policy", {"unit_s": 1, "by": "e2e"})
    chosen = await admin.advisor("湊", "6161", SIP_ADVISOR)
    customer = "07011110021"
    await admin.fund(customer, BALANCE_YEN)
    async with stack.carriers(a="uas_answer_dtmf_long.xml", operator="uas_answer_forever.xml",
                              digits=CONFIRM + BY_CODE + "6161") as roles:
        await asyncio.to_thread(stack.customer_call(customer).wait, 40)
        advisor, phone = roles["operator"], roles["carrier-a"]
        wall_minus_monotonic = time.time() - time.monotonic()
        with RtpCapture("127.0.0.1", media_port_for(CARRIER_A_PORT)) as to_customer:
            ok = await wait_for(advisor, lambda m: m.direction == "sent" and m.status == 200
                                and m.cseq_method == "INVITE", 60)
            held = await stack.fetch("callback", "SELECT held_yen, allowed_s FROM "
                                     "billing_reservations")
            advisor_bye = await wait_for(advisor, lambda m: m.method == "BYE"
                                         and m.direction == "received", ALLOWED_S + 20)
            customer_bye = await wait_for(phone, lambda m: m.method == "BYE"
                                          and m.direction == "received", 30)
        made = await record(stack, "+817011110021")
        settled = await stack.wait_for_row(
            "callback", "SELECT * FROM billing_settlements")
        balance = await stack.fetch(
            "callback", "SELECT e.book, sum(e.amount_yen) AS yen FROM billing_entries e "
            "JOIN billing_accounts a ON a.id = e.account_id WHERE a.account = $1 "
            "GROUP BY e.book", "+817011110021")
    # reserved before the advisor rang: what 90 s cost, of the balance
    hold = rate(ALLOWED_S, TERMS).total_yen
    assert [(r["held_yen"], r["allowed_s"]) for r in held] == [(hold, ALLOWED_S)]
    # cut off when the money runs out: the advisor's BYE within 1 s of the reserved end
    # after their 200 OK, on the wire
    talked = (advisor_bye.at - ok.at).total_seconds()
    assert ALLOWED_S - 1 <= talked <= ALLOWED_S + 1, talked
    # the warning, a minute before the end, while bridged: audio where there was none
    to_mono = -wall_minus_monotonic
    warn_at = ok.at.timestamp() + to_mono + ALLOWED_S - 60
    warning_s = ast_harness.prompt_seconds(stack.callback_site, "ja", "balance-warning")
    heard_warning(to_customer, warn_at, warning_s)
    # then the cut-off message to the customer, then the gateway's BYE
    cutoff_s = ast_harness.prompt_seconds(stack.callback_site, "ja", "balance-cutoff")
    heard_s = (customer_bye.at - advisor_bye.at).total_seconds()
    assert cutoff_s - 0.3 <= heard_s <= cutoff_s + 10, (heard_s, cutoff_s)
    start = advisor_bye.at.timestamp() + to_mono
    said = [t for t in to_customer.sounding if start <= t <= customer_bye.at.timestamp() + to_mono]
    assert len(said) >= 0.6 * cutoff_s / 0.02, (len(said), cutoff_s)
    # the record and the ledger
    assert made["end_reason"] == "cut_off" and made["advisor_id"] == chosen
    assert abs(made["talk_s"] - talked) <= 2, (made["talk_s"], talked)
    charge = rate(made["talk_s"], TERMS)
    assert (settled["talk_s"], settled["total_yen"]) == (made["talk_s"], charge.total_yen)
    assert settled["released_yen"] == hold - charge.total_yen
    books = {r["book"]: r["yen"] for r in balance}
    # a hold is its reservation row, no movement (migration 0021): no held book at all
    assert books["available"] == BALANCE_YEN - charge.total_yen and "held" not in books
    assert [e for e, _ in await events(stack, chosen)] == [
        "online", "offered", "answered", "ended"]
    # the billing record reaches the edge once, with the customer's leg and its carrier
    # cost (that leg's CDR is stored after the settlement, when the customer is hung up)
    query = "SELECT record_id, legs FROM billing_records WHERE consultation_id = $1"
    billed = await stack.wait_for_row("edge", query, made["consultation_id"], timeout_s=60)
    legs = {leg["role"]: leg for leg in billed["legs"]}
    assert legs["customer"]["call_id"] == made["customer_call_id"], billed["legs"]
    assert legs["customer"]["cost"] is not None and "advisor" in legs, billed["legs"]
    assert len(await stack.fetch("edge", query, made["consultation_id"])) == 1
    assert len(await stack.fetch("callback", query, made["consultation_id"])) == 1


@pytest.mark.timeout(900)           # 150 s of talk, after the stack (and its lock)
async def test_two_calls_at_once_on_one_balance_share_it_and_are_both_cut_off(
        stack: Stack, admin: Admin) -> None:
    """Two numbers of one customer account call at once and both key advisor 8181 (two
    lines); the balance pays for 270 s. Each reservation first holds 120 s (the warning's
    minute and a 60 s slice), so both connect; at its check, 60 s in, the call answered
    first takes the last 30 s, the other gets nothing: the second is warned 60 s in and
    cut off at 120 s, the first warned at 90 s and cut off at 150 s. The balance ends at
    0 or more and below one billing unit's price beside what the cut-offs' 1 s margins
    left unbilled, nothing held."""
    await admin.call("PUT", "/v1/advisor-settings", {"ring_timeout_s": 20, "lines": 10,
                                                      "misses_before_break": 3})
    await admin.call("PUT", "/v1/billing/policy", {"unit_s": 1, "by": "e2e"})
    chosen = await admin.advisor("葵", "8181", SIP_ADVISOR)
    await admin.call("PATCH", f"/v1/advisors/{chosen}", {"max_concurrent": 2})
    numbers = ("07011110031", "07011110032")
    await admin.call("POST", "/v1/customers", {"account": "family-e2e", "name": "E2E",
                                               "numbers": list(numbers)})
    await admin.fund(numbers[0], SHARED_YEN, account="family-e2e")
    async with stack.carriers(a="uas_answer_dtmf_long.xml", operator="uas_answer_forever.xml",
                              digits=CONFIRM + BY_CODE + "8181", timeout_s=360) as roles:
        for number in numbers:            # one after the other: the calls are seconds long
            await asyncio.to_thread(stack.customer_call(number).wait, 40)
        advisor, phone = roles["operator"], roles["carrier-a"]
        wall_minus_monotonic = time.time() - time.monotonic()
        with RtpCapture("127.0.0.1", media_port_for(CARRIER_A_PORT)) as to_customer:
            oks: list[SipMessage] = []
            for _ in numbers:             # the advisor answers both, the first first
                oks.append(await wait_for(
                    advisor, lambda m: m.direction == "sent" and m.status == 200
                    and m.cseq_method == "INVITE" and m.call_id not in
                    {ok.call_id for ok in oks}, 60))
            byes = [await wait_for(advisor, lambda m, ok=ok: m.method == "BYE"
                                   and m.direction == "received" and m.call_id == ok.call_id,
                                   SHARED_S + 20) for ok in oks]
            ended: set[str | None] = set()
            for _ in numbers:             # both call-backs end with the gateway's BYE
                bye = await wait_for(phone, lambda m: m.method == "BYE" and m.direction ==
                                     "received" and m.call_id not in ended, 60)
                ended.add(bye.call_id)
        rung = invites_to(advisor, "operator")
    held = await stack.fetch(
        "callback", "SELECT r.id, r.allowed_s, coalesce((SELECT x.allowed_s FROM "
        "billing_reservation_extensions x WHERE x.reservation_id = r.id ORDER BY x.id DESC "
        "LIMIT 1), r.allowed_s) AS now_s FROM billing_reservations r JOIN billing_accounts "
        "a ON a.id = r.account_id WHERE a.account = 'family-e2e'")
    settled = [await stack.wait_for_row("callback", "SELECT * FROM billing_settlements "
                                        "WHERE reservation_id = $1", r["id"]) for r in held]
    books = {r["book"]: r["yen"] for r in await stack.fetch(
        "callback", "SELECT e.book, sum(e.amount_yen) AS yen FROM billing_entries e "
        "JOIN billing_accounts a ON a.id = e.account_id WHERE a.account = 'family-e2e' "
        "GROUP BY e.book")}
    cut = await stack.fetch("callback", "SELECT end_reason, talk_s FROM consultations "
                            "WHERE advisor_id = $1", chosen)
    # both connected, each first holding the warning's minute and a slice; one is then
    # extended to what the shared balance still pays: the rest of it beside the other's
    # slice, or a second or two more when the other, cut off a little early, was settled
    # first and released what its talk did not use
    assert len(rung) == 2 and [r["allowed_s"] for r in held] == [FIRST_SLICE_S] * 2
    short, extended = sorted(held, key=lambda r: r["now_s"])
    assert short["now_s"] == FIRST_SLICE_S
    short_charge = next(s["total_yen"] for s in settled if s["reservation_id"] == short["id"])
    assert (SHARED_S - FIRST_SLICE_S <= extended["now_s"]
            <= seconds_affordable(SHARED_YEN - short_charge, TERMS)), (extended, short_charge)
    # each cut off at its reserved end, warned a minute before it, on the wire and heard
    warning_s = ast_harness.prompt_seconds(stack.callback_site, "ja", "balance-warning")
    to_mono = -wall_minus_monotonic
    for ok, bye, allowed in zip(oks, byes, (extended["now_s"], FIRST_SLICE_S), strict=True):
        talked = (bye.at - ok.at).total_seconds()
        assert allowed - 1 <= talked <= allowed + 1, (talked, allowed)
        heard_warning(to_customer, ok.at.timestamp() + to_mono + allowed - 60, warning_s)
    assert [r["end_reason"] for r in cut] == ["cut_off", "cut_off"]
    # the ledger: each charged its record's talk, nothing held, never below zero, less
    # than one more second's price left beside what the margins released
    assert sorted(s["talk_s"] for s in settled) == sorted(r["talk_s"] for r in cut)
    for s in settled:
        assert s["total_yen"] == rate(s["talk_s"], TERMS).total_yen
    one_unit_yen = -(-PRICE * TERMS.unit_s // 60)
    released = sum(s["released_yen"] for s in settled)
    # a hold is its reservation row, no movement (migration 0021): no held book at all
    assert "held" not in books and 0 <= books["available"] < one_unit_yen + released, books
    assert books["available"] == SHARED_YEN - sum(s["total_yen"] for s in settled)


async def test_a_balance_too_low_hears_why_and_no_advisor_is_rung(
        stack: Stack, admin: Admin) -> None:
    """A customer with no balance keys advisor 7171's code: they hear the refusal (the
    IVR's failure branch follows) and the advisor gets no INVITE."""
    chosen = await admin.advisor("凛", "7171", SIP_ADVISOR)
    customer = "07011110022"
    async with stack.carriers(digits=CONFIRM + BY_CODE + "7171") as roles:
        await asyncio.to_thread(stack.customer_call(customer).wait, 40)
        with RtpCapture("127.0.0.1", media_port_for(CARRIER_A_PORT)) as to_customer:
            await wait_for(roles["carrier-a"], lambda m: m.method == "BYE", 60)
        rung = invites_to(roles["operator"], "operator")
    refusal_s = ast_harness.prompt_seconds(stack.callback_site, "ja", "balance-too-low")
    assert refusal_s > 2
    assert len(to_customer.sounding) >= 0.6 * refusal_s / 0.02
    assert rung == []
    assert [e for e, _ in await events(stack, chosen)] == ["online"]
    assert await stack.fetch("callback", "SELECT * FROM billing_reservations r JOIN "
                             "billing_accounts a ON a.id = r.account_id "
                             "WHERE a.account = '+817011110022'") == []
