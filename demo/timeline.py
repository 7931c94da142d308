"""One call-back, told as a timeline from the SIP wire and both sites' databases.

Every line is a fact read back after the call: a SIP message from a SIPp
log, or a timestamped row in the edge or callback database. Nothing here is
taken from the servers' own logs, so the timeline checks what happened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from demo.stack import Stack
from shared.money import FxTable, Money
from tests.harness.sipp import SipMessage, SippRole


@dataclass(frozen=True, order=True)
class Entry:
    at: datetime
    source: str
    text: str


def sip_entries(role: SippRole, label: str) -> list[Entry]:
    entries = []
    for msg in role.messages():
        if msg.method in ("OPTIONS",) or msg.cseq_method == "OPTIONS":
            continue
        arrow = "→" if msg.direction == "sent" else "←"
        text = msg.first_line
        if msg.method == "INVITE":
            text = f"INVITE {msg.ruri} (from {msg.from_user})"
        entries.append(Entry(msg.at, f"SIP {label}", f"{arrow} {text}"))
    return entries


async def db_entries(stack: Stack, edge_call_id: str) -> tuple[list[Entry], dict[str, Any]]:
    out: list[Entry] = []
    facts: dict[str, Any] = {}
    call = (await stack.fetch("edge", "SELECT * FROM edge_calls WHERE edge_call_id = $1",
                              edge_call_id))[0]
    facts["edge_call"] = dict(call)
    out.append(Entry(call["received_at"], "edge", f"inbound call from {call['caller']} to "
                     f"{call['dialed']}; decision: {call['decision_reason']}"))
    if call["stored_at"]:
        out.append(Entry(call["stored_at"], "edge", "call-back request stored durably "
                         "(request + held outbox message, one transaction)"))
    if call["hungup_at"]:
        out.append(Entry(call["hungup_at"], "edge", f"inbound leg ended ({call['outcome']})"))
    if call["released_at"]:
        out.append(Entry(call["released_at"], "edge", "request released to the link"))
    for row in await stack.fetch("edge", "SELECT * FROM outbox WHERE message_id = $1",
                                 call["message_id"]):
        if row["delivered_at"]:
            out.append(Entry(row["delivered_at"], "link", f"handoff acknowledged by the "
                             f"callback site via {row['last_route']} "
                             f"(attempt {row['attempts']})"))
    cb_rows = await stack.fetch("callback", "SELECT * FROM callback_requests "
                                "WHERE edge_call_id = $1", edge_call_id)
    if cb_rows:
        out += await _callback_entries(stack, dict(cb_rows[0]), facts)
    for r in await stack.fetch("edge", "SELECT * FROM requests WHERE edge_call_id = $1",
                               edge_call_id):
        out.append(Entry(r["received_at"], "edge", f"request info stored for the call "
                         f"center: {r['category']} {json.dumps(r['fields'])}"))
    for c in await stack.fetch("edge", "SELECT * FROM cdrs WHERE edge_call_id = $1",
                               edge_call_id):
        out.append(Entry(c["received_at"], "edge", f"CDR {c['call_id'][:12]}… stored for "
                         f"the call center"))
    return out, facts


async def _callback_entries(stack: Stack, cb: dict[str, Any], facts: dict[str, Any]
                            ) -> list[Entry]:
    out: list[Entry] = []
    facts["callback"] = cb
    out.append(Entry(cb["accepted_at"], "callback", f"request {cb['callback_id']} accepted "
                     f"(signature verified, stored, job queued for {cb['next_attempt_at']:%T})"))
    attempts = await stack.fetch("callback", "SELECT * FROM callback_attempts "
                                 "WHERE callback_id = $1 ORDER BY leg_seq", cb["callback_id"])
    for a in attempts:
        out.append(Entry(a["created_at"], "callback", f"{a['leg']} leg {a['leg_seq']}: "
                         f"originate via {a['carrier_id']} ({a['endpoint']})"))
        if a["cause"] is not None:
            out.append(Entry(a["updated_at"], "callback", f"{a['leg']} leg via "
                             f"{a['carrier_id']} ended: {a['status']}, cause {a['cause']}"))
    for r in await stack.fetch("callback", "SELECT * FROM request_info WHERE callback_id = $1",
                               cb["callback_id"]):
        out.append(Entry(r["collected_at"], "callback", f"IVR collected {r['category']}: "
                         f"{json.dumps(r['fields'])}"))
    for c in await stack.fetch("callback", "SELECT * FROM cdrs WHERE callback_id = $1",
                               cb["callback_id"]):
        facts.setdefault("cdrs", []).append(dict(c))
        out.append(Entry(c["ended_at"], "callback", f"CDR {c['leg']} via {c['carrier_id']}: "
                         f"{c['disposition']}, {c['duration_s']} s, billed {c['billed_s']} s, "
                         f"cost {c['carrier_cost']} {c['carrier_currency']}"))
    return out


def render(entries: list[Entry]) -> str:
    entries = sorted(entries)
    if not entries:
        return "(nothing happened)"
    t0 = entries[0].at
    width = max(len(e.source) for e in entries)
    lines = []
    for e in entries:
        offset = (e.at - t0).total_seconds() * 1000
        lines.append(f"  +{offset:9.1f} ms  {e.source:<{width}}  {e.text}")
    return "\n".join(lines)


def cost_summary(facts: dict[str, Any], fx: FxTable) -> str:
    """This call's carrier cost against the same call kept on the toll-free number."""
    cdrs = [c for c in facts.get("cdrs", []) if c["carrier_cost"] is not None]
    if not cdrs:
        return "  no rated CDR"
    lines = []
    total = Money.zero("JPY")
    for c in cdrs:
        cost = fx.convert(Money(Decimal(c["carrier_cost"]), c["carrier_currency"]), "JPY")
        total = total + cost
        lines.append(f"  call-back leg via {c['carrier_id']}: {c['carrier_cost'].normalize()} "
                     f"{c['carrier_currency']} = {cost.round_up(2).amount} JPY "
                     f"({c['billed_s']} s billed for {c['duration_s']} s)")
    answered = [c for c in cdrs if c["direct_cost"] is not None]
    if answered:
        direct = Money(Decimal(answered[0]["direct_cost"]), answered[0]["direct_currency"])
        direct = fx.convert(direct, "JPY")
        lines.append(f"  the same call kept on the toll-free line: {direct.round_up(2).amount} JPY")
        verdict = "saved" if total < direct else "cost"
        delta = abs((direct - total).amount).quantize(Decimal("0.01"))
        lines.append(f"  this call {verdict} {delta} JPY by calling back (short calls can lose "
                     "under 60/60 billing; the decision uses the expected call length)")
    return "\n".join(lines)


def first(messages: list[SipMessage], method: str) -> SipMessage | None:
    return next((m for m in messages if m.method == method), None)
