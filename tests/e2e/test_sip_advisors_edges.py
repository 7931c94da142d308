"""Advisors' softphones rung at whichever edge Asterisk they registered to, end to end.

The edge scaled out as in the failover test (``tests.faults.sites.Sites``, two edge
Asterisks, each with its own ``edge_server`` on one edge database, Kamailio in front):
every edge Asterisk has every advisor endpoint (each edge server pushes the one table to
its own), a softphone registers at one of them, and the callback site's trunks reach
the first, then the second when the first fails (``[callback] edge_trunks``). The edge
with no contact for the endpoint forwards the call over its ``edge-peer`` trunk to the
other, which rings its own contact only (a call crosses at most once). Proved on the
wire: SIPp registers to edge2 and answers the callback site's advisor leg that arrived
at edge1 (a consultation by code), the INVITE it gets is edge2's; a phone registered at
edge1 answers a leg sent to edge2; an endpoint registered nowhere is refused 480 at once
through either edge; with edge1's Asterisk stopped the advisor leg fails over to the
callback site's second trunk and reaches the softphone at edge2.

The callback site knows the endpoints over the link: an advisor whose SIP user has no
endpoint at the edge is refused (400 ``contact.user``), and the advisor shows
``sip_registered`` turning true once the phone registered at edge2.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from demo.stack import MerchantOptions
from tests.e2e.test_consult_calls import Admin, ring_outcomes, wait_for
from tests.e2e.test_sip_advisors import (
    ADVISOR_PORT,
    consult_by_code,
    over_trunk,
    provision,
    refusals,
    register,
    sip,
)
from tests.faults.sites import Sites
from tests.harness import asterisk as ast_harness
from tests.harness.sipp import EDGE_SIP, start_role

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ACME = MerchantOptions(pre_callback_delay_s="0", ivr_flow="consult")
EDGE2_SIP = ("127.0.0.1", 5162)
EDGE_OF_PORT = {EDGE_SIP[1]: "edge", EDGE2_SIP[1]: "edge2"}


@pytest.fixture(scope="module")
async def sites(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sites]:
    async with Sites(tmp_path_factory.mktemp("sipedges"), merchants=(ACME,),
                     db_prefix="cbgw_e2e_sipedges", log_level="DEBUG",
                     callback_servers=1, edge_servers=2) as running:
        yield running


@pytest.fixture
async def admin(sites: Sites) -> AsyncIterator[Admin]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=sites.client_ssl())) as session:
        yield Admin(sites, session)


async def endpoint_at_both(sites: Sites, user: str, password: str) -> str:
    """Provisioned once over edge1's API: pushed to both edge Asterisks."""
    return await provision(sites, user, password,
                           [sites.asterisks["edge"], sites.asterisks["edge2"]])


def sent_by(invite_via: str | None) -> str | None:
    """Which edge Asterisk sent a request, from its top Via."""
    for port, edge in EDGE_OF_PORT.items():
        if f"127.0.0.1:{port}" in (invite_via or ""):
            return edge
    return None


def on_edge2(name: str) -> str:
    """The callback Asterisk's trunk, but to edge2's address (the trunk is edge1's)."""
    return f"PJSIP/edge-trunk/sip:{name}@{EDGE2_SIP[0]}:{EDGE2_SIP[1]}"


async def test_a_softphone_registered_at_edge2_is_rung_when_the_leg_reaches_edge1(
        sites: Sites, admin: Admin) -> None:
    await admin.call("PUT", "/v1/advisor-settings", {"ring_timeout_s": 20, "lines": 10,
                                                      "misses_before_break": 3})
    user, password = f"hoshino{uuid.uuid4().hex[:6]}", f"pw-{uuid.uuid4()}"
    endpoint = await endpoint_at_both(sites, user, password)
    async with admin.session.post(admin.url + "/v1/advisors", headers=admin.headers, json={
            "display_name": "星野", "code": "2580", "price_per_minute_yen": 200,
            "contact": sip(f"x{user}")}) as resp:     # no such endpoint at the edge
        refused = await resp.json()
    assert resp.status == 400 and refused["error"]["field"] == "contact.user", refused
    chosen = await admin.advisor("星野", "2580", sip(user))
    assert (await admin.call("GET", f"/v1/advisors/{chosen}", {}))["sip_registered"] is False
    registered = register(sites.workdir, endpoint, password, edge=EDGE2_SIP)
    assert registered.statuses_received("REGISTER") == [401, 200]
    # edge2's server reads the registration and the callback site is told of it
    await sites.wait_for_row("callback", "SELECT 1 FROM edge_sip_endpoints WHERE "
                             "sip_user = $1 AND registered", user, timeout_s=15)
    assert (await admin.call("GET", f"/v1/advisors/{chosen}", {}))["sip_registered"] is True
    invite, made, operator_invites = await consult_by_code(sites, admin, "07022230001",
                                                            "2580")
    assert invite.ruri_user == endpoint
    assert sent_by(invite.header("via")) == "edge2", invite.header("via")
    assert invite.from_user is not None and invite.from_user.endswith("7022230001"), \
        "the advisor sees the customer's number"
    assert operator_invites == []
    assert made["method"] == "code" and made["advisor_id"] == chosen
    assert ring_outcomes(made) == [(chosen, "answered")]
    legs = await sites.fetch("callback", "SELECT endpoint, answered FROM callback_attempts "
                             "WHERE leg = 'advisor' AND endpoint LIKE $1", f"%{endpoint}@%")
    # both edges up: the callback site's first trunk, edge1's, took the leg (edge-trunk2
    # is its second, tried only when edge1 fails)
    assert [(r["endpoint"], r["answered"]) for r in legs] == [
        (f"PJSIP/{endpoint}@edge-trunk", True)]


async def test_a_softphone_registered_at_edge1_is_rung_when_the_leg_reaches_edge2(
        sites: Sites, tmp_path: Path) -> None:
    user, password = f"yui{uuid.uuid4().hex[:6]}", f"pw-{uuid.uuid4()}"
    endpoint = await endpoint_at_both(sites, user, password)
    port = ADVISOR_PORT + 3
    register(tmp_path, endpoint, password, edge=EDGE_SIP, port=port)
    with start_role("uas_answer_hold.xml", port=port, workdir=tmp_path,
                    name="advisor-phone-edge1") as phone:
        ended = await refusals(sites, [endpoint], dial=on_edge2)
        invite = await wait_for(phone, lambda m: m.method == "INVITE", 5)
        answered = await wait_for(phone, lambda m: m.direction == "sent" and m.status == 200
                                  and m.cseq_method == "INVITE", 5)
    assert answered.call_id == invite.call_id
    assert sent_by(invite.header("via")) == "edge", invite.header("via")
    assert ended[endpoint][0] == 16, ended      # answered, then hung up by the probe


async def test_an_endpoint_registered_nowhere_is_refused_at_once_through_either_edge(
        sites: Sites) -> None:
    """Each edge forwards it to the other, which has no contact either and refuses it:
    480 back at the callback site (its cause 19) within a second or two, not after the
    ring time (nor bounced back: the other edge's [from-edge-peer] never forwards)."""
    endpoint = await endpoint_at_both(sites, f"absent{uuid.uuid4().hex[:6]}",
                                      f"pw-{uuid.uuid4()}")
    for dial in (over_trunk, on_edge2):
        started = time.monotonic()
        ended = await refusals(sites, [endpoint], dial=dial)
        took = time.monotonic() - started
        assert ended == {endpoint: (19, 480)}, (dial(endpoint), ended)
        assert took < 3, f"{dial(endpoint)} refused after {took:.1f} s"


async def edge_trunk_state(sites: Sites, trunk: str) -> str | None:
    async with sites.callback_site.client() as ari:
        state = await ari.get_endpoint("PJSIP", trunk)
    return None if state is None else state.state


async def test_with_edge1_s_asterisk_down_the_advisor_is_rung_through_edge2(
        sites: Sites, admin: Admin) -> None:
    """The callback site's trunks are edge1's then edge2's ([callback] edge_trunks): edge1's
    Asterisk stopped (its trunk unqualified at the callback site, the originate over it
    fails at once), the advisor leg goes over edge-trunk2 and reaches the softphone
    registered at edge2; no miss is counted. The customer calls through Kamailio, which
    sends the call to edge2 alone."""
    await admin.call("PUT", "/v1/advisor-settings", {"ring_timeout_s": 20, "lines": 10,
                                                      "misses_before_break": 1})
    user, password = f"mio{uuid.uuid4().hex[:6]}", f"pw-{uuid.uuid4()}"
    endpoint = await endpoint_at_both(sites, user, password)
    chosen = await admin.advisor("澪", "2581", sip(user))
    register(sites.workdir, endpoint, password, edge=EDGE2_SIP)
    await sites.wait_for_row("callback", "SELECT 1 FROM edge_sip_endpoints WHERE "
                             "sip_user = $1 AND registered", user, timeout_s=15)
    assert await edge_trunk_state(sites, "edge-trunk") == "online"
    await asyncio.to_thread(ast_harness.stop, "edge")
    first, sites.edge_site = sites.edge_site, sites.asterisks["edge2"]   # takes the calls
    try:
        deadline = time.monotonic() + 15
        while await edge_trunk_state(sites, "edge-trunk") != "offline":
            assert time.monotonic() < deadline, "edge-trunk still qualified 15 s after edge1"
            await asyncio.sleep(0.5)
        invite, made, _ = await consult_by_code(sites, admin, "07022230002", "2581",
                                                edge=sites.edge_sip)
    finally:
        sites.edge_site = first
        await asyncio.to_thread(ast_harness.ensure_running, "edge")
    assert invite.ruri_user == endpoint
    assert sent_by(invite.header("via")) == "edge2", invite.header("via")
    assert made["method"] == "code" and made["advisor_id"] == chosen
    assert ring_outcomes(made) == [(chosen, "answered")], made["rings"]
    legs = await sites.fetch("callback", "SELECT endpoint, status, answered FROM "
                             "callback_attempts WHERE leg = 'advisor' AND endpoint LIKE $1 "
                             "ORDER BY leg_seq", f"%{endpoint}@%")
    assert [(r["endpoint"], r["status"], r["answered"]) for r in legs] == [
        (f"PJSIP/{endpoint}@edge-trunk", "failed", False),
        (f"PJSIP/{endpoint}@edge-trunk2", "ended", True)], legs
    presence = (await admin.call("GET", f"/v1/advisors/{chosen}", {}))["presence"]
    assert presence["misses"] == 0 and presence["desk"] != "break", presence
