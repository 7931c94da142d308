"""The edge scaled out behind Kamailio: one edge Asterisk killed with kill -9 mid-run.

Kamailio (``deploy/kamailio``, dispatcher round robin, OPTIONS every second) in front of
two edge Asterisks, each driven by its own ``edge_server`` on ONE edge database
(``Sites(edge_servers=2)``). One SIPp calls the toll-free number through Kamailio from
``EDGE_FAILOVER_CALLS`` (default 60) distinct numbers at ``EDGE_FAILOVER_RATE`` calls/s;
once both edges have taken calls and edge2 holds a stored request on a live call, edge2's
Asterisk is killed with SIGKILL.

Asserted on SIP facts (the customers' and carriers' SIPp traces) and the edge database:

* before the kill, both edges answered calls with early media (a 183 with SDP whose
  Contact is each Asterisk's own address);
* after the kill, the first call that gets a 183 from the surviving edge gets it within
  5 s of the kill, and every call placed from 5 s after the kill on gets its 183 from the
  survivor and its announcement (486 after the early media): none fails;
* every request edge2 had stored for a call still up at the kill is released by the
  edge's crash recovery (the held-request sweeper, shared by both edge servers through
  the database) and called back: its call-back INVITE reaches a carrier.

It also prints what a call costs each part in CPU (``tests/faults/cpu.py``: Kamailio,
the surviving edge's Asterisk and server, the callback Asterisk and server, less what each
burns idle), the measured figures of deploy/README.md's sizing.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench._machine import speed_line
from demo.stack import MerchantOptions
from tests.faults.cpu import CpuMeter, Part, per_call_ms
from tests.faults.sites import (
    LOAD_GUARD_ENV,
    Sites,
    customer_numbers,
    start_carrier,
    start_customers,
    wait_finished,
)
from tests.harness import asterisk as ast_harness
from tests.harness import kamailio as kamailio_harness
from tests.harness import sipp as sipp_harness

CALLS = int(os.environ.get("EDGE_FAILOVER_CALLS", "60"))
RATE = float(os.environ.get("EDGE_FAILOVER_RATE", "2"))
KEYS = "1" + "2" + "123#"       # the call-back's IVR: confirm, inquiry, order number
SPREAD_CALLS = 5               # calls each edge takes before the kill
IDLE_S = 5.0                    # the parts' idle CPU is read over this long before the calls
FAILOVER_BOUND_S = 5.0
EDGE_PORTS = {"5160": "edge", "5162": "edge2"}
#: crash recovery made quick for the test: a request held 10 s (the minimum) is released
SWEEP_ENV = {"EDGE__EDGE__SWEEP_AFTER_S": "10", "EDGE__EDGE__SWEEP_EVERY_S": "2"}

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


@dataclass(frozen=True)
class CustomerCall:
    """One customer call as its SIPp saw it."""

    caller: str
    invited_at: datetime
    early_at: datetime | None           # the first 183 with SDP
    edge: str | None                    # which edge Asterisk sent it (its Contact)
    final: int | None


def customer_calls(role: sipp_harness.SippRole) -> list[CustomerCall]:
    """Each call's INVITE, first 183 with SDP (and whose Contact) and final response."""
    messages: dict[str, list[sipp_harness.SipMessage]] = {}
    for m in role.dialog_messages():
        if m.call_id is not None:
            messages.setdefault(m.call_id, []).append(m)
    calls = []
    for dialog in messages.values():
        invite = next((m for m in dialog if m.direction == "sent" and m.method == "INVITE"),
                      None)
        if invite is None:
            continue
        received = [m for m in dialog if m.direction == "received" and m.status is not None
                    and m.cseq_method == "INVITE"]
        early = next((m for m in received if m.status == 183 and m.has_sdp), None)
        contact = re.search(r"127\.0\.0\.1:(\d+)", early.header("contact") or "") \
            if early else None
        final = next((m.status for m in received if m.status and m.status >= 300), None)
        calls.append(CustomerCall(str(invite.from_user), invite.at,
                                  early.at if early else None,
                                  EDGE_PORTS.get(contact.group(1)) if contact else None, final))
    return sorted(calls, key=lambda c: c.invited_at)


def called_back(carriers: Sequence[sipp_harness.SippRole]) -> set[str]:
    """Numbers (E.164 digits) whose call-back INVITE reached a carrier."""
    return {m.ruri_user for role in carriers for m in role.requests_received("INVITE")
            if m.ruri_user}


async def wait_called_back(carriers: Sequence[sipp_harness.SippRole], numbers: set[str],
                           within_s: float) -> None:
    """Until every one of ``numbers`` got its call-back INVITE (or ``within_s`` passed)."""
    deadline = time.monotonic() + within_s
    while True:
        if numbers <= called_back(carriers) or time.monotonic() > deadline:
            return
        await asyncio.sleep(1)


async def wait_for_stored_on_both(sites: Sites, within_s: float) -> None:
    """Until both edges have taken ``SPREAD_CALLS`` calls each and edge2 holds a stored
    request right now."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        rows = await sites.fetch(
            "edge", "SELECT count(*) FILTER (WHERE channel_id LIKE 'cbgw-edge-%') AS edge1, "
                    "count(*) FILTER (WHERE channel_id LIKE 'cbgw-edge2-%') AS edge2, "
                    "count(*) FILTER (WHERE channel_id LIKE 'cbgw-edge2-%' "
                    "AND state = 'stored') AS held2 FROM edge_calls")
        if min(rows[0]["edge1"], rows[0]["edge2"]) >= SPREAD_CALLS and rows[0]["held2"] > 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no request held on edge2 within {within_s} s:\n"
                         f"{kamailio_harness.log_text()[-3000:]}")


def meter(sites: Sites) -> CpuMeter:
    pids = {"kamailio": kamailio_harness.running_pid(),
            "edge Asterisk": ast_harness.running_pid("edge"),
            "callback Asterisk": ast_harness.running_pid("callback")}
    missing = [name for name, pid in pids.items() if pid is None]
    assert not missing, f"not running: {missing}"
    parts = {name: Part(int(pid or 0), group=name == "kamailio") for name, pid in pids.items()}
    parts["edge server"] = Part(sites.pid("edge"))
    parts["callback server"] = Part(sites.pid("callback"))
    return CpuMeter(parts)


async def test_edge_asterisk_killed_behind_kamailio_fails_over_and_calls_back_stored(
        tmp_path: Path) -> None:
    merchant = MerchantOptions(pre_callback_delay_s="0", max_attempts=3,
                               retry_backoff_s=(5, 10, 20))
    sites = Sites(tmp_path, merchants=(merchant,), db_prefix=f"cbgw_edgefo{os.getpid()}",
                  log_level="INFO", extra_env={**LOAD_GUARD_ENV, **SWEEP_ENV},
                  callback_servers=1, edge_servers=2)
    async with sites:
        carriers = [start_carrier("uas_answer_dtmf.xml", name, tmp_path, digits=KEYS)
                    for name in ("carrier-a", "carrier-b")]
        try:
            await sites.qualify_carriers()
            cpu = meter(sites)
            idle_from = cpu.read()
            await asyncio.sleep(IDLE_S)
            busy_from, busy_started = cpu.read(), time.monotonic()
            idle_rate = {k: (busy_from[k] - v) / IDLE_S for k, v in idle_from.items()}
            customers = start_customers(tmp_path, customer_numbers(CALLS), rate=RATE,
                                        name="customers", remote=sites.edge_sip)
            await wait_for_stored_on_both(sites, within_s=CALLS / RATE)
            killed_at = datetime.now(UTC)
            await asyncio.to_thread(ast_harness.kill9, "edge2")
            held = await sites.fetch(
                "edge", "SELECT edge_call_id, caller FROM edge_calls WHERE channel_id LIKE "
                        "'cbgw-edge2-%' AND stored_at < $1 AND (released_at IS NULL "
                        "OR released_at > $1)", killed_at)
            await asyncio.to_thread(customers.wait, CALLS / RATE + 120)
            wanted = {str(row["caller"]).lstrip("+") for row in held}
            await wait_called_back(carriers, wanted, within_s=120)
            stored = await sites.fetch("edge", "SELECT count(*) AS n FROM edge_calls "
                                               "WHERE state = 'released'")
            finished = await wait_finished(sites, int(stored[0]["n"]), within_s=240)
            busy_to = cpu.read()
            busy_s = time.monotonic() - busy_started
            released = await sites.fetch(
                "edge", "SELECT edge_call_id, state, outcome FROM edge_calls "
                        "WHERE edge_call_id = ANY($1)", [row["edge_call_id"] for row in held])
        finally:
            for carrier in carriers:
                carrier.stop()
    calls = customer_calls(customers)
    answered_back = sum(1 for role in carriers for m in role.responses_sent()
                        if m.status == 200 and m.cseq_method == "INVITE")
    on_edge = sum(c.edge == "edge" for c in calls)
    costs = per_call_ms(busy_from, busy_to, {
        "kamailio": len(calls), "edge Asterisk": on_edge, "edge server": on_edge,
        "callback Asterisk": answered_back, "callback server": answered_back},
        idle_rate=idle_rate, seconds=busy_s)
    before = [c for c in calls if c.early_at is not None and c.early_at < killed_at]
    after = [c for c in calls if c.invited_at >= killed_at]
    first = min((c.early_at for c in after if c.early_at is not None and c.edge == "edge"),
                default=None)
    settled = killed_at + timedelta(seconds=FAILOVER_BOUND_S)
    late = [c for c in calls if c.invited_at >= settled]
    failed_late = [c for c in late if c.edge != "edge" or c.final != 486]
    took = (first - killed_at).total_seconds() if first else float("nan")
    worst = max(((c.early_at - c.invited_at).total_seconds() for c in after
                 if c.early_at is not None), default=float("nan"))
    print(f"\nedge failover: {len(calls)} calls through Kamailio at {RATE}/s; before the kill "
          f"edge {sum(c.edge == 'edge' for c in before)}, edge2 "
          f"{sum(c.edge == 'edge2' for c in before)}; first 183 from the survivor "
          f"{took:.2f} s after the kill; slowest INVITE-to-183 after the kill {worst:.2f} s; "
          f"{len(held)} request(s) held on edge2 at the kill, called back "
          f"{len(wanted & called_back(carriers))}; call-backs {finished[2]}, "
          f"{answered_back} answered")
    print(speed_line())
    print("CPU per call (ms; idle subtracted): " + ", ".join(
        f"{name} {ms:.1f} (≈ {1000 / ms:.0f} calls/s a core)" if ms else f"{name} {ms:.1f}"
        for name, ms in costs.items()))
    assert len(calls) == CALLS, f"SIPp placed {len(calls)} of {CALLS} calls"
    assert {c.edge for c in before} == {"edge", "edge2"}, \
        f"calls were not spread over both edges before the kill: {before}"
    assert first is not None and took <= FAILOVER_BOUND_S, \
        f"no 183 from the surviving edge within {FAILOVER_BOUND_S} s of the kill ({took})"
    assert late and not failed_late, \
        f"calls placed {FAILOVER_BOUND_S} s after the kill failed: {failed_late}"
    assert held, "no request was held on edge2 at the kill"
    assert wanted <= called_back(carriers), \
        f"requests held on the killed edge never called back: {wanted - called_back(carriers)}"
    assert all(row["state"] == "released" for row in released), released
