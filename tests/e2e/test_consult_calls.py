"""Consultations end to end: a customer's call-back IVR puts them through to an advisor.

Real Asterisks, PostgreSQL, servers and SIPp: SIPp plays the customer (carrier A
answers the call-back and presses keys), an advisor with a SIP contact (the edge's
``operator`` phone, reached over the edge trunk) and an advisor with a PSTN number
(reached through the carriers, cheapest first: carrier B refuses with 503, carrier A
answers). The advisors are set up through the site's advisors API. Asserted: SIP facts
from SIPp's message logs and the advisors' state in the callback site's database.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from demo.stack import CALL_CENTER_TOKEN, MerchantOptions, Stack
from tests.harness import asterisk as ast_harness
from tests.harness.rtp import RtpCapture
from tests.harness.sipp import CARRIER_A_PORT, OPERATOR_PORT, SipMessage, SippRole, media_port_for

pytestmark = pytest.mark.e2e

ACME = MerchantOptions(pre_callback_delay_s="0", ivr_flow="consult")
CONFIRM = "1"
BY_CODE, ANYONE = "1", "2"          # the consult flow's menu
TOKYO = ZoneInfo("Asia/Tokyo")


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with Stack(tmp_path_factory.mktemp("consult"), merchants=(ACME,),
                     db_prefix="cbgw_e2e_consult", log_level="DEBUG") as running:
        yield running


class Admin:
    """The merchant's advisors API on the callback site."""

    def __init__(self, stack: Stack, session: aiohttp.ClientSession) -> None:
        self.url = stack.callback_url
        self.session = session
        self.headers = {"Authorization": f"Bearer {CALL_CENTER_TOKEN}"}

    async def call(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.session.request(method, self.url + path, json=body,
                                        headers=self.headers) as resp:
            data: dict[str, Any] = await resp.json()
            assert resp.status in (200, 201), (method, path, resp.status, data)
            return data

    async def advisor(self, name: str, code: str, contact: dict[str, str], *,
                      online: bool = True, name_prompt: str = "") -> int:
        made = await self.call("POST", "/v1/advisors", {
            "display_name": name, "code": code, "contact": contact,
            "price_per_minute_yen": 200, "name_prompt": name_prompt})
        advisor_id = int(made["id"])
        if online:
            await self.call("PUT", f"/v1/advisors/{advisor_id}/presence",
                            {"presence": "online"})
        return advisor_id

    async def fund(self, customer: str, yen: int = 10_000, *, account: str | None = None
                   ) -> None:
        """A bank transfer to the prepaid balance of the customer calling from
        ``customer`` (a national number; their billing account is the E.164 number), or to
        ``account`` (a customer account entered with its numbers)."""
        await self.call("POST", "/v1/billing/bank-transfers", {
            "account": account or "+81" + customer[1:], "amount_yen": yen,
            "transferred_on": datetime.now(TOKYO).date().isoformat(),
            "payer_name": "E2E", "bank_reference": f"e2e-{uuid.uuid4()}",
            "entered_by": "e2e"})

    async def list_keys(self) -> dict[int, str]:
        """Each advisor's key in an IVR list of all advisors (their place by id)."""
        async with self.session.get(self.url + "/v1/advisors", headers=self.headers) as resp:
            ids = sorted(a["id"] for a in (await resp.json())["items"])
        return {advisor_id: str(i) for i, advisor_id in enumerate(ids, start=1) if i <= 9}

    async def group(self, name: str, members: list[int]) -> None:
        async with self.session.get(self.url + "/v1/advisor-groups",
                                    headers=self.headers) as resp:
            groups = (await resp.json())["items"]
        found = next((g for g in groups if g["name"] == name), None)
        if found is None:
            await self.call("POST", "/v1/advisor-groups", {"name": name, "members": members})
        else:
            await self.call("PATCH", f"/v1/advisor-groups/{found['id']}", {"members": members})


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[Admin]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=stack.client_ssl())) as session:
        yield Admin(stack, session)


SIP_ADVISOR = {"kind": "sip", "user": "operator"}


def pstn(number: str) -> dict[str, str]:
    return {"kind": "pstn", "number": number}


async def wait_for(role: SippRole, predicate: Any, within_s: float = 40) -> SipMessage:
    return await asyncio.to_thread(role.wait_for, predicate, within_s)


def invites_to(role: SippRole, user: str) -> list[SipMessage]:
    return [m for m in role.invites_received() if m.ruri_user == user]


async def events(stack: Stack, advisor_id: int) -> list[tuple[str, str]]:
    rows = await stack.fetch("callback", "SELECT event, after FROM advisor_events "
                             "WHERE advisor_id = $1 ORDER BY id", advisor_id)
    return [(r["event"], r["after"]) for r in rows]


async def record(stack: Stack, customer_number: str) -> dict[str, Any]:
    """The consultation record the call left (the site's ``consultations`` row)."""
    row = await stack.wait_for_row("callback", "SELECT * FROM consultations WHERE "
                                   "customer_number = $1", customer_number)
    costs = await stack.fetch("callback", "SELECT * FROM consultation_leg_costs WHERE "
                              "consultation_id = $1 ORDER BY position",
                              row["consultation_id"])
    return {**dict(row), "leg_costs": [dict(c) for c in costs]}


async def customer_leg_at_edge(stack: Stack, made: dict[str, Any]) -> dict[str, Any]:
    """The record's customer leg as the edge stored it (the record goes there once its
    customer leg's CDR is stored, with that leg)."""
    row = await stack.wait_for_row(
        "edge", "SELECT * FROM consultation_leg_costs WHERE consultation_id = $1 "
        "AND role = 'customer'", made["consultation_id"])
    return dict(row)


def ring_outcomes(made: dict[str, Any]) -> list[tuple[int, str]]:
    return [(r["advisor_id"], r["outcome"]) for r in made["rings"]]


@contextlib.contextmanager
def phones_media() -> Iterator[tuple[RtpCapture, RtpCapture]]:
    """The RTP to and from the advisor's phone (the edge's ``operator``) and the
    customer's (carrier A), in that order."""
    with RtpCapture("127.0.0.1", media_port_for(OPERATOR_PORT)) as to_advisor, \
            RtpCapture("127.0.0.1", media_port_for(CARRIER_A_PORT)) as to_customer:
        yield to_advisor, to_customer


async def answered_then_hung_up(advisor: SippRole, rung_within_s: float = 60
                                ) -> tuple[SipMessage, SipMessage, SipMessage]:
    """The advisor's phone (``uas_answer_dtmf_bye.xml``) rung, answering and hanging up
    20 s later: the INVITE it got, its 200 OK and its BYE."""
    invite = await wait_for(advisor, lambda m: m.method == "INVITE", rung_within_s)
    ok = await wait_for(advisor, lambda m: m.direction == "sent" and m.status == 200
                        and m.cseq_method == "INVITE", 10)
    bye = await wait_for(advisor, lambda m: m.method == "BYE" and m.direction == "sent", 40)
    return invite, ok, bye


def assert_heard_each_other(answered: SipMessage, wall_minus_monotonic: float,
                            **captures: RtpCapture) -> None:
    """Bridged: each phone (its capture named by whose it is) gets the other's media,
    PCMU a packet per 20 ms, in the first 5 s after the advisor's 200 OK ``answered``
    (SIPp's clock is the wall's, the captures' monotonic)."""
    start = answered.at.timestamp() - wall_minus_monotonic
    for name, rtp in captures.items():
        heard = [t for t, pt in rtp.packets if pt == 0 and start <= t <= start + 5]
        assert len(heard) >= 0.8 * 5 / 0.02, (name, len(heard))


async def presence(stack: Stack, advisor_id: int) -> dict[str, Any]:
    rows = await stack.fetch("callback", "SELECT * FROM advisor_presence WHERE advisor_id = $1",
                             advisor_id)
    return dict(rows[0])


async def test_code_rings_that_advisor_and_their_hang_up_ends_the_call(
        stack: Stack, admin: Admin) -> None:
    """Method 4: the customer keys 4321; the advisor of that code (a SIP phone at the
    edge) is rung with the customer's number, answers, talks, and hangs up first: the
    customer is hung up after the goodbye and the advisor goes to after-call work."""
    await admin.call("PUT", "/v1/advisor-settings", {"ring_timeout_s": 20, "lines": 10,
                                                      "misses_before_break": 3})
    chosen = await admin.advisor("葵", "4321", SIP_ADVISOR)
    other = await admin.advisor("蓮", "8765", pstn("+81312340001"))
    customer = "07011110001"
    await admin.fund(customer)
    keys = CONFIRM + BY_CODE + "4321"
    # both phones keep sending PCMU (silence) for 20 s after their keys
    async with stack.carriers(digits=keys, operator="uas_answer_dtmf_bye.xml",
                              pcap_options={"tail_ms": 20_000}) as roles:
        await asyncio.to_thread(stack.customer_call(customer).wait, 40)
        advisor = roles["operator"]
        wall_minus_monotonic = time.time() - time.monotonic()
        with phones_media() as (to_advisor, to_customer):
            invite, ok, advisor_bye = await answered_then_hung_up(advisor)
        phone = roles["carrier-a"]
        customer_bye = await wait_for(phone, lambda m: m.method == "BYE"
                                      and m.direction == "received", 40)
        ended = await stack.wait_for_row(
            "callback", "SELECT * FROM advisor_events WHERE advisor_id = $1 AND "
            "event = 'ended'", chosen)
        carrier_invites = roles["carrier-a"].invites_received() + \
            roles["carrier-b"].invites_received()
    assert invite.ruri_user == "operator"
    assert invite.from_user is not None and invite.from_user.endswith("7011110001"), \
        "the advisor sees the customer's number"
    assert_heard_each_other(ok, wall_minus_monotonic, advisor=to_advisor,
                            customer=to_customer)
    assert customer_bye.at > advisor_bye.at, "the advisor hung up first"
    # nobody else was rung: the carriers saw only the customer's call-back
    assert {m.ruri_user for m in carrier_invites} == {"817011110001"}
    assert [e for e, _ in await events(stack, chosen)] == [
        "online", "offered", "answered", "ended"]
    assert ended["after"] == "wrap_up"
    assert [e for e, _ in await events(stack, other)] == ["online"]
    leg = await stack.wait_for_row(
        "callback", "SELECT * FROM callback_attempts WHERE leg = 'advisor' AND answered")
    assert leg["endpoint"] == "PJSIP/operator@edge-trunk" and leg["status"] == "ended"
    made = await record(stack, "+817011110001")
    assert made["method"] == "code" and made["advisor_id"] == chosen
    assert made["end_reason"] == "advisor_hangup" and made["group_id"] is None
    assert ring_outcomes(made) == [(chosen, "answered")]
    assert made["rings"][0]["call_id"] == leg["channel_id"]
    on_wire = (advisor_bye.at - ok.at).total_seconds()
    assert abs(made["talk_s"] - on_wire) <= 2, (made["talk_s"], on_wire)
    assert [(c["call_id"], c["role"], c["carrier_id"], c["cost_amount"])
            for c in made["leg_costs"] if c["role"] == "advisor"] == [
        (leg["channel_id"], "advisor", "edge-trunk", None)]
    customer_leg = await customer_leg_at_edge(stack, made)
    assert customer_leg["call_id"] == made["customer_call_id"]
    assert customer_leg["carrier_id"] == "carrier-a" and customer_leg["cost_amount"] > 0, \
        customer_leg


async def test_ring_timeout_goes_to_the_next_advisor_and_the_miss_puts_one_on_break(
        stack: Stack, admin: Admin) -> None:
    """A group: the advisor idle the longest (a SIP phone that lets it ring) is rung for
    the merchant's ring timeout; the miss (one is the break threshold here) puts them on
    break, and the next member, reached over PSTN through the cheapest carrier (B
    refuses, A answers), is rung and answers."""
    await admin.call("PUT", "/v1/advisor-settings", {"ring_timeout_s": 5, "lines": 10,
                                                      "misses_before_break": 1})
    first = await admin.advisor("陽翔", "1357", SIP_ADVISOR)
    second = await admin.advisor("結衣", "2468", pstn("+81312340002"))
    await admin.group("all", [first, second])
    customer = "07011110002"
    await admin.fund(customer)
    async with stack.carriers(digits=CONFIRM + ANYONE,
                              operator="uas_ring_no_answer.xml") as roles:
        await asyncio.to_thread(stack.customer_call(customer).wait, 40)
        rung = await wait_for(roles["operator"], lambda m: m.method == "INVITE", 60)
        cancel = await wait_for(roles["operator"], lambda m: m.method == "CANCEL", 30)
        refused = await wait_for(roles["carrier-b"], lambda m: m.method == "INVITE"
                                 and m.ruri_user == "81312340002", 30)
        answered = await wait_for(roles["carrier-a"], lambda m: m.method == "INVITE"
                                  and m.ruri_user == "81312340002", 30)
        await stack.wait_for_row("callback", "SELECT 1 FROM advisor_events WHERE "
                                 "advisor_id = $1 AND event = 'answered'", second)
        customer_leg = await stack.wait_for_row(
            "callback", "SELECT channel_id FROM callback_attempts WHERE leg = 'customer' "
            "AND answered AND endpoint LIKE '%7011110002%'")
        async with stack.callback_site.client() as ari:   # the customer hangs up
            await ari.hangup(customer_leg["channel_id"])
        made = await record(stack, "+817011110002")
    rang_s = (cancel.at - rung.at).total_seconds()
    assert 4.0 <= rang_s <= 8.0, rang_s                  # the merchant's 5 s ring timeout
    assert cancel.at <= refused.at <= answered.at
    missed = await presence(stack, first)
    assert missed["desk"] == "break" and "missed 1" in missed["reason"]
    assert ("ring_missed", "break") in await events(stack, first)
    assert made["method"] == "group" and made["group_id"] is not None
    assert made["advisor_id"] == second and made["end_reason"] == "customer_hangup"
    assert ring_outcomes(made) == [(first, "missed"), (second, "answered")]
    carriers = [(c["carrier_id"], c["cost_amount"] is not None) for c in made["leg_costs"]
                if c["role"] != "customer"]   # the customer's comes with its CDR, later
    # the ring through the edge, carrier B's refusal, carrier A's answered (rated) leg
    assert carriers == [("edge-trunk", False), ("carrier-b", False), ("carrier-a", True)]


async def test_lines_busy_plays_the_busy_guidance_and_rings_nobody(
        stack: Stack, admin: Admin) -> None:
    """All the merchant's lines are in use: the customer hears the busy guidance and
    is hung up; no advisor is rung."""
    await admin.call("PUT", "/v1/advisor-settings", {"ring_timeout_s": 20, "lines": 1,
                                                      "misses_before_break": 3})
    free = await admin.advisor("湊", "9753", SIP_ADVISOR)
    busy = await admin.advisor("凛", "8642", pstn("+81312340003"))
    await admin.group("all", [free, busy])
    await stack.fetch("callback", "UPDATE advisor_presence SET sessions = "
                      "'[{\"consultation_id\": \"elsewhere\", \"answered\": true}]' "
                      "WHERE advisor_id = $1", busy)      # the one line is taken
    customer = "07011110003"
    await admin.fund(customer)
    try:
        async with stack.carriers(digits=CONFIRM + ANYONE) as roles:
            await asyncio.to_thread(stack.customer_call(customer).wait, 40)
            phone = roles["carrier-a"]
            answered = await wait_for(phone, lambda m: m.direction == "sent"
                                      and m.status == 200 and m.cseq_method == "INVITE", 60)
            bye = await wait_for(phone, lambda m: m.method == "BYE"
                                 and m.direction == "received", 60)
            advisor_invites = roles["operator"].invites_received()
            carrier_invites = roles["carrier-a"].invites_received() + \
                roles["carrier-b"].invites_received()
    finally:
        await stack.fetch("callback", "UPDATE advisor_presence SET sessions = '[]' "
                          "WHERE advisor_id = $1", busy)
    assert advisor_invites == []
    assert {m.ruri_user for m in carrier_invites} == {"817011110003"}
    made = await record(stack, "+817011110003")
    assert made["end_reason"] == "lines_busy" and made["rings"] == []
    assert made["advisor_id"] is None and made["talk_s"] == 0
    heard = (bye.at - answered.at).total_seconds()
    busy_s = ast_harness.prompt_seconds(stack.callback_site, "ja", "lines-busy")
    assert heard >= busy_s, (heard, busy_s)
    assert [e for e, _ in await events(stack, free)] == ["online"]


async def test_customer_hanging_up_while_the_advisor_rings_withdraws_without_a_miss(
        stack: Stack, admin: Admin) -> None:
    """The customer gives up (hangs up 20 s after answering) while the advisor's phone
    rings: the advisor's leg is cancelled, no miss is counted, they are back in
    standby."""
    await admin.call("PUT", "/v1/advisor-settings", {"ring_timeout_s": 60, "lines": 10,
                                                      "misses_before_break": 1})
    advisor = await admin.advisor("大和", "1470", SIP_ADVISOR)
    await admin.group("all", [advisor])
    customer = "07011110004"
    await admin.fund(customer)
    async with stack.carriers(a="uas_answer_dtmf_bye.xml", digits=CONFIRM + ANYONE,
                              operator="uas_ring_no_answer.xml") as roles:
        await asyncio.to_thread(stack.customer_call(customer).wait, 40)
        await wait_for(roles["operator"], lambda m: m.method == "INVITE", 60)
        hung_up = await wait_for(roles["carrier-a"], lambda m: m.method == "BYE"
                                 and m.direction == "sent", 40)
        cancel = await wait_for(roles["operator"], lambda m: m.method == "CANCEL", 20)
        await stack.wait_for_row("callback", "SELECT 1 FROM advisor_events WHERE "
                                 "advisor_id = $1 AND event = 'ended'", advisor)
    assert cancel.at >= hung_up.at
    after = await presence(stack, advisor)
    assert after["desk"] == "standby" and after["misses"] == 0 and after["sessions"] == []
    assert [e for e, _ in await events(stack, advisor)] == ["online", "offered", "ended"]
    made = await record(stack, "+817011110004")
    assert made["end_reason"] == "customer_abandoned" and made["answered_at"] is None
    assert ring_outcomes(made) == [(advisor, "withdrawn")]


async def test_all_list_says_why_an_offline_advisor_cannot_and_rings_the_one_chosen_next(
        stack: Stack, admin: Admin) -> None:
    """Method 3: the list of all advisors; the customer first picks one who is offline
    (told why, the list read again), then one in standby, who is rung, answers, and
    talks with the customer (audio both ways) until they hang up."""
    await admin.call("PUT", "/v1/advisor-settings", {"ring_timeout_s": 20, "lines": 10,
                                                      "misses_before_break": 3})
    away = await admin.advisor("紬", "3691", pstn("+81312340005"), online=False)
    chosen = await admin.advisor("樹", "2580", SIP_ADVISOR)
    keys = await admin.list_keys()
    customer = "07011110005"
    await admin.fund(customer)
    # both phones keep sending PCMU (silence) for 20 s after their keys
    async with stack.carriers(digits=CONFIRM + "4" + keys[away] + keys[chosen],
                              operator="uas_answer_dtmf_bye.xml",
                              pcap_options={"gap_ms": 1500, "tail_ms": 20_000}) as roles:
        await asyncio.to_thread(stack.customer_call(customer).wait, 40)
        advisor = roles["operator"]
        wall_minus_monotonic = time.time() - time.monotonic()
        with phones_media() as (to_advisor, to_customer):
            invite, ok, _ = await answered_then_hung_up(advisor)
        made = await record(stack, "+817011110005")
        carrier_invites = roles["carrier-a"].invites_received() + \
            roles["carrier-b"].invites_received()
    assert invite.ruri_user == "operator"
    assert {m.ruri_user for m in carrier_invites} == {"817011110005"}, "the offline one rang"
    assert_heard_each_other(ok, wall_minus_monotonic, advisor=to_advisor,
                            customer=to_customer)
    assert made["method"] == "all_list" and made["advisor_id"] == chosen
    assert ring_outcomes(made) == [(chosen, "answered")]
    assert await events(stack, away) == []
