"""The flow verbs on the running stack (both sites as ``serve`` processes, real Asterisk,
SIPp): a stored flow whose call-back passes the confirm gate, branches on the business
hours, sets a variable, calls a webhook the site refuses (a loopback address: its
``on_fail``), submits the variables to the edge as the call's request data, then
transfers the customer to a number over a carrier: the transfer leg is persisted,
answered, bridged and its CDR rated at the number."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from demo.stack import MerchantOptions, Stack
from tests.e2e.test_callback_stored_flows import call_api
from tests.e2e.test_loop_callback import CUSTOMER, finished, last_call_id, new_edge_call

pytestmark = pytest.mark.e2e

SHOP = "+81312345678"
VERBS = f"""\
name = "verbs"
start = "confirm_callback"
confirm_callback = "confirm_callback"

[nodes.confirm_callback]
type = "confirm"
prompt = ["sound:cbgw/confirm-callback"]
yes = "check"
no = "goodbye"
timeout_s = 15
retries = 0
on_fail = "goodbye"

[nodes.check]
type = "hours"
open = "remember"
closed = "goodbye"

[nodes.remember]
type = "set"
values = {{ plan = "gold {{caller}}" }}
next = "crm"

[nodes.crm]
type = "webhook"
url = "http://127.0.0.1:9/ivr"
sets = ["plan"]
next = "goodbye"
on_fail = "send"

[nodes.send]
type = "submit"
category = "verbs"
fields = ["plan", "caller"]
next = "to_shop"

[nodes.to_shop]
type = "transfer"
number = "{SHOP}"
ring_s = 20
on_fail = "goodbye"

[nodes.goodbye]
type = "hangup"
prompt = ["sound:cbgw/goodbye"]
"""


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with Stack(tmp_path_factory.mktemp("verbs"),
                     merchants=(MerchantOptions(pre_callback_delay_s="0"),),
                     db_prefix="cbgw_e2e_verbs") as running:
        yield running


async def test_a_call_back_sets_submits_and_transfers_to_a_number(stack: Stack) -> None:
    version = await call_api(stack, "POST", "/v1/ivr/flows?file=verbs.toml", VERBS)
    await call_api(stack, "POST", f"/v1/ivr/flows/{version['version']}/activate")
    await stack.wait_for_row("callback", "SELECT 1 FROM ivr_flow_active")
    # the customer accepts the call-back, 1.5 s after answering (a transfer dialled within
    # the same second as the customer's legs would now be paced by the site's CPS cap of
    # 2 a second, not refused: the delay is no longer needed)
    async with stack.carriers(digits="[1500]1"):
        before = await last_call_id(stack)
        await finished(stack.customer_call(CUSTOMER))
        call = await new_edge_call(stack, before)
        request = await stack.wait_for_row(
            "edge", "SELECT * FROM requests WHERE edge_call_id = $1 AND category = 'verbs'",
            call["edge_call_id"], timeout_s=60)
        assert request["fields"] == {"plan": "gold +819012345678", "caller": "+819012345678"}
        transfer = await stack.wait_for_row(
            "callback", """SELECT c.* FROM cdrs c JOIN callback_requests r USING (callback_id)
                           WHERE r.edge_call_id = $1 AND c.leg = 'transfer'
                             AND c.disposition = 'answered'""",
            call["edge_call_id"], timeout_s=120)
    assert transfer["destination"] == SHOP and transfer["carrier_cost"] is not None
    attempts = await stack.fetch(
        "callback", """SELECT a.leg, a.carrier_id FROM callback_attempts a
                       JOIN callback_requests r USING (callback_id)
                       WHERE r.edge_call_id = $1 ORDER BY a.leg_seq""", call["edge_call_id"])
    assert "transfer" in [a["leg"] for a in attempts]
