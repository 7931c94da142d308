"""The patent's two-site loop end to end: real Asterisks, PostgreSQL, servers, SIPp.

Everything asserted here is a fact on the SIP wire (SIPp's message logs) or a
row in a site's database; nothing is read from the servers' own logs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import pytest

from demo.stack import CALL_CENTER_TOKEN, MerchantOptions, Stack
from tests import prom
from tests.harness.asterisk import prompt_seconds
from tests.harness.sipp import SipMessage, SippRole

CUSTOMER = "09012345678"
CUSTOMER_E164 = "+819012345678"
ORDER_KEYS = "1" + "1" + "1234#" + "2#" + "1"   # accept call-back, order, item, qty, confirm
ACME = MerchantOptions(pre_callback_delay_s="0")
BENTO = MerchantOptions(id="bento", name="Bento Lines", number="0120987654",
                        announce_mode="answer", pre_callback_delay_s="0",
                        api_token="bento-call-center-token")

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with Stack(tmp_path_factory.mktemp("loop"), merchants=(ACME, BENTO),
                     db_prefix="cbgw_e2e_loop", log_level="DEBUG") as running:
        yield running


async def finished(role: SippRole, within_s: float = 40) -> None:
    await asyncio.to_thread(role.wait, within_s)


def first(messages: list[SipMessage], predicate: str) -> SipMessage:
    for m in messages:
        if predicate == m.first_line.split(" ")[0] or predicate == str(m.status):
            return m
    raise AssertionError(f"no {predicate} among {[m.first_line for m in messages]}")


async def last_call_id(stack: Stack) -> int:
    rows = await stack.fetch("edge", "SELECT coalesce(max(id), 0) AS id FROM edge_calls")
    return int(rows[0]["id"])


async def new_edge_call(stack: Stack, after_id: int) -> dict[str, object]:
    """The call the edge recorded after ``after_id``, once it has reached a final state."""
    row = await stack.wait_for_row(
        "edge", "SELECT * FROM edge_calls WHERE id > $1 AND state <> 'stored' "
        "ORDER BY id LIMIT 1", after_id)
    return dict(row)


async def test_early_media_call_back_with_failover_ivr_and_cdr_to_the_edge(
        stack: Stack) -> None:
    async with stack.carriers(digits=ORDER_KEYS) as roles:
        before = await last_call_id(stack)
        phone = stack.customer_call(CUSTOMER)
        await finished(phone)
        call = await new_edge_call(stack, before)
        cdr = await stack.wait_for_row(
            "edge", "SELECT * FROM cdrs WHERE edge_call_id = $1 AND disposition = 'answered'",
            call["edge_call_id"], timeout_s=60)
        request = await stack.wait_for_row(
            "edge", "SELECT * FROM requests WHERE edge_call_id = $1", call["edge_call_id"])
        # The decks make carrier B the cheapest for this number: it is tried first.
        first_choice, second_choice = roles["carrier-b"], roles["carrier-a"]

    # The inbound leg: 183 with the announcement, then 486. Never a 200 OK.
    statuses = phone.statuses_received()
    assert 183 in statuses and statuses[-1] == 486
    assert 200 not in statuses, f"the edge answered the toll-free call: {statuses}"
    # The announcement is the Japanese one (acme does not set a language): early media
    # lasts as long as the Japanese prompt, and nearer it than the English one. (Trimmed
    # renders put the two within 0.35 s of each other; the wire only adds time, and the
    # Japanese is the longer, so "nearer" cannot be the English one arriving late.)
    messages = phone.dialog_messages()
    heard = (first(messages, "486").at - first(messages, "183").at).total_seconds()
    japanese = prompt_seconds(stack.edge_site, "ja", "received")
    english = prompt_seconds(stack.edge_site, "en", "received")
    assert japanese > english, (japanese, english)
    assert abs(heard - japanese) <= 0.5, (heard, japanese, english)
    assert abs(heard - japanese) < abs(heard - english), (heard, japanese, english)
    assert call["caller"] == CUSTOMER_E164 and call["state"] == "released"

    # The cheapest carrier got the call-back INVITE for the right number and refused it
    # with 503; the next one got it after that, from the merchant's number, and answered.
    refused = first_choice.invites_received()[0]
    assert refused.ruri_user == CUSTOMER_E164[1:]
    refusal = first(first_choice.dialog_messages(), "503")
    answered = second_choice.invites_received()[0]
    assert answered.ruri_user == CUSTOMER_E164[1:]
    assert answered.at > refusal.at, "the failover INVITE must follow the 503"
    assert answered.from_user is not None and answered.from_user.endswith("120123456")
    assert len(second_choice.invites_received()) == 1, "the customer was rung twice"

    # The digits the customer sent are the order the edge stored for the call center.
    assert request["category"] == "order"
    assert request["fields"] == {"item_code": "1234", "quantity": "2"}

    # The CDR's duration matches the call on the wire (200 OK sent -> BYE) within 1 s.
    ok = next(m for m in second_choice.dialog_messages()
              if m.direction == "sent" and m.status == 200 and m.cseq_method == "INVITE")
    # Same dialog only: a stray BYE retransmitted for an earlier call may arrive too.
    bye = next(m for m in second_choice.dialog_messages()
               if m.method == "BYE" and m.call_id == ok.call_id)
    on_wire = Decimal(str(round((bye.at - ok.at).total_seconds(), 3)))
    assert abs(Decimal(cdr["duration_s"]) - on_wire) <= 1, (cdr["duration_s"], on_wire)
    assert cdr["carrier"] == "carrier-a" and cdr["billed_s"] == 60   # carrier A bills 60/60
    assert Decimal(cdr["carrier_cost_amount"]) == Decimal("0.1398")  # one minute, its deck
    assert cdr["carrier_cost_currency"] == "USD" and cdr["direct_cost_amount"] is not None

    # The carriers' post-dial delay: the answered leg's first ring (or its answer) is
    # recorded from ARI in callback_attempts.progress_at, after its originate, by its answer.
    (up,) = await stack.fetch(
        "callback", "SELECT c.started_at, c.answered_at, a.progress_at FROM cdrs c "
        "JOIN callback_attempts a ON a.channel_id = c.call_id WHERE c.call_id = $1",
        cdr["call_id"])
    assert up["progress_at"] is not None, "no ring or answer recorded for the answered leg"
    assert up["started_at"] <= up["progress_at"] <= up["answered_at"], dict(up)

    # The merchant's call center reads both over the edge's API.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=stack.client_ssl())) as session:
        headers = {"Authorization": f"Bearer {CALL_CENTER_TOKEN}"}
        async with session.get(f"{stack.edge_url}/v1/requests", headers=headers) as resp:
            assert resp.status == 200
            items = (await resp.json())["items"]
        async with session.get(f"{stack.edge_url}/v1/cdrs", headers=headers) as resp:
            assert resp.status == 200
            cdrs = (await resp.json())["items"]
    assert any(i["edge_call_id"] == call["edge_call_id"] for i in items)
    assert any(c["edge_call_id"] == call["edge_call_id"] and c["disposition"] == "answered"
               for c in cdrs)


async def test_answer_mode_answers_announces_and_hangs_up_within_5_s(stack: Stack) -> None:
    async with stack.carriers(digits=ORDER_KEYS):
        before = await last_call_id(stack)
        phone = stack.customer_call("08023456789", dialled=BENTO.number)  # another customer:
        # the guard spaces call-backs to one number at least 120 s apart
        await finished(phone)
        call = await new_edge_call(stack, before)
        await stack.wait_for_row(
            "edge", "SELECT 1 FROM cdrs WHERE edge_call_id = $1 AND disposition = 'answered'",
            call["edge_call_id"], timeout_s=60)
    messages = phone.dialog_messages()
    ok = first(messages, "200")
    bye = next(m for m in messages if m.method == "BYE" and m.call_id == ok.call_id)
    assert bye.direction == "received", "the edge, not the caller, ends the call"
    assert (bye.at - ok.at).total_seconds() <= 5.0
    assert call["merchant_id"] == "bento" and call["announce_mode"] == "answer"


async def test_caller_id_written_with_separators_gets_the_call_back(stack: Stack) -> None:
    # A phone or PBX may send its number as people write it; it is still that number.
    async with stack.carriers(digits=ORDER_KEYS) as roles:
        before = await last_call_id(stack)
        phone = stack.customer_call("080-3456-7891")
        await finished(phone)
        call = await new_edge_call(stack, before)
        assert call["state"] == "released", call   # not refused with "dial 186"
        assert call["caller"] == "+818034567891"
        await stack.wait_for_row(
            "edge", "SELECT 1 FROM cdrs WHERE edge_call_id = $1 AND disposition = 'answered'",
            call["edge_call_id"], timeout_s=60)
    invites = roles["carrier-a"].invites_received() + roles["carrier-b"].invites_received()
    assert {i.ruri_user for i in invites} == {"818034567891"}
    statuses = phone.statuses_received()
    assert 183 in statuses and statuses[-1] == 486 and 200 not in statuses


@pytest.mark.parametrize(("caller", "privacy", "pai"), [
    ("anonymous", "id", "anonymous"),          # 184: no number at all
    (CUSTOMER, "id", None),                    # withheld presentation with a PAI
])
async def test_withheld_caller_hears_dial_186_and_nothing_is_queued(
        stack: Stack, caller: str, privacy: str, pai: str | None) -> None:
    before = len(await stack.fetch("callback", "SELECT 1 FROM callback_requests"))
    last = await last_call_id(stack)
    phone = stack.customer_call(caller, privacy=privacy, pai=pai)
    await finished(phone)
    statuses = phone.statuses_received()
    assert 183 in statuses and statuses[-1] == 486 and 200 not in statuses
    call = await new_edge_call(stack, last)
    assert call["state"] == "refused" and call["outcome"] is not None
    assert "withheld" in str(call["decision_reason"]) + str(call["outcome"]) + str(
        call["detail"])
    await asyncio.sleep(1.0)
    assert len(await stack.fetch("callback", "SELECT 1 FROM callback_requests")) == before
    assert call["message_id"] is None or not await stack.fetch(
        "edge", "SELECT 1 FROM outbox WHERE message_id = $1 AND delivered_at IS NOT NULL",
        call["message_id"])


async def test_zero_bridges_the_customer_to_the_operator_through_the_edge(
        stack: Stack) -> None:
    """Pressing 0: the callback Asterisk calls the edge over the SIP trunk (the internet
    VoIP leg) and the edge rings the operator phone; the two are bridged."""
    customer = "07012345678"     # a customer of its own: the guard spaces call-backs per number
    async with stack.carriers(digits="1" + "0", operator="uas_answer_hold.xml") as roles:
        before = await last_call_id(stack)
        phone = stack.customer_call(customer)
        await finished(phone)
        call = await new_edge_call(stack, before)
        leg = await stack.wait_for_row(
            "callback", "SELECT a.* FROM callback_attempts a JOIN callback_requests r "
            "USING (callback_id) WHERE r.edge_call_id = $1 AND a.leg = 'operator' "
            "AND a.answered", call["edge_call_id"], timeout_s=30)
        operator = roles["operator"]
        invites = operator.invites_received()
        answered_at = next(m.at for m in operator.dialog_messages()
                           if m.direction == "sent" and m.status == 200
                           and m.cseq_method == "INVITE")
        await asyncio.sleep(1.0)
        still_up = not any(m.method == "BYE" for m in operator.dialog_messages())
    assert len(invites) == 1, "the operator phone rang once"
    assert invites[0].ruri_user == "operator"
    assert invites[0].from_user is not None and invites[0].from_user.endswith("7012345678"), \
        "the operator sees the customer's number"
    assert leg["endpoint"] == "PJSIP/operator@edge-trunk"
    assert still_up, "the bridged call must stay up after the operator answered"
    assert answered_at is not None


async def scrape(stack: Stack, site: str) -> str:
    url = stack.edge_url if site == "edge" else stack.callback_url
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=stack.client_ssl())) as session, session.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


async def test_both_sites_metrics_count_the_call_its_call_back_and_latency(
        stack: Stack) -> None:
    """``GET /metrics`` of both sites, scraped while the call-back is under way and after:
    the edge counted the call and its decision (and sent its two ARI requests on the events
    websocket), the callback site observed the hang-up -> INVITE latency and the job
    dialling, then the answered round, all for merchant acme."""
    acme = {"merchant": "acme"}
    edge_before, callback_before = await scrape(stack, "edge"), await scrape(stack, "callback")

    def grew(before: str, after: str, name: str, **labels: str) -> float:
        return prom.scraped(after, name, **labels) - prom.scraped(before, name, **labels)

    async with stack.carriers(digits=ORDER_KEYS) as roles:
        before = await last_call_id(stack)
        phone = stack.customer_call("09076543210")
        await finished(phone)
        call = await new_edge_call(stack, before)
        await asyncio.to_thread(lambda: roles["carrier-a"].wait_for(
            lambda m: m.method == "INVITE" and m.ruri_user == "819076543210", 30))
        during = await scrape(stack, "callback")      # the customer is on the call-back
        await stack.wait_for_row(
            "edge", "SELECT 1 FROM cdrs WHERE edge_call_id = $1 AND disposition = 'answered'",
            call["edge_call_id"], timeout_s=60)
    edge_after, callback_after = await scrape(stack, "edge"), await scrape(stack, "callback")

    assert grew(callback_before, during, "cbgw_callback_latency_seconds_count", **acme) == 1
    latency = grew(callback_before, during, "cbgw_callback_latency_seconds_sum", **acme)
    assert 0 < latency < 30, latency
    assert prom.scraped(during, "cbgw_callback_queue_jobs", state="dialing", **acme) >= 1
    assert prom.scraped(during, "cbgw_ari_websocket_connected") == 1
    assert grew(callback_before, callback_after, "cbgw_callbacks_total", outcome="completed",
                reason="answered", **acme) == 1
    assert grew(edge_before, edge_after, "cbgw_edge_calls_total", outcome="callback",
                reason="callback_released", **acme) == 1
    assert grew(edge_before, edge_after, "cbgw_edge_decisions_total", decision="callback",
                reason=str(call["decision_reason"]), **acme) == 1
    assert prom.scraped(edge_after, "cbgw_ari_websocket_connected") == 1
    # the call's early media play and its hang-up (486) went on the edge's events websocket
    assert grew(edge_before, edge_after, "cbgw_ari_requests_total", transport="events") == 2
    for before_, after_ in ((edge_before, edge_after), (callback_before, callback_after)):
        # each site's relay delivered over the link: the request, then the news of it
        delivered = (prom.scraped_total(after_, "cbgw_link_deliveries_total")
                     - prom.scraped_total(before_, "cbgw_link_deliveries_total"))
        assert delivered >= 1
        assert prom.scraped(after_, "cbgw_metrics_reading_up", reading="outbox_backlog") == 1


async def test_edge_crash_mid_announcement_recovers_the_parked_call_and_still_calls_back(
        stack: Stack) -> None:
    """kill -9 of edge_server while the caller hears the announcement: the channel stays
    parked in Stasis; the restarted server finds it on reconnect, ends it without ever
    answering, and releases the stored request, so the customer is still called back."""
    customer = "09087654321"
    async with stack.carriers(digits=ORDER_KEYS) as roles:
        before = await last_call_id(stack)
        phone = stack.customer_call(customer)
        await stack.wait_for_row("edge", "SELECT 1 FROM edge_calls WHERE id > $1 "
                                 "AND state = 'stored'", before)
        await stack.restart_server("edge", kill=True)
        await finished(phone)
        call = await new_edge_call(stack, before)
        invite = await asyncio.to_thread(
            lambda: roles["carrier-b"].wait_for(
                lambda m: m.method == "INVITE" and m.ruri_user == "819087654321", 30))
    statuses = phone.statuses_received()
    assert 200 not in statuses and statuses[-1] in (486, 503), statuses
    assert call["state"] == "released"
    assert invite is not None, "the customer was not called back after the edge crashed"
