"""A merchant's stored IVR flow on the running stack (both sites as `serve` processes, real
Asterisk, SIPp): uploaded and activated over the callback site's API while it runs, the
next call-back's IVR is that version (the order it collects reaches the edge under the
stored flow's category), and the round records which version it ran."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from callback_server.ivr_flow import FLOWS_DIR
from demo.stack import CALL_CENTER_TOKEN, MerchantOptions, Stack
from tests.e2e.test_loop_callback import (
    CUSTOMER,
    ORDER_KEYS,
    finished,
    last_call_id,
    new_edge_call,
)

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": f"Bearer {CALL_CENTER_TOKEN}"}
#: the shipped order flow, reporting its orders under another category
STORED = (FLOWS_DIR / "order.toml").read_text().replace('category = "order"',
                                                        'category = "stored_order"')


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with Stack(tmp_path_factory.mktemp("flows"),
                     merchants=(MerchantOptions(pre_callback_delay_s="0"),),
                     db_prefix="cbgw_e2e_flows") as running:
        yield running


async def call_api(stack: Stack, method: str, path: str, data: str | bytes | None = None,
                   json: Any = None) -> Any:
    """The callback site's API with the merchant's token; the answer's body (200 or 201)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=stack.client_ssl())) as session, \
            session.request(method, stack.callback_url + path, data=data, json=json,
                            headers=AUTH) as resp:
        body = await resp.json()
        assert resp.status in (200, 201), body
        return body


async def test_an_activated_stored_flow_runs_the_next_call_back_without_a_restart(
        stack: Stack) -> None:
    version = (await call_api(stack, "POST", "/v1/ivr/flows?file=stored.toml", STORED))
    assert version["version"] == 1
    assert (await call_api(stack, "POST", "/v1/ivr/flows/1/activate"))["active"] is True
    await asyncio.sleep(2.0)                        # every process follows within that
    async with stack.carriers(digits=ORDER_KEYS):
        before = await last_call_id(stack)
        await finished(stack.customer_call(CUSTOMER))
        call = await new_edge_call(stack, before)
        request = await stack.wait_for_row(
            "edge", "SELECT * FROM requests WHERE edge_call_id = $1", call["edge_call_id"],
            timeout_s=60)
    assert request["category"] == "stored_order"
    assert request["fields"] == {"item_code": "1234", "quantity": "2"}
    rounds = await stack.fetch(
        "callback", """SELECT f.flow_name, f.version FROM callback_round_flows f
                       JOIN callback_requests r USING (callback_id)
                       WHERE r.edge_call_id = $1""", call["edge_call_id"])
    assert [(r["flow_name"], r["version"]) for r in rounds] == [("order", 1)]
