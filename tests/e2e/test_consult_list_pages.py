"""An IVR list of more than 9 advisors on the real callback Asterisk: the customer hears
the first 9 and 「次の一覧は0を押してください。」, presses 0, hears the next page and picks
the 11th advisor with key 2 of that page; that advisor (the edge's operator phone, a SIP
contact) is rung and answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from demo.stack import MerchantOptions, Stack
from tests.e2e.test_consult_calls import (
    CONFIRM,
    SIP_ADVISOR,
    Admin,
    pstn,
    record,
    ring_outcomes,
    wait_for,
)

pytestmark = pytest.mark.e2e

ACME = MerchantOptions(pre_callback_delay_s="0", ivr_flow="consult")
ALL_LIST, NEXT_PAGE = "4", "0"          # the consult flow's menu; the page key


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with Stack(tmp_path_factory.mktemp("listpages"), merchants=(ACME,),
                     db_prefix="cbgw_e2e_listpages", log_level="DEBUG") as running:
        yield running


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[Admin]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=stack.client_ssl())) as session:
        yield Admin(stack, session)


async def test_0_turns_to_the_next_page_and_its_keys_pick_from_it(
        stack: Stack, admin: Admin) -> None:
    await admin.call("PUT", "/v1/advisor-settings", {"ring_timeout_s": 20, "lines": 10,
                                                      "misses_before_break": 3})
    for n in range(10):                      # the first page and one more, offline
        await admin.advisor(f"控え{n}", f"10{n:02d}", pstn(f"+813123401{n:02d}"),
                            online=False)
    chosen = await admin.advisor("十一", "2011", SIP_ADVISOR)   # 11th: page 2, key 2
    customer = "07033330001"
    await admin.fund(customer)
    async with stack.carriers(digits=CONFIRM + ALL_LIST + NEXT_PAGE + "2",
                              operator="uas_answer_dtmf_bye.xml",
                              pcap_options={"gap_ms": 2500}) as roles:
        await asyncio.to_thread(stack.customer_call(customer).wait, 40)
        invite = await wait_for(roles["operator"], lambda m: m.method == "INVITE", 90)
        made = await record(stack, "+817033330001")
        carrier_invites = roles["carrier-a"].invites_received() + \
            roles["carrier-b"].invites_received()
    assert invite.ruri_user == "operator"
    assert {m.ruri_user for m in carrier_invites} == {"817033330001"}, "an offline one rang"
    assert made["method"] == "all_list" and made["advisor_id"] == chosen
    assert ring_outcomes(made) == [(chosen, "answered")]
