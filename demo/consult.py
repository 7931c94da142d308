"""The consultation in ``make demo``: a customer reaches an advisor by a 4-digit code.

A second merchant of the same stack, a fortune-telling line on the consult flow
(Japanese prompts). Through the callback site's advisors and billing APIs (the
merchant's bearer token) an advisor goes online and the customer's prepaid balance is
funded by a bank transfer. The customer calls the line's toll-free number at the edge,
is called back (carrier B refuses, carrier A is their phone), confirms, keys advisor
code 1234; the advisor's phone (the edge's SIP phone, a SIPp UAS) rings, answers and
hangs up 20 s later; the customer is hung up after the goodbye. The timeline is read
back from SIPp's logs and both databases.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from demo.stack import MerchantOptions, Stack, StackError
from demo.timeline import Entry, db_entries, sip_entries

TOKEN = "demo-uranai-token"
LINE = MerchantOptions(id="uranai", name="Hoshiyomi Fortune Line", number="0120777888",
                       pre_callback_delay_s="0", ivr_flow="consult", api_token=TOKEN)
CALLER = "07012345678"
ADVISOR_NAME = "星野ひかり"
ADVISOR_CODE = "1234"
PRICE_PER_MINUTE_YEN = 200
DEPOSIT_YEN = 10_000
# confirm the call-back (1), "an advisor by code" (1), the code
DIGITS = "1" + "1" + ADVISOR_CODE
TOKYO = ZoneInfo("Asia/Tokyo")


def e164(national: str) -> str:
    return "+81" + national[1:]


async def _call(session: aiohttp.ClientSession, stack: Stack, method: str, path: str,
                body: dict[str, Any]) -> dict[str, Any]:
    async with session.request(method, stack.callback_url + path, json=body,
                               headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        data: dict[str, Any] = await resp.json()
        if resp.status not in (200, 201):
            raise StackError(f"{method} {path}: HTTP {resp.status} {data}")
        return data


async def set_up(stack: Stack) -> int:
    """The advisor online and the customer's balance funded; returns the advisor's id."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=stack.client_ssl())) as session:
        await _call(session, stack, "PUT", "/v1/advisor-settings",
                    {"ring_timeout_s": 20, "lines": 10, "misses_before_break": 3})
        made = await _call(session, stack, "POST", "/v1/advisors", {
            "display_name": ADVISOR_NAME, "code": ADVISOR_CODE,
            "contact": {"kind": "sip", "user": "operator"},
            "price_per_minute_yen": PRICE_PER_MINUTE_YEN})
        advisor_id = int(made["id"])
        await _call(session, stack, "PUT", f"/v1/advisors/{advisor_id}/presence",
                    {"presence": "online"})
        await _call(session, stack, "POST", "/v1/billing/bank-transfers", {
            "account": e164(CALLER), "amount_yen": DEPOSIT_YEN,
            "transferred_on": datetime.now(TOKYO).date().isoformat(),
            "payer_name": "ヤマダ タロウ", "bank_reference": f"demo-{uuid.uuid4()}",
            "entered_by": "demo"})
    return advisor_id


async def run(stack: Stack) -> list[Entry]:
    """Set up, make the call, and return its timeline once the record reached the edge."""
    advisor_id = await set_up(stack)
    print(f"== advisor {ADVISOR_NAME} (code {ADVISOR_CODE}) online at {LINE.name}; "
          f"{DEPOSIT_YEN} yen deposited for {CALLER}")
    async with stack.carriers(digits=DIGITS, operator="uas_answer_dtmf_bye.xml",
                              pcap_options={"tail_ms": 20_000}) as roles:
        print(f"== customer {CALLER} dials 186-{LINE.number} at the edge and keys advisor "
              f"code {ADVISOR_CODE} on the call-back")
        phone = stack.customer_call(CALLER, dialled=LINE.number)
        phone.wait(timeout=40)
        made = await stack.wait_for_row("callback", "SELECT * FROM consultations WHERE "
                                        "customer_number = $1", e164(CALLER), timeout_s=120)
        await stack.wait_for_row("edge", "SELECT 1 FROM consultations WHERE "
                                 "consultation_id = $1", made["consultation_id"],
                                 timeout_s=60)
        await stack.wait_for_row("callback", "SELECT 1 FROM billing_settlements s JOIN "
                                 "billing_reservations r ON r.id = s.reservation_id "
                                 "WHERE r.consultation_id = $1", made["consultation_id"])
        # after the advisor's BYE the customer hears the goodbye, then the gateway's BYE
        await asyncio.to_thread(roles["carrier-a"].wait_for, lambda m: m.method == "BYE", 30)
        entries = sip_entries(phone, "customer→edge")
        entries += sip_entries(roles["carrier-b"], "carrier B (cheapest)")
        entries += sip_entries(roles["carrier-a"], "carrier A → customer")
        entries += sip_entries(roles["operator"], "advisor's phone")
    if made["edge_call_id"]:
        entries += (await db_entries(stack, made["edge_call_id"]))[0]
    return entries + await consultation_entries(stack, dict(made), advisor_id)


async def consultation_entries(stack: Stack, made: dict[str, Any], advisor_id: int
                               ) -> list[Entry]:
    out: list[Entry] = []
    cid = made["consultation_id"]
    for t in await stack.fetch("callback", "SELECT t.* FROM billing_transactions t JOIN "
                               "billing_accounts a ON a.id = t.account_id WHERE "
                               "a.account = $1 AND t.kind = 'deposit'", made["customer_number"]):
        out.append(Entry(t["created_at"], "billing", f"deposit {t['amount_yen']} yen to "
                         f"{made['customer_number']} ({t['reason']})"))
    out.append(Entry(made["requested_at"], "callback", f"customer chose by "
                     f"{made['method']} and keyed {ADVISOR_CODE}: advisor {ADVISOR_NAME}"))
    for e in await stack.fetch("callback", "SELECT * FROM advisor_events WHERE "
                               "advisor_id = $1 ORDER BY id", advisor_id):
        out.append(Entry(e["at"], "presence", f"{ADVISOR_NAME}: {e['event']} "
                         f"({e['before']} → {e['after']})"))
    for r in await stack.fetch("callback", "SELECT * FROM billing_reservations WHERE "
                               "consultation_id = $1", cid):
        out.append(Entry(r["created_at"], "billing", f"hold {r['held_yen']} yen of the "
                         f"balance: pays for {r['allowed_s']} s of talk"))
    if made["answered_at"]:
        out.append(Entry(made["answered_at"], "callback", "advisor answered: customer and "
                         "advisor bridged, talking"))
    out.append(Entry(made["ended_at"], "callback", f"consultation record: advisor "
                     f"{ADVISOR_NAME}, method {made['method']}, talk {made['talk_s']} s, "
                     f"end {made['end_reason']}"))
    for s in await stack.fetch("callback", "SELECT s.* FROM billing_settlements s JOIN "
                               "billing_reservations r ON r.id = s.reservation_id "
                               "WHERE r.consultation_id = $1", cid):
        out.append(Entry(s["settled_at"], "billing", f"settled: {s['talk_s']} s talk, "
                         f"{s['billed_s']} s billed, charge {s['total_yen']} yen incl. "
                         f"{s['tax_yen']} yen tax; {s['released_yen']} yen released"))
    for r in await stack.fetch("edge", "SELECT * FROM consultations WHERE "
                               "consultation_id = $1", cid):
        out.append(Entry(r["recorded_at"], "edge", f"consultation record stored for the "
                         f"merchant: method {r['method']}, talk {r['talk_s']} s, "
                         f"end {r['end_reason']}"))
    return out
