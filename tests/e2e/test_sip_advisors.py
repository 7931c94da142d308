"""Advisors' own softphones at the edge, end to end: real Asterisks, PostgreSQL, both
servers and SIPp.

The merchant provisions an advisor's SIP endpoint over the edge's API (stored at the
edge, pushed to the edge Asterisk over ARI: no restart, no config file edited); SIPp,
as the advisor's softphone, REGISTERs with digest auth as ``<merchant>.<user>``
(``deploy/sipp/advisor_register.xml``), then answers on the registered port. A
customer keys the advisor's code: the callback site rings ``<merchant>.<user>`` over
its edge trunk and the edge's dialplan rings that endpoint, not the operator phone.
An advisor whose endpoint is not registered is refused at once (480) and the next
advisor of the group is rung. Nothing else is reachable through the trunk: a trunk, a
carrier's endpoint, a number or an unknown name is refused with 404, and a request from
elsewhere naming a trunk in its From is not taken for that trunk.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from demo.stack import CALL_CENTER_TOKEN, MerchantOptions, Stack
from shared import ari
from tests.e2e.test_consult_calls import (
    ANYONE,
    BY_CODE,
    CONFIRM,
    Admin,
    events,
    pstn,
    record,
    ring_outcomes,
    wait_for,
)
from tests.harness import asterisk as ast_harness
from tests.harness.sipp import EDGE_SIP, SipMessage, SippRole, start_role

pytestmark = pytest.mark.e2e

ONLINE = "0120123457"        # the merchant's presence number: online
ACME = MerchantOptions(pre_callback_delay_s="0", ivr_flow="consult",
                       presence_online_number=ONLINE, presence_offline_number="0120123458")
ADVISOR_PORT = 15100        # the advisor's softphone: registers from here, rung here


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with Stack(tmp_path_factory.mktemp("sipadv"), merchants=(ACME,),
                     db_prefix="cbgw_e2e_sipadv", log_level="DEBUG") as running:
        yield running


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[Admin]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=stack.client_ssl())) as session:
        yield Admin(stack, session)


async def provision(stack: Stack, user: str, password: str,
                    edges: Sequence[ast_harness.AsteriskSite] = ()) -> str:
    """The merchant creates the endpoint at the edge; it is in the edge Asterisk (each of
    ``edges``, by default the stack's one) at once, and the callback site is told of it
    over the link (an advisor may have it as a contact from then on). Returns its name
    there."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=stack.client_ssl())) as session, session.put(
            f"{stack.edge_url}/v1/sip-endpoints/{user}", json={"password": password},
            headers={"Authorization": f"Bearer {CALL_CENTER_TOKEN}"}) as resp:
        made: dict[str, Any] = await resp.json()
        assert resp.status == 201, made
    assert password not in str(made)
    endpoint = str(made["endpoint"])
    assert endpoint == f"{ACME.id}.{user}"
    for site in edges or (stack.edge_site,):
        async with site.client() as ari:
            for _ in range(50):
                if await ari.get_endpoint("PJSIP", endpoint) is not None:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"{endpoint} was not pushed to {site.name} within 5 s")
    await stack.wait_for_row("callback", "SELECT 1 FROM edge_sip_endpoints WHERE "
                             "merchant_id = $1 AND sip_user = $2 AND present", ACME.id, user,
                             timeout_s=10)
    return endpoint


def register(workdir: Path, endpoint: str, password: str, *,
             edge: tuple[str, int] = EDGE_SIP, port: int = ADVISOR_PORT) -> SippRole:
    """The softphone's REGISTER (401 challenge, then 200 with digest credentials) from
    ``port`` to the edge Asterisk at ``edge``."""
    phone = start_role("advisor_register.xml", port=port, workdir=workdir,
                       name=f"register-{endpoint}", remote=edge, service=endpoint,
                       max_calls=1, timeout_s=15, keys={"expires": "600"},
                       extra_args=["-au", endpoint, "-ap", password])
    assert phone.wait(20) == 0, phone.describe()
    return phone


def sip(user: str) -> dict[str, str]:
    return {"kind": "sip", "user": user}


async def consult_by_code(stack: Stack, admin: Admin, customer: str, code: str, *,
                          edge: tuple[str, int] = EDGE_SIP
                          ) -> tuple[SipMessage, dict[str, Any], list[SipMessage]]:
    """A funded customer (a national number) calls ``edge`` and keys the advisor's
    ``code``; the advisor's softphone (SIPp on ``ADVISOR_PORT``) answers and hangs up. The
    INVITE it got, the consultation's record and the INVITEs the operator phone got."""
    await admin.fund(customer)
    async with stack.carriers(digits=CONFIRM + BY_CODE + code) as roles:
        with start_role("uas_answer_dtmf_bye.xml", port=ADVISOR_PORT,
                        workdir=stack.workdir, name=f"advisor-phone-{customer}") as phone:
            await asyncio.to_thread(stack.customer_call(customer, remote=edge).wait, 40)
            invite = await wait_for(phone, lambda m: m.method == "INVITE", 60)
            await wait_for(phone, lambda m: m.direction == "sent" and m.status == 200
                           and m.cseq_method == "INVITE", 10)
            await wait_for(phone, lambda m: m.method == "BYE" and m.direction == "sent", 40)
            made = await record(stack, "+81" + customer[1:])
        return invite, made, roles["operator"].invites_received()


async def test_a_registered_softphone_is_rung_by_code_not_the_operator(
        stack: Stack, admin: Admin) -> None:
    await admin.call("PUT", "/v1/advisor-settings", {"ring_timeout_s": 20, "lines": 10,
                                                      "misses_before_break": 3})
    user, password = f"hoshino{uuid.uuid4().hex[:6]}", f"pw-{uuid.uuid4()}"
    endpoint = await provision(stack, user, password)
    registered = register(stack.workdir, endpoint, password)
    assert registered.statuses_received("REGISTER") == [401, 200]
    chosen = await admin.advisor("星野", "2580", sip(user))
    invite, made, operator_invites = await consult_by_code(stack, admin, "07022220001",
                                                            "2580")
    assert invite.ruri_user == endpoint
    assert invite.from_user is not None and invite.from_user.endswith("7022220001"), \
        "the advisor sees the customer's number"
    assert operator_invites == [], "the operator phone was rung"
    assert made["method"] == "code" and made["advisor_id"] == chosen
    assert made["end_reason"] == "advisor_hangup"
    assert ring_outcomes(made) == [(chosen, "answered")]
    leg = await stack.wait_for_row(
        "callback", "SELECT * FROM callback_attempts WHERE leg = 'advisor' AND answered")
    assert leg["endpoint"] == f"PJSIP/{endpoint}@edge-trunk"
    # its CDR reaches the edge (not parked dead there as a destination that is no number)
    edge_cdr = await stack.wait_for_row(
        "edge", "SELECT * FROM cdrs WHERE call_id = $1", leg["channel_id"])
    assert (edge_cdr["destination"], edge_cdr["destination_kind"]) == (user, "sip")
    assert await stack.fetch("callback", "SELECT message_id FROM outbox WHERE kind = 'cdr' "
                             "AND dead_at IS NOT NULL") == []


async def test_an_unregistered_endpoint_is_refused_at_once_and_the_next_advisor_rung(
        stack: Stack, admin: Admin) -> None:
    """The advisor idle the longest has an endpoint whose phone never registered: the
    edge refuses the trunk's INVITE at once (not after the 20 s ring timeout), the
    miss is counted, and the next member (over PSTN) is rung and answers."""
    await admin.call("PUT", "/v1/advisor-settings", {"ring_timeout_s": 20, "lines": 10,
                                                      "misses_before_break": 3})
    user = f"absent{uuid.uuid4().hex[:6]}"
    endpoint = await provision(stack, user, f"pw-{uuid.uuid4()}")
    first = await admin.advisor("不在", "3691", sip(user))
    second = await admin.advisor("結衣", "4702", pstn("+81312340009"))
    await admin.group("all", [first, second])
    customer = "07022220002"
    await admin.fund(customer)
    async with stack.carriers(digits=CONFIRM + ANYONE) as roles:
        await asyncio.to_thread(stack.customer_call(customer).wait, 40)
        await wait_for(roles["carrier-a"], lambda m: m.method == "INVITE"
                       and m.ruri_user == "81312340009", 40)
        await stack.wait_for_row("callback", "SELECT 1 FROM advisor_events WHERE "
                                 "advisor_id = $1 AND event = 'answered'", second)
        refused = await stack.wait_for_row(
            "callback", "SELECT * FROM callback_attempts WHERE leg = 'advisor' AND "
            "endpoint = $1", f"PJSIP/{endpoint}@edge-trunk")
        customer_leg = await stack.wait_for_row(
            "callback", "SELECT channel_id FROM callback_attempts WHERE leg = 'customer' "
            "AND answered AND endpoint LIKE '%7022220002%'")
        async with stack.callback_site.client() as ari:   # the customer hangs up
            await ari.hangup(customer_leg["channel_id"])
        made = await record(stack, "+817022220002")
        operator_invites = roles["operator"].invites_received()
    assert operator_invites == []
    assert not refused["answered"] and refused["status"] in ("failed", "ended"), dict(refused)
    rang_s = (refused["updated_at"] - refused["created_at"]).total_seconds()
    assert rang_s < 3, f"the unregistered advisor's leg lasted {rang_s} s"
    assert ring_outcomes(made) == [(first, "missed"), (second, "answered")]
    assert ("ring_missed", "standby") in await events(stack, first)


def over_trunk(name: str) -> str:
    return f"PJSIP/{name}@edge-trunk"


async def refusals(stack: Stack, names: list[str],
                   dial: Callable[[str], str] = over_trunk
                   ) -> dict[str, tuple[int, int | None]]:
    """Each name as the callback site would ring it over its edge trunk (ARI originate
    on the callback Asterisk of ``dial(name)``, into a probe application): the Q.850
    cause and the SIP status it ended with (answered: hung up by the probe, 16)."""
    ended: dict[str, tuple[int, int | None]] = {}
    async with stack.callback_site.client(app="sip-probe") as probe:
        events = probe.events()
        assert isinstance(await anext(events), ari.Connected)
        for name in names:
            channel_id = f"probe-{uuid.uuid4().hex[:12]}"
            await probe.originate(dial(name), channel_id=channel_id,
                                  timeout=10)
            seen: list[str] = []
            try:
                async with asyncio.timeout(5):
                    async for event in events:
                        seen.append(type(event).__name__)
                        if isinstance(event, ari.ChannelDestroyed) \
                                and event.channel.id == channel_id:
                            ended[name] = (event.cause, event.tech_cause)
                            break
                        if isinstance(event, ari.StasisStart):  # answered: never expected
                            await probe.hangup(event.channel.id)
            except TimeoutError:
                raise AssertionError(await _unended(stack, dial(name), name, seen)) from None
    return ended


async def _unended(stack: Stack, dialled: str, name: str, seen: list[str]) -> str:
    """What each Asterisk logged of a probe call that did not end within 5 s, and the
    channels each still has."""
    logs = "\n".join(f"  {site}: {line}" for site in ast_harness.SIP_PORTS
                     for line in ast_harness.log_lines(site, name))
    sites = {"edge": stack.edge_site, "callback": stack.callback_site,
             **getattr(stack, "asterisks", {})}
    channels = []
    for site_name, site in sites.items():
        try:
            shown = await asyncio.to_thread(site.cli, "core show channels concise")
        except ast_harness.HarnessError as exc:
            shown = str(exc)
        channels.append(f"  {site_name}: {shown.strip() or '(none)'}")
    return (f"{dialled} had not ended after 5 s (probe events: {seen});\n{logs}\n"
            "channels:\n" + "\n".join(channels))


async def test_the_trunk_reaches_advisor_endpoints_only(stack: Stack) -> None:
    user = f"guarded{uuid.uuid4().hex[:6]}"
    absent = await provision(stack, user, f"pw-{uuid.uuid4()}")
    others = ["carrier-in", "callback-site", "edge-peer", "09012345678", "0120123456",
              f"{ACME.id}.nobody", f"{ACME.id}.operator"]
    async with stack.carriers() as roles:
        ended = await refusals(stack, [absent, *others])
        await asyncio.sleep(0.5)
        rung = [m for role in roles.values() for m in role.invites_received()]
    # the edge's 480 (cause 20) reads as cause 19 (no answer) at the callback site
    assert ended == {absent: (19, 480), **{name: (1, 404) for name in others}}, ended
    assert rung == [], [str(m) for m in rung]


async def test_a_request_naming_a_trunk_from_elsewhere_is_not_that_trunk(
        stack: Stack) -> None:
    """From 127.0.0.1:15101 (no trunk's address), an INVITE whose From user is the
    callback site's trunk, for the operator: identification by user name does not
    apply to the trunks (identify_by = ip), so it is refused and no phone rings."""
    async with stack.carriers() as roles:
        caller = start_role("customer_call.xml", port=ADVISOR_PORT + 1, workdir=stack.workdir,
                            name="spoofed-trunk", remote=EDGE_SIP, service="operator",
                            max_calls=1, timeout_s=10,
                            keys={"caller": "callback-site", "pai": "callback-site",
                                  "privacy": "none"})
        await asyncio.to_thread(caller.wait, 20)
        operator_invites = roles["operator"].invites_received()
    statuses = caller.statuses_received()
    assert statuses and statuses[-1] in (401, 403), statuses
    assert not {180, 183, 200} & set(statuses), statuses
    assert operator_invites == []


def softphone_call(stack: Stack, endpoint: str, password: str, dialled: str) -> SippRole:
    """The advisor's softphone calls ``dialled`` at the edge (digest auth on the INVITE)."""
    call = start_role("advisor_call.xml", port=ADVISOR_PORT + 2, workdir=stack.workdir,
                      name=f"call-{endpoint}-{dialled}", remote=EDGE_SIP, service=dialled,
                      max_calls=1, timeout_s=20, keys={"endpoint": endpoint},
                      extra_args=["-au", endpoint, "-ap", password])
    call.wait(30)
    return call


async def test_the_softphone_calls_its_merchant_s_presence_number_and_nothing_else(
        stack: Stack, admin: Admin) -> None:
    """From the registered softphone, the merchant's presence number puts the advisor
    online (announced as early media, rejected, never answered; asked by the endpoint's
    user); the toll-free number is refused (403): no call-back for a softphone."""
    user, password = f"sakura{uuid.uuid4().hex[:6]}", f"pw-{uuid.uuid4()}"
    endpoint = await provision(stack, user, password)
    advisor = await admin.advisor("さくら", "5791", sip(user), online=False)
    calls_before = (await stack.fetch("edge", "SELECT count(*) AS n FROM edge_calls"))[0]["n"]
    online = await asyncio.to_thread(softphone_call, stack, endpoint, password, ONLINE)
    statuses = online.statuses_received()
    assert 401 in statuses and 183 in statuses and statuses[-1] == 486, statuses
    assert 200 not in statuses
    event = await stack.wait_for_row(
        "callback", "SELECT event, via, after FROM advisor_events WHERE advisor_id = $1 "
        "AND event = 'online'", advisor)
    assert (event["via"], event["after"]) == ("phone", "standby")
    refused = await asyncio.to_thread(softphone_call, stack, endpoint, password,
                                      ACME.number)
    assert refused.statuses_received()[-1] == 403, refused.statuses_received()
    calls_after = (await stack.fetch("edge", "SELECT count(*) AS n FROM edge_calls"))[0]["n"]
    assert calls_after == calls_before, "the edge took a softphone's call as a customer's"


async def test_an_endpoint_deleted_unheard_of_is_removed_when_the_server_comes_back(
        stack: Stack) -> None:
    """A deletion the edge server never heard of (the row deleted without its NOTIFY,
    as while the server was down) leaves the endpoint in Asterisk until the server
    syncs: restarted, it pushes the table and removes what the table no longer has."""
    kept_user, gone_user = f"kept{uuid.uuid4().hex[:6]}", f"gone{uuid.uuid4().hex[:6]}"
    kept = await provision(stack, kept_user, f"pw-{uuid.uuid4()}")
    gone = await provision(stack, gone_user, f"pw-{uuid.uuid4()}")
    await stack.fetch("edge", "DELETE FROM sip_endpoints WHERE endpoint_id = $1", gone)
    await stack.restart_server("edge")
    async with stack.edge_site.client() as edge:
        for _ in range(150):
            if await edge.get_endpoint("PJSIP", gone) is None:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"{gone} still in the edge Asterisk 15 s after the restart")
        assert await edge.get_endpoint("PJSIP", kept) is not None
        assert await edge.get_endpoint("PJSIP", "operator") is not None   # pjsip.conf's


async def test_an_edge_asterisk_restarted_gets_every_endpoint_again(stack: Stack) -> None:
    """Pushed endpoints live in Asterisk's memory: after the edge Asterisk is killed and
    started again, the edge server pushes every endpoint again once ARI is back, and a
    softphone can register at once (no API call, no restart of the server)."""
    user, password = f"again{uuid.uuid4().hex[:6]}", f"pw-{uuid.uuid4()}"
    endpoint = await provision(stack, user, password)
    await asyncio.to_thread(ast_harness.kill9, "edge")
    await asyncio.to_thread(ast_harness.ensure_running, "edge")
    async with stack.edge_site.client() as edge:
        for _ in range(150):
            if await edge.get_endpoint("PJSIP", endpoint) is not None:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"{endpoint} not pushed again within 15 s of the restart")
    registered = register(stack.workdir, endpoint, password)
    assert registered.statuses_received("REGISTER") == [401, 200]
