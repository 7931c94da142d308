"""The callback server killed (``SIGKILL``) in the middle of a consultation: the call
survives the death, and the restart ends it cleanly, once.

On the real stack (both sites, both Asterisks, SIPp phones, PostgreSQL): the customer
(carrier A's phone) keys an advisor's code; the advisor (a SIP phone at the edge) answers
and they talk; the callback server is killed. The bridge lives on in Asterisk (the
customer's audio keeps reaching the advisor while no server runs). At its restart the
server finds the consultation its predecessor kept in ``consult_live``
(:mod:`callback_server.consult_live`) and ends it: a leg still up is hung up, and

* exactly one consultation record, with the talk seconds the phones saw and the end
  reason of what happened (``failed``: both still talking, ended by the restart;
  ``advisor_hangup`` at the advisor's BYE if they hung up while the server was dead);
* billed once: one settlement of the prepaid reservation, for the record's talk seconds;
* the advisor not left ``talking``: their consultation ended (after-call work);
* the call-back finished ``completed`` (its rescued job rings nobody again).

The same for a customer on hold at the death (the hold music on their channel, out of the
bridge: hung up by the restart, the record held to the end) and for a web click-to-call
(both parties dialled by the server, kept from the customer's answer). A web click-to-call
rung advisor first, killed while the advisor waits for the customer being dialled, is
kept from the advisor's answer: the restart hangs up both, records no talk, bills
nothing, ends the advisor's consultation and fails the job. A consult transfer in
progress at the death (the second advisor ringing, or answered with the customer on
hold) is kept with its second party: the restart hangs their leg up too, records the
transfer (``failed`` / ``cancelled``) and their ring, and frees the second advisor. An
advisor still ringing at the death (for a customer who keyed their code, or a web
click-to-call's customer rung first) is kept from the offer: the restart sends their
phone a CANCEL, hangs the customer up, puts the advisor back in standby with no miss,
records no talk and bills nothing, and nobody is called again.

Takes the stack lock (``/tmp/cbgw-stack.lock``) for its whole run, through ``Stack``.
About 5 minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from demo.stack import Stack
from tests.e2e.test_consult_calls import (
    ACME,
    BY_CODE,
    CONFIRM,
    SIP_ADVISOR,
    Admin,
    admin,
    events,
    invites_to,
    pstn,
    record,
    ring_outcomes,
    wait_for,
)
from tests.e2e.test_consult_click_to_call import click_to_call
from tests.e2e.test_consult_operator import post
from tests.harness.rtp import RtpCapture
from tests.harness.sipp import OPERATOR_PORT, SipMessage, SippRole, media_port_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
__all__ = ["admin"]

OUTAGE_S = 6.0                     # the server stays dead this long (both still talking)


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with Stack(tmp_path_factory.mktemp("consult-crash"), merchants=(ACME,),
                     db_prefix="cbgw_consult_crash", log_level="DEBUG",
                     extra_env={"CALLBACK__CALLBACK__LEASE_S": "5",   # rescues come soon
                                "CALLBACK__CALLBACK__HEARTBEAT_S": "2",
                                "CALLBACK__CALLBACK__SWEEP_S": "1"}) as running:
        yield running


@pytest.fixture
async def settings(admin: Admin) -> None:
    await admin.call("PUT", "/v1/advisor-settings", {"ring_timeout_s": 20, "lines": 10,
                                                      "misses_before_break": 3,
                                                      "click_to_call_first": "customer"})
    await admin.call("PUT", "/v1/billing/policy", {"unit_s": 1, "by": "e2e"})


def _answered(m: SipMessage) -> bool:
    return m.direction == "sent" and m.status == 200 and m.cseq_method == "INVITE"


def _byes(role: SippRole) -> list[SipMessage]:
    return [m for m in role.dialog_messages() if m.method == "BYE"]


async def _talking(stack: Stack, roles: dict[str, SippRole], customer: str) -> SipMessage:
    """The customer's call until the advisor answered and the runner kept it as live."""
    await asyncio.to_thread(stack.customer_call(customer).wait, 40)
    ok = await wait_for(roles["operator"], _answered, 60)
    await stack.wait_for_row("callback", "SELECT 1 FROM consult_live")
    await asyncio.sleep(2)                     # talking a while
    return ok


@contextlib.asynccontextmanager
async def _consultation(stack: Stack, admin: Admin, name: str, code: str, customer: str
                        ) -> AsyncIterator[tuple[int, SippRole, SippRole, SipMessage]]:
    """A funded customer keys advisor ``name``'s ``code`` (a SIP phone that answers and
    never hangs up): the advisor, their phone, the customer's and the advisor's 200 OK,
    once the runner kept the consultation as live."""
    chosen = await admin.advisor(name, code, SIP_ADVISOR)
    await admin.fund(customer)
    async with stack.carriers(a="uas_answer_dtmf_long.xml", operator="uas_answer_forever.xml",
                              digits=CONFIRM + BY_CODE + code,
                              pcap_options={"tail_ms": 60_000}) as roles:
        ok = await _talking(stack, roles, customer)
        yield chosen, roles["operator"], roles["carrier-a"], ok


async def _ended_once(stack: Stack, number: str, advisor_id: int) -> dict[str, Any]:
    """What must hold whatever ended the consultation: one record, one settlement of
    its talk, the advisor out of ``talking``, nothing kept live, the call-back done."""
    made = await record(stack, number)
    settled = await stack.wait_for_row(
        "callback", "SELECT s.* FROM billing_settlements s JOIN billing_reservations r "
        "ON r.id = s.reservation_id WHERE r.consultation_id = $1", made["consultation_id"])
    request = await stack.wait_for_row(
        "callback", "SELECT status, reason FROM callback_requests WHERE callback_id = $1 "
        "AND status IN ('completed', 'failed')", made["callback_id"], timeout_s=60)
    assert (request["status"], request["reason"]) == ("completed", "answered"), dict(request)
    assert len(await stack.fetch("callback", "SELECT 1 FROM consultations WHERE "
                                 "customer_number = $1", number)) == 1
    assert len(await stack.fetch(
        "callback", "SELECT 1 FROM billing_settlements s JOIN billing_reservations r ON "
        "r.id = s.reservation_id WHERE r.consultation_id = $1",
        made["consultation_id"])) == 1
    assert settled["talk_s"] == made["talk_s"]
    assert await stack.fetch("callback", "SELECT 1 FROM consult_live") == []
    happened = [e for e, _ in await events(stack, advisor_id)]
    assert happened[:4] == ["online", "offered", "answered", "ended"], happened
    assert set(happened[4:]) <= {"wrap_up_elapsed"}, happened     # after-call work over
    presence = await stack.fetch("callback", "SELECT desk, sessions FROM advisor_presence "
                                 "WHERE advisor_id = $1", advisor_id)
    assert presence[0]["sessions"] == [] and presence[0]["desk"] in ("wrap_up", "standby")
    return made


async def _restarted_hangs_up_both(stack: Stack, advisor: SippRole, phone: SippRole,
                                   outage_s: float = 3.0) -> tuple[SipMessage, float]:
    """Kill the server, keep it dead ``outage_s`` (nobody gets a BYE), restart it: its
    reconciler hangs up both phones, not before. The advisor's BYE and the kill's time."""
    stack.processes["callback"].send_signal(signal.SIGKILL)
    killed = time.time()
    await asyncio.sleep(outage_s)
    assert _byes(advisor) == [] and _byes(phone) == [], "the call survived the kill"
    await stack.restart_server("callback", kill=True)
    advisor_bye = await wait_for(advisor, lambda m: m.method == "BYE"
                                 and m.direction == "received", 30)
    customer_bye = await wait_for(phone, lambda m: m.method == "BYE"
                                  and m.direction == "received", 30)
    for bye in (advisor_bye, customer_bye):
        assert bye.at.timestamp() >= killed + outage_s, (bye.at, killed)
    return advisor_bye, killed


async def test_both_talking_through_the_death_are_ended_by_the_restart_and_billed_once(
        stack: Stack, admin: Admin, settings: None) -> None:
    """Killed while they talk, dead 6 s: the customer's audio still reaches the advisor
    meanwhile (nobody gets a BYE); the restart hangs up both; the record ends ``failed``
    with the talk from the advisor's answer to their BYE."""
    async with _consultation(stack, admin, "暁", "3131", "07011110031") as (
            chosen, advisor, phone, ok):
        wall_minus_monotonic = time.time() - time.monotonic()
        with RtpCapture("127.0.0.1", media_port_for(OPERATOR_PORT)) as to_advisor:
            advisor_bye, killed = await _restarted_hangs_up_both(stack, advisor, phone,
                                                                 OUTAGE_S)
        made = await _ended_once(stack, "+817011110031", chosen)
        rung = invites_to(advisor, "operator")
        customer_invites = [m for m in phone.invites_received()
                            if m.ruri_user == "817011110031"]
    # the bridge outlived the server: the customer's PCMU reached the advisor meanwhile
    start, end = killed - wall_minus_monotonic, killed - wall_minus_monotonic + OUTAGE_S
    heard = [t for t, pt in to_advisor.packets if pt == 0 and start <= t <= end]
    assert len(heard) >= 0.8 * OUTAGE_S / 0.02, len(heard)
    talked = (advisor_bye.at - ok.at).total_seconds()
    assert made["end_reason"] == "failed" and made["advisor_id"] == chosen
    assert abs(made["talk_s"] - talked) <= 2, (made["talk_s"], talked)
    assert len(rung) == 1 and len(customer_invites) == 1


async def test_an_advisor_hanging_up_while_the_server_is_dead_ends_it_at_their_bye(
        stack: Stack, admin: Admin, settings: None) -> None:
    """Killed while they talk; the advisor hangs up while no server runs (their BYE about
    20 s after answering); the restart hangs up the customer, left alone in the bridge:
    the record ends ``advisor_hangup`` at the advisor's BYE, with the talk until then."""
    chosen = await admin.advisor("澪", "3232", SIP_ADVISOR)
    customer = "07011110032"
    await admin.fund(customer)
    async with stack.carriers(a="uas_answer_dtmf_long.xml", operator="uas_answer_dtmf_bye.xml",
                              digits=CONFIRM + BY_CODE + "3232") as roles:
        advisor, phone = roles["operator"], roles["carrier-a"]
        ok = await _talking(stack, roles, customer)
        stack.processes["callback"].send_signal(signal.SIGKILL)
        killed = time.time()
        advisor_bye = await wait_for(advisor, lambda m: m.method == "BYE"
                                     and m.direction == "sent", 60)
        await asyncio.sleep(2)
        assert _byes(phone) == [], "the customer stays, alone in the bridge"
        restarting = time.time()
        await stack.restart_server("callback", kill=True)
        customer_bye = await wait_for(phone, lambda m: m.method == "BYE"
                                      and m.direction == "received", 30)
        made = await _ended_once(stack, "+817011110032", chosen)
    assert advisor_bye.at.timestamp() > killed
    assert customer_bye.at.timestamp() >= restarting          # by the restart
    talked = (advisor_bye.at - ok.at).total_seconds()
    assert made["end_reason"] == "advisor_hangup" and made["advisor_id"] == chosen
    assert abs(made["talk_s"] - talked) <= 2, (made["talk_s"], talked)


async def test_a_customer_on_hold_at_the_death_is_hung_up_and_recorded_held_to_the_end(
        stack: Stack, admin: Admin, settings: None) -> None:
    """Put on hold (the hold music on the customer's channel, the advisor alone in the
    bridge), then killed: the restart hangs up both; the record ends ``failed``, its hold
    open to the end, the talk from the answer to the hang-up (the hold included)."""
    async with _consultation(stack, admin, "朔", "3333", "07011110033") as (
            chosen, advisor, phone, ok):
        live = await stack.wait_for_row("callback", "SELECT consultation_id FROM consult_live")
        status, body = await post(stack, admin,
                                  f"/v1/consultations/{live['consultation_id']}/hold")
        assert status == 202, body
        await stack.wait_for_row("callback", "SELECT 1 FROM consult_live WHERE "
                                 "jsonb_array_length(snapshot->'holds') = 1")
        advisor_bye, _ = await _restarted_hangs_up_both(stack, advisor, phone)
        made = await _ended_once(stack, "+817011110033", chosen)
    assert made["end_reason"] == "failed" and made["advisor_id"] == chosen
    assert [h["ended_at"] for h in made["holds"]] == [None], made["holds"]
    talked = (advisor_bye.at - ok.at).total_seconds()
    assert abs(made["talk_s"] - talked) <= 2, (made["talk_s"], talked)


async def test_a_click_to_call_talking_at_the_death_is_ended_by_the_restart(
        stack: Stack, admin: Admin, settings: None) -> None:
    """A web click-to-call (the customer rung first, then the advisor), killed while they
    talk: the restart hangs up both, one ``click_to_call`` record ending ``failed``, billed
    once, the advisor freed, the job ``completed``."""
    chosen = await admin.advisor("湊", "3434", SIP_ADVISOR)
    customer = "+817011110034"
    await admin.fund("0" + customer[3:])
    async with stack.carriers(a="uas_answer_forever.xml",
                              operator="uas_answer_forever.xml") as roles:
        advisor, phone = roles["operator"], roles["carrier-a"]
        queued = await click_to_call(admin, customer, chosen)
        ok = await wait_for(advisor, _answered, 60)
        await stack.wait_for_row("callback", "SELECT 1 FROM consult_live")
        await asyncio.sleep(2)                     # talking a while
        advisor_bye, _ = await _restarted_hangs_up_both(stack, advisor, phone)
        made = await _ended_once(stack, customer, chosen)
    assert made["consultation_id"] == queued["consultation_id"]
    assert made["method"] == "click_to_call" and made["end_reason"] == "failed"
    talked = (advisor_bye.at - ok.at).total_seconds()
    assert abs(made["talk_s"] - talked) <= 2, (made["talk_s"], talked)
    assert len(invites_to(advisor, "operator")) == 1


async def test_an_advisor_first_click_to_call_waiting_for_the_customer_is_ended_by_the_restart(
        stack: Stack, admin: Admin, settings: None) -> None:
    """A web click-to-call rung advisor first: the advisor answers and waits while the
    customer's phone rings (never answered); killed, dead 3 s (the advisor gets no BYE,
    the customer's phone no CANCEL), restarted: the restart hangs up both; one
    ``click_to_call`` record with no answer and no talk, ending ``failed``; nothing
    billed; the advisor's consultation ended (after-call work, not left talking); nothing
    kept; the job failed, nobody rung again."""
    await admin.call("PUT", "/v1/advisor-settings", {"ring_timeout_s": 60,
                                                      "click_to_call_first": "advisor"})
    chosen = await admin.advisor("凪", "3535", SIP_ADVISOR)
    customer = "+817011110035"
    await admin.fund("0" + customer[3:], 10_000)
    async with stack.carriers(a="uas_ring_no_answer.xml",
                              operator="uas_answer_forever.xml") as roles:
        advisor, phone = roles["operator"], roles["carrier-a"]
        queued = await click_to_call(admin, customer, chosen)
        await wait_for(advisor, _answered, 60)
        rung = await wait_for(phone, lambda m: m.method == "INVITE", 60)
        await stack.wait_for_row("callback", "SELECT 1 FROM consult_live")
        stack.processes["callback"].send_signal(signal.SIGKILL)
        killed = time.time()
        await asyncio.sleep(3.0)
        assert _byes(advisor) == [], "the advisor waits on through the kill"
        assert not [m for m in phone.dialog_messages() if m.method == "CANCEL"]
        await stack.restart_server("callback", kill=True)
        advisor_bye = await wait_for(advisor, lambda m: m.method == "BYE"
                                     and m.direction == "received", 30)
        cancel = await wait_for(phone, lambda m: m.method == "CANCEL"
                                and m.call_id == rung.call_id, 30)
        for ended in (advisor_bye, cancel):
            assert ended.at.timestamp() >= killed + 3.0, (ended.at, killed)
        made = await record(stack, customer)
        job = await stack.wait_for_row(
            "callback", "SELECT status, reason FROM callback_requests WHERE callback_id = $1 "
            "AND status IN ('completed', 'failed')", queued["callback_id"], timeout_s=60)
        await asyncio.sleep(3)                      # nobody is rung again
        assert len(invites_to(advisor, "operator")) == 1
        assert len(phone.invites_received()) == 1
    assert made["consultation_id"] == queued["consultation_id"]
    assert made["method"] == "click_to_call" and made["advisor_id"] == chosen
    assert made["answered_at"] is None and made["talk_s"] == 0
    assert made["end_reason"] == "failed"
    assert ring_outcomes(made) == [(chosen, "answered")]
    assert job["status"] == "failed", dict(job)
    # nothing billed: the reservation released whole, no charge
    settled = await stack.fetch(
        "callback", "SELECT s.total_yen, s.talk_s FROM billing_settlements s "
        "JOIN billing_reservations r ON r.id = s.reservation_id "
        "WHERE r.consultation_id = $1", queued["consultation_id"])
    assert [(r["total_yen"], r["talk_s"]) for r in settled] in ([], [(0, 0)])
    assert await stack.fetch(
        "callback", "SELECT 1 FROM billing_reservations r LEFT JOIN billing_settlements s "
        "ON s.reservation_id = r.id WHERE r.consultation_id = $1 AND s.reservation_id IS NULL",
        queued["consultation_id"]) == [], "a reservation left live"
    assert await stack.fetch(
        "callback", "SELECT t.amount_yen FROM billing_transactions t "
        "JOIN billing_accounts a ON a.id = t.account_id "
        "WHERE a.account = $1 AND t.kind = 'charge'", customer) == []
    assert await stack.fetch("callback", "SELECT 1 FROM consult_live") == []
    happened = [e for e, _ in await events(stack, chosen)]
    assert happened[:4] == ["online", "offered", "answered", "ended"], happened
    assert set(happened[4:]) <= {"wrap_up_elapsed"}, happened
    presence = await stack.fetch("callback", "SELECT desk, sessions FROM advisor_presence "
                                 "WHERE advisor_id = $1", chosen)
    assert presence[0]["sessions"] == [] and presence[0]["desk"] in ("wrap_up", "standby")


@pytest.mark.parametrize("second_answers", [False, True], ids=["ringing", "answered"])
async def test_a_consult_transfer_in_progress_at_the_death_is_ended_by_the_restart(
        stack: Stack, admin: Admin, settings: None, second_answers: bool) -> None:
    """The customer talks with a PSTN advisor; the operator transfers the consultation
    to a second advisor (a SIP phone, the customer on hold) who rings, or has answered;
    the server is killed, dead 3 s (nobody hung up), restarted: the restart hangs up
    all three legs; the record has the transfer (``failed`` while ringing, ``cancelled``
    once answered: never completed) and the second advisor's ring (``withdrawn``: no
    miss; or ``answered``), every leg in its costs; the second advisor freed (standby
    again; after-call work once answered); billed once; the job completed."""
    await admin.call("PUT", "/v1/advisor-settings", {"ring_timeout_s": 60})
    n = 2 if second_answers else 1
    first = await admin.advisor(f"颯{n}", f"717{n}", pstn(f"+8131234007{n}"))
    second = await admin.advisor(f"澪{n}", f"727{n}", SIP_ADVISOR)
    customer = f"0701111007{n}"
    await admin.fund(customer)
    async with stack.carriers(a="uas_answer_dtmf_long.xml", digits=CONFIRM + BY_CODE
                              + f"717{n}", operator="uas_answer_forever.xml" if second_answers
                              else "uas_ring_no_answer.xml",
                              pcap_options={"tail_ms": 60_000}) as roles:
        phones, desk = roles["carrier-a"], roles["operator"]
        await asyncio.to_thread(stack.customer_call(customer).wait, 40)
        first_invite = await wait_for(phones, lambda m: m.method == "INVITE"
                                      and m.ruri_user == f"8131234007{n}", 60)
        customer_invite = await wait_for(phones, lambda m: m.method == "INVITE"
                                         and m.ruri_user == f"81{customer[1:]}", 10)
        live = await stack.wait_for_row("callback", "SELECT consultation_id FROM consult_live")
        await asyncio.sleep(2)                                        # they talk
        status, body = await post(stack, admin, f"/v1/consultations/"
                                  f"{live['consultation_id']}/transfer", {"advisor_id": second})
        assert status == 202, body
        rung = await wait_for(desk, lambda m: m.method == "INVITE", 30)
        outcome = "cancelled" if second_answers else "failed"
        await stack.wait_for_row(
            "callback", "SELECT 1 FROM consult_live WHERE second_party IS NOT NULL AND "
            "snapshot->'transfers'->-1->>'outcome' = $1", outcome)
        await asyncio.sleep(1)
        stack.processes["callback"].send_signal(signal.SIGKILL)
        killed = time.time()
        await asyncio.sleep(3.0)
        assert _byes(phones) == [] and _byes(desk) == [], "the call survived the kill"
        assert not [m for m in desk.dialog_messages() if m.method == "CANCEL"]
        await stack.restart_server("callback", kill=True)
        if second_answers:
            gone = await wait_for(desk, lambda m: m.method == "BYE"
                                  and m.direction == "received", 30)
        else:
            gone = await wait_for(desk, lambda m: m.method == "CANCEL"
                                  and m.call_id == rung.call_id, 30)
        for invite in (customer_invite, first_invite):
            await wait_for(phones, lambda m, i=invite: m.method == "BYE"
                           and m.direction == "received" and m.call_id == i.call_id, 30)
        assert gone.at.timestamp() >= killed + 3.0, (gone.at, killed)
        made = await _ended_once(stack, f"+81{customer[1:]}", first)
    assert made["end_reason"] == "failed" and made["advisor_id"] == first
    (transfer,) = made["transfers"]
    assert (transfer["to_advisor_id"], transfer["to_number"], transfer["outcome"]) == (
        second, None, outcome)
    assert ring_outcomes(made) == [(first, "answered"),
                                   (second, "answered" if second_answers else "withdrawn")]
    assert all(r["ended_at"] is not None for r in made["rings"])
    carriers = [c["carrier_id"] for c in made["leg_costs"]       # the second's last
                if c["role"] != "customer"]        # (the customer's comes with its CDR)
    assert carriers[-1] == "edge-trunk" and "carrier-a" in carriers, carriers
    happened = [e for e, _ in await events(stack, second)]
    if second_answers:
        assert happened[:4] == ["online", "offered", "answered", "ended"], happened
        assert set(happened[4:]) <= {"wrap_up_elapsed"}, happened
    else:
        assert happened == ["online", "offered", "ended"], happened
    presence = await stack.fetch("callback", "SELECT desk, sessions, misses FROM "
                                 "advisor_presence WHERE advisor_id = $1", second)
    assert presence[0]["sessions"] == [] and presence[0]["misses"] == 0
    assert presence[0]["desk"] in (("wrap_up", "standby") if second_answers else ("standby",))


@pytest.mark.parametrize("way", ["code", "click"])
async def test_an_advisor_ringing_at_the_death_is_withdrawn_by_the_restart(
        stack: Stack, admin: Admin, settings: None, way: str) -> None:
    """The advisor's phone rings (never answered) for a customer who keyed their code in
    the IVR, or for a web click-to-call whose customer was rung first and answered; the
    server is killed, dead 3 s (the advisor's phone gets no CANCEL, the customer no
    BYE), restarted: the restart ends the ring (a CANCEL to the advisor's phone) and
    hangs the customer up; the advisor is back in standby within 15 s of the restart with
    no miss counted; one record with no answer and no talk, ending ``failed``, their ring
    ``withdrawn``; nothing billed (the reservation released); nothing kept; the customer
    is not called again."""
    await admin.call("PUT", "/v1/advisor-settings", {"ring_timeout_s": 60})
    n = 1 if way == "code" else 2
    chosen = await admin.advisor(f"灯{n}", f"373{n}", SIP_ADVISOR)
    customer = f"+81701111037{n}"
    await admin.fund("0" + customer[3:], 10_000)
    phone_script = "uas_answer_dtmf_long.xml" if way == "code" else "uas_answer_forever.xml"
    digits = CONFIRM + BY_CODE + f"373{n}" if way == "code" else None
    async with stack.carriers(a=phone_script, operator="uas_ring_no_answer.xml",
                              digits=digits) as roles:
        advisor, phone = roles["operator"], roles["carrier-a"]
        if way == "code":
            await asyncio.to_thread(stack.customer_call("0" + customer[3:]).wait, 40)
        else:
            queued = await click_to_call(admin, customer, chosen)
        customer_invite = await wait_for(phone, lambda m: m.method == "INVITE"
                                         and m.ruri_user == customer[1:], 60)
        rung = await wait_for(advisor, lambda m: m.method == "INVITE", 60)
        await stack.wait_for_row("callback", "SELECT 1 FROM consult_live WHERE "
                                 "bridge_id IS NULL AND advisor_id = $1", chosen)
        await asyncio.sleep(1)
        stack.processes["callback"].send_signal(signal.SIGKILL)
        killed = time.time()
        await asyncio.sleep(3.0)
        assert not [m for m in advisor.dialog_messages() if m.method == "CANCEL"]
        assert _byes(phone) == [], "the customer waits on through the kill"
        await stack.restart_server("callback", kill=True)
        restarted = time.time()
        cancel = await wait_for(advisor, lambda m: m.method == "CANCEL"
                                and m.call_id == rung.call_id, 30)
        customer_bye = await wait_for(phone, lambda m: m.method == "BYE"
                                      and m.direction == "received"
                                      and m.call_id == customer_invite.call_id, 30)
        for ended in (cancel, customer_bye):
            assert ended.at.timestamp() >= killed + 3.0, (ended.at, killed)
        await stack.wait_for_row(
            "callback", "SELECT 1 FROM advisor_presence WHERE advisor_id = $1 AND "
            "desk = 'standby' AND sessions = '[]'::jsonb", chosen, timeout_s=15)
        standby_after_s = time.time() - restarted
        made = await record(stack, customer)
        job = await stack.wait_for_row(
            "callback", "SELECT status, reason FROM callback_requests WHERE callback_id = $1 "
            "AND status IN ('completed', 'failed')", made["callback_id"], timeout_s=60)
        await asyncio.sleep(5)                      # nobody is rung again
        assert len(invites_to(advisor, "operator")) == 1
        assert [m for m in phone.invites_received() if m.ruri_user == customer[1:]] == [
            customer_invite]
    assert standby_after_s <= 15, standby_after_s
    if way == "click":
        assert made["consultation_id"] == queued["consultation_id"]
    assert made["method"] == ("code" if way == "code" else "click_to_call")
    assert made["advisor_id"] == chosen and made["answered_at"] is None
    assert made["talk_s"] == 0 and made["end_reason"] == "failed"
    assert ring_outcomes(made) == [(chosen, "withdrawn")]
    assert made["rings"][0]["ended_at"] is not None
    assert len(await stack.fetch("callback", "SELECT 1 FROM consultations WHERE "
                                 "customer_number = $1", customer)) == 1
    assert job["status"] in ("completed", "failed"), dict(job)
    # nothing billed: the reservation released whole, no charge
    settled = await stack.fetch(
        "callback", "SELECT s.total_yen, s.talk_s FROM billing_settlements s "
        "JOIN billing_reservations r ON r.id = s.reservation_id "
        "WHERE r.consultation_id = $1", made["consultation_id"])
    assert [(r["total_yen"], r["talk_s"]) for r in settled] in ([], [(0, 0)])
    assert await stack.fetch(
        "callback", "SELECT 1 FROM billing_reservations r LEFT JOIN billing_settlements s "
        "ON s.reservation_id = r.id WHERE r.consultation_id = $1 AND s.reservation_id IS NULL",
        made["consultation_id"]) == [], "a reservation left live"
    assert await stack.fetch(
        "callback", "SELECT t.amount_yen FROM billing_transactions t "
        "JOIN billing_accounts a ON a.id = t.account_id "
        "WHERE a.account = $1 AND t.kind = 'charge'", customer) == []
    assert await stack.fetch("callback", "SELECT 1 FROM consult_live") == []
    assert [e for e, _ in await events(stack, chosen)] == ["online", "offered", "ended"]
    presence = await stack.fetch("callback", "SELECT misses FROM advisor_presence "
                                 "WHERE advisor_id = $1", chosen)
    assert presence[0]["misses"] == 0
