"""The customer who hangs up during the order IVR's thank-you prompt, end to end.

Real Asterisks, PostgreSQL, both servers and SIPp. The customer's phone
(``deploy/sipp/uas_answer_dtmf_hangup.xml``, the capacity sweep's default phone) keys the
order, hears "ご注文を承りました" begin and hangs up itself 6 s after answering: the common
case in production. The order was written when the customer confirmed (before the prompt),
so it must be stored once at the callback site, reach the edge once, and the call must end
as any answered call-back does (the leg's result, its CDR and the round's status at the
edge). A customer who hangs up before confirming leaves no order, and the same CDR.

Everything asserted is a fact on the SIP wire (SIPp's message logs) or a row in a site's
database.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal

import pytest

from demo.stack import MerchantOptions, Stack
from tests.harness.asterisk import prompt_seconds
from tests.harness.sipp import SipMessage, SippRole

CONFIRMED = "1" + "1" + "1234#" + "2#" + "1"   # accept, order, item, quantity, confirm
UNCONFIRMED = "1" + "1" + "1234#" + "2#"        # the same, hung up at the confirm question
PHONE = "uas_answer_dtmf_hangup.xml"
HANGS_UP_AFTER_S = 6.0                           # the scenario's BYE timeout after the ACK

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with Stack(tmp_path_factory.mktemp("order-hangup"),
                     merchants=(MerchantOptions(pre_callback_delay_s="0"),),
                     db_prefix="cbgw_e2e_order_hangup") as running:
        yield running


async def edge_call(stack: Stack, caller: str) -> dict[str, object]:
    row = await stack.wait_for_row(
        "edge", "SELECT * FROM edge_calls WHERE caller = $1 AND state <> 'stored'", caller)
    return dict(row)


def call_back(phone: SippRole) -> tuple[SipMessage, SipMessage]:
    """The phone's 200 OK to the call-back INVITE and the dialog's first BYE (the phone
    waits for its BYE to be answered before the round is over)."""
    messages = phone.dialog_messages()
    ok = next(m for m in messages if m.direction == "sent" and m.status == 200
              and m.cseq_method == "INVITE")
    bye = next(m for m in messages if m.method == "BYE" and m.call_id == ok.call_id)
    return ok, bye


async def answered_cdr(stack: Stack, edge_call_id: object) -> dict[str, object]:
    row = await stack.wait_for_row(
        "edge", "SELECT * FROM cdrs WHERE edge_call_id = $1 AND disposition = 'answered'",
        edge_call_id, timeout_s=60)
    return dict(row)


async def completed_at_edge(stack: Stack, edge_call_id: object) -> None:
    await stack.wait_for_row(
        "edge", "SELECT 1 FROM callback_status WHERE edge_call_id = $1 "
        "AND status = 'completed'", edge_call_id, timeout_s=60)


async def test_hanging_up_during_the_thank_you_keeps_the_order_once_and_ends_cleanly(
        stack: Stack) -> None:
    caller, e164 = "09012345671", "+819012345671"
    async with stack.carriers(a=PHONE, digits=CONFIRMED) as roles:
        customer = stack.customer_call(caller)
        await asyncio.to_thread(customer.wait, 40)
        call = await edge_call(stack, e164)
        cdr = await answered_cdr(stack, call["edge_call_id"])
        await completed_at_edge(stack, call["edge_call_id"])
        phone = roles["carrier-a"]
        ok, bye = call_back(phone)

    # The customer hung up (the phone's BYE, 6 s after answering), not the server.
    assert bye.direction == "sent", f"the server hung up first:\n{phone.describe()}"
    assert abs((bye.at - ok.at).total_seconds() - HANGS_UP_AFTER_S) < 1.0

    # The order, stored once at the callback site, before the customer hung up, while the
    # thank-you prompt (played from the moment it was stored) was still playing.
    (request,) = await stack.fetch(
        "callback", "SELECT r.callback_id, r.status, r.reason FROM callback_requests r "
        "WHERE r.edge_call_id = $1", call["edge_call_id"])
    infos = await stack.fetch(
        "callback", "SELECT category, fields, collected_at FROM request_info "
        "WHERE callback_id = $1", request["callback_id"])
    assert [(i["category"], i["fields"]) for i in infos] == [
        ("order", {"item_code": "1234", "quantity": "2"})]
    thanks = timedelta(seconds=prompt_seconds(stack.callback_site, "ja", "thank-you"))
    collected = infos[0]["collected_at"]
    assert collected < bye.at < collected + thanks, (collected, bye.at, thanks)

    # The edge received it once, for the call center.
    orders = await stack.wait_for_row(
        "edge", "SELECT count(*) AS n, min(category) AS category, min(fields::text) AS f "
        "FROM requests WHERE edge_call_id = $1 HAVING count(*) > 0", call["edge_call_id"])
    await asyncio.sleep(1.0)                       # a second delivery would land by now
    (again,) = await stack.fetch(
        "edge", "SELECT count(*) AS n FROM requests WHERE edge_call_id = $1",
        call["edge_call_id"])
    assert orders["n"] == again["n"] == 1 and orders["category"] == "order"

    # The call ended as an answered call-back: the round completed, the leg ended, and
    # the CDR's duration is the call on the wire (200 OK -> the customer's BYE).
    assert (request["status"], request["reason"]) == ("completed", "answered")
    legs = await stack.fetch(
        "callback", "SELECT status FROM callback_attempts WHERE callback_id = $1 "
        "AND answered_at IS NOT NULL", request["callback_id"])
    assert [leg["status"] for leg in legs] == ["ended"]
    on_wire = Decimal(str(round((bye.at - ok.at).total_seconds(), 3)))
    assert abs(Decimal(str(cdr["duration_s"])) - on_wire) <= 1, (cdr["duration_s"], on_wire)


async def test_hanging_up_before_confirming_stores_no_order(stack: Stack) -> None:
    caller, e164 = "09012345672", "+819012345672"
    async with stack.carriers(a=PHONE, digits=UNCONFIRMED) as roles:
        customer = stack.customer_call(caller)
        await asyncio.to_thread(customer.wait, 40)
        call = await edge_call(stack, e164)
        await answered_cdr(stack, call["edge_call_id"])
        await completed_at_edge(stack, call["edge_call_id"])
        ok, bye = call_back(roles["carrier-a"])

    assert bye.direction == "sent"
    (request,) = await stack.fetch(
        "callback", "SELECT callback_id, status FROM callback_requests "
        "WHERE edge_call_id = $1", call["edge_call_id"])
    assert request["status"] == "completed"
    assert await stack.fetch(
        "callback", "SELECT 1 FROM request_info WHERE callback_id = $1",
        request["callback_id"]) == []
    assert await stack.fetch(
        "edge", "SELECT 1 FROM requests WHERE edge_call_id = $1", call["edge_call_id"]) == []
