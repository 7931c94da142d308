"""In-dialog requests through the edge's Kamailio front reach the node that took the call.

Two edges behind Kamailio (``Sites(edge_servers=2)``), a merchant whose edge answers
(``announce_mode = "answer"``): the edge sends 200, plays the announcement and hangs up
with a BYE. Two calls, one after the other, go one to each edge (round robin); for each,
asserted on the customer's SIPp trace: the 200's Contact is that edge's own address and
it carries Kamailio's Record-Route; the customer's ACK (Route: Kamailio) reached the edge,
which therefore sent its 200 once (an edge that got no ACK retransmits it from 500 ms
on); and the edge's BYE came through Kamailio (its top Via is Kamailio's) and was
answered.

A caller who hangs up during the early media sends CANCEL through Kamailio: it answers
the CANCEL and passes it, on the INVITE's transaction, to the edge that sent the 183,
which ends the call with 487 (the 487 carries that edge's To tag, not one of
Kamailio's).
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from demo.stack import MerchantOptions
from tests.faults.sites import Sites
from tests.harness import sipp as sipp_harness

KAMAILIO = "127.0.0.2:5060"
EDGE_PORTS = {"5160": "edge", "5162": "edge2"}

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


async def test_ack_and_bye_of_a_call_go_through_kamailio_to_the_edge_that_answered(
        tmp_path: Path) -> None:
    sites = Sites(tmp_path, merchants=(MerchantOptions(announce_mode="answer"),),
                  db_prefix=f"cbgw_edgedlg{os.getpid()}", callback_servers=1, edge_servers=2)
    answered_by = []
    async with sites:
        for caller in ("09031000001", "09031000002"):
            phone = sipp_harness.customer_call(tmp_path, dialled="0120123456", caller=caller,
                                               remote=sites.edge_sip)
            status = await asyncio.to_thread(phone.wait, 60)
            oks = [m for m in phone.responses_received()
                   if m.status == 200 and m.cseq_method == "INVITE"]
            assert status == 0 and oks, phone.describe()
            contact = re.search(r"127\.0\.0\.1:(\d+)", oks[0].header("contact") or "")
            answered_by.append(EDGE_PORTS.get(contact.group(1)) if contact else None)
            assert KAMAILIO.split(":")[0] in (oks[0].header("record-route") or ""), oks[0]
            assert len(oks) == 1, f"the 200 was retransmitted: no ACK reached the edge\n{oks}"
            byes = phone.requests_received("BYE")
            assert len(byes) == 1, phone.describe()
            assert KAMAILIO.split(":")[0] in (byes[0].header("via") or "").split(",")[0], byes[0]
            assert any(m.status == 200 and m.cseq_method == "BYE"
                       for m in phone.responses_sent()), phone.describe()
    assert sorted(str(e) for e in answered_by) == ["edge", "edge2"], answered_by


def to_tag(message: sipp_harness.SipMessage) -> str | None:
    found = re.search(r";tag=([^;>\s]+)", message.header("to") or "")
    return found.group(1) if found else None


async def test_a_cancel_during_early_media_reaches_the_edge_playing_it(
        tmp_path: Path) -> None:
    sites = Sites(tmp_path, merchants=(MerchantOptions(),),
                  db_prefix=f"cbgw_edgecancel{os.getpid()}", callback_servers=1,
                  edge_servers=2)
    cancelled_by = []
    async with sites:
        for caller in ("09031000011", "09031000012"):
            phone = sipp_harness.customer_call(tmp_path, dialled="0120123456", caller=caller,
                                               remote=sites.edge_sip,
                                               scenario="customer_cancel.xml")
            status = await asyncio.to_thread(phone.wait, 60)
            assert status == 0, phone.describe()
            early = [m for m in phone.responses_received() if m.status == 183]
            assert len(early) == 1 and early[0].has_sdp, phone.describe()
            contact = re.search(r"127\.0\.0\.1:(\d+)", early[0].header("contact") or "")
            cancelled_by.append(EDGE_PORTS.get(contact.group(1)) if contact else None)
            assert set(phone.statuses_received("CANCEL")) == {200}, phone.describe()
            ends = [m for m in phone.responses_received()
                    if m.cseq_method == "INVITE" and (m.status or 0) >= 200]
            assert {m.status for m in ends} == {487}, phone.describe()
            assert to_tag(ends[0]) == to_tag(early[0]) is not None, (early[0], ends[0])
            assert "kamailio" not in (ends[0].header("server") or ""), ends[0]
    assert sorted(str(e) for e in cancelled_by) == ["edge", "edge2"], cancelled_by
