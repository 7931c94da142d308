"""Presence by phone at the call-back site: ``POST /v1/link/presence`` over real HTTP and
a real PostgreSQL, asked by the edge's own :class:`edge_server.presence_stasis.LinkPresence`
(a real ``LinkClient`` signing with the edge's key), and replayed byte for byte."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from advisors import presence as pm
from advisors.live import CHANNEL, Presences
from advisors.model import PstnContact, SipContact, Via
from advisors.phone import PRESENCE_PATH
from advisors.phone import install as install_phone_presence
from advisors.schemas import AdvisorInput
from advisors.store import AdvisorStore
from edge_server import presence_stasis
from edge_server.presence_flow import (
    AskPresence,
    PresenceAnswered,
    PresenceOutcome,
    PresenceUnavailable,
    Wanted,
)
from edge_server.presence_stasis import LinkPresence
from shared.config import LinkRoute
from shared.http import error_middleware
from shared.link import VERIFIER_KEY, LinkClient, signature_middleware
from shared.link_policy import HealthSettings, LinkPolicy
from shared.phone import E164
from shared.signing import Signer, SigningKey, Verifier
from tests.integration import advisors_db

pytestmark = pytest.mark.integration

EDGE_KEY = SigningKey.generate("edge-sign-1")
SAKURA = "+819011112222"
pool, clean = advisors_db.fixtures()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def link_app() -> web.Application:
    """The call-back site's link middleware, taking the edge's signatures."""
    app = web.Application(middlewares=[error_middleware, signature_middleware])
    app[VERIFIER_KEY] = Verifier({EDGE_KEY.key_id: EDGE_KEY.public()})
    return app


@contextlib.asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[str]:
    """``app`` served on a free port; its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def site(clean: asyncpg.Pool) -> AsyncIterator[str]:
    """The call-back site's link middleware and the presence route; its base URL."""
    app = link_app()
    install_phone_presence(app, lambda _: clean)
    async with served(app) as url:
        yield url


def link_client(*urls: str) -> LinkClient:
    routes = [LinkRoute(f"r{i}", url) for i, url in enumerate(urls)]
    return LinkClient(routes, Signer([EDGE_KEY]), None,
                      policy=LinkPolicy(health=HealthSettings(interval_s=0)))


@pytest.fixture
async def edge(site: str) -> AsyncIterator[LinkPresence]:
    client = link_client(site)
    yield LinkPresence(client, ask_s=3.0)
    await client.close()


async def advisor(pool: asyncpg.Pool, code: str, contact: PstnContact | SipContact,
                  merchant: str = "acme") -> int:
    created, _ = await AdvisorStore(pool).create_advisor(merchant, AdvisorInput(
        display_name="月読 さくら", code=code, contact=contact, price_per_minute_yen=280))
    return created.id


def ask(wanted: Wanted, caller: str | None = SAKURA, user: str | None = None,
        merchant: str = "acme") -> AskPresence:
    return AskPresence("edge-1700.1", merchant, None if caller is None else E164.parse(caller),
                       user, wanted)


async def desk(pool: asyncpg.Pool, advisor_id: int) -> str:
    return str(await pool.fetchval("SELECT desk FROM advisor_presence WHERE advisor_id = $1",
                                   advisor_id))


async def events(pool: asyncpg.Pool) -> list[tuple[str, str | None, str]]:
    rows = await pool.fetch("SELECT event, via, after FROM advisor_events ORDER BY id")
    return [(r["event"], r["via"], r["after"]) for r in rows]


def outcome(result: PresenceAnswered | PresenceUnavailable) -> PresenceOutcome:
    assert isinstance(result, PresenceAnswered), result
    return result.outcome


def test_both_ends_agree_on_the_route() -> None:
    assert presence_stasis.PRESENCE_PATH == PRESENCE_PATH


async def test_the_registered_phone_goes_online_then_offline_with_notify(
        clean: asyncpg.Pool, edge: LinkPresence) -> None:
    aid = await advisor(clean, "0123", PstnContact(E164.parse(SAKURA)))
    heard: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def on_notify(*args: Any) -> None:
        heard.put_nowait(json.loads(args[3]))

    async with clean.acquire() as listener:
        await listener.add_listener(CHANNEL, on_notify)
        assert outcome(await edge.ask(ask(Wanted.ONLINE))) is PresenceOutcome.ONLINE
        notified = await asyncio.wait_for(heard.get(), 5)
        await listener.remove_listener(CHANNEL, on_notify)
    assert (notified["advisor_id"], notified["event"], notified["via"]) == (aid, "online",
                                                                            "phone")
    assert await desk(clean, aid) == "standby"
    # already online: the same truthful answer, nothing written
    assert outcome(await edge.ask(ask(Wanted.ONLINE))) is PresenceOutcome.ONLINE
    assert outcome(await edge.ask(ask(Wanted.OFFLINE))) is PresenceOutcome.OFFLINE
    assert await desk(clean, aid) == "offline"
    assert await events(clean) == [("online", "phone", "standby"),
                                   ("offline", "phone", "offline")]


async def test_an_unknown_phone_or_another_merchant_s_changes_nothing(
        clean: asyncpg.Pool, edge: LinkPresence) -> None:
    aid = await advisor(clean, "0123", PstnContact(E164.parse(SAKURA)))
    result = await edge.ask(ask(Wanted.ONLINE, "+819099998888"))
    assert outcome(result) is PresenceOutcome.NOT_REGISTERED
    result = await edge.ask(ask(Wanted.ONLINE, merchant="bento"))
    assert outcome(result) is PresenceOutcome.NOT_REGISTERED
    assert await desk(clean, aid) == "offline" and await events(clean) == []


async def test_a_sip_advisor_is_found_by_the_user_the_edge_sees(
        clean: asyncpg.Pool, edge: LinkPresence) -> None:
    aid = await advisor(clean, "0124", SipContact("1001"))
    result = await edge.ask(ask(Wanted.ONLINE, None, "1001"))
    assert outcome(result) is PresenceOutcome.ONLINE and await desk(clean, aid) == "standby"


async def test_a_consultation_in_progress_is_not_disturbed(
        clean: asyncpg.Pool, edge: LinkPresence) -> None:
    aid = await advisor(clean, "0123", PstnContact(E164.parse(SAKURA)))
    live = Presences(clean)
    now = datetime.now(UTC)
    await live.apply("acme", aid, pm.GoOnline(now, Via.API))
    await live.apply("acme", aid, pm.Offered(now, "consult-1"))
    result = await edge.ask(ask(Wanted.OFFLINE))
    assert outcome(result) is PresenceOutcome.IN_CALL
    assert await desk(clean, aid) == "standby"
    assert [e for e, _, _ in await events(clean)] == ["online", "offered"]


async def test_a_phone_two_advisors_share_changes_nothing(
        clean: asyncpg.Pool, edge: LinkPresence) -> None:
    first = await advisor(clean, "0123", PstnContact(E164.parse(SAKURA)))
    await advisor(clean, "0124", PstnContact(E164.parse(SAKURA)))
    assert outcome(await edge.ask(ask(Wanted.ONLINE))) is PresenceOutcome.AMBIGUOUS
    assert await desk(clean, first) == "offline" and await events(clean) == []


async def signed_post(url: str, body: bytes, headers: dict[str, str]
                      ) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(
            url + PRESENCE_PATH, data=body,
            headers={**headers, "content-type": "application/json"}) as resp:
        return resp.status, await resp.json()


async def test_a_replayed_request_gets_the_first_answer_and_changes_nothing(
        clean: asyncpg.Pool, site: str, edge: LinkPresence) -> None:
    aid = await advisor(clean, "0123", PstnContact(E164.parse(SAKURA)))
    body = json.dumps({"merchant_id": "acme", "edge_call_id": "edge-1700.1",
                       "presence": "online", "caller": SAKURA}).encode()
    headers = Signer([EDGE_KEY]).headers("POST", PRESENCE_PATH, body)
    first = await signed_post(site, body, headers)
    assert first == (200, {"outcome": "online", "advisor_id": aid, "state": "standby"})
    assert outcome(await edge.ask(ask(Wanted.OFFLINE))) is PresenceOutcome.OFFLINE
    assert await signed_post(site, body, headers) == first   # the replay
    assert await desk(clean, aid) == "offline"
    assert [e for e, _, _ in await events(clean)] == ["online", "offline"]


@pytest.mark.parametrize(("payload", "field"), [
    ({"edge_call_id": "edge-1", "presence": "online", "caller": SAKURA}, "merchant_id"),
    ({"merchant_id": "acme", "edge_call_id": "edge-1", "presence": "away",
      "caller": SAKURA}, "presence"),
    ({"merchant_id": "acme", "edge_call_id": "edge-1", "presence": "online"}, "caller"),
    ({"merchant_id": "acme", "edge_call_id": "edge-1", "presence": "online",
      "caller": "09011112222"}, "caller"),
    ({"merchant_id": "acme", "edge_call_id": "edge-1", "presence": "online",
      "caller_user": "<sip:x>"}, "caller_user"),
    ({"merchant_id": "acme", "edge_call_id": "edge-1", "presence": "online",
      "caller": SAKURA, "advisor_id": 1}, "advisor_id"),
])
async def test_bad_input_is_400_naming_the_field(
        clean: asyncpg.Pool, site: str, payload: dict[str, Any], field: str) -> None:
    body = json.dumps(payload).encode()
    status, answer = await signed_post(site, body, Signer([EDGE_KEY]).headers(
        "POST", PRESENCE_PATH, body))
    assert status == 400, answer
    assert answer["error"]["id"] == "invalid-field" and answer["error"]["field"] == field


async def test_an_unsigned_or_forged_request_is_refused(clean: asyncpg.Pool, site: str) -> None:
    body = json.dumps({"merchant_id": "acme", "edge_call_id": "edge-1",
                       "presence": "online", "caller": SAKURA}).encode()
    status, answer = await signed_post(site, body, {})
    assert status == 401 and answer["error"]["id"] == "signature-missing"
    forger = SigningKey.generate("edge-sign-1")
    status, answer = await signed_post(site, body, Signer([forger]).headers(
        "POST", PRESENCE_PATH, body))
    assert status == 401 and answer["error"]["id"] == "signature-invalid"


async def test_a_dead_primary_route_is_passed_over_for_the_backup(
        clean: asyncpg.Pool, site: str) -> None:
    aid = await advisor(clean, "0123", PstnContact(E164.parse(SAKURA)))
    client = link_client(f"http://127.0.0.1:{free_port()}", site)
    try:
        result = await LinkPresence(client, ask_s=3.0).ask(ask(Wanted.ONLINE))
    finally:
        await client.close()
    assert outcome(result) is PresenceOutcome.ONLINE and await desk(clean, aid) == "standby"
    assert isinstance(result, PresenceAnswered) and "via r1" in result.detail


async def test_no_route_answering_is_unavailable_within_the_ask_time() -> None:
    client = link_client(f"http://127.0.0.1:{free_port()}")
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await LinkPresence(client, ask_s=1.0).ask(ask(Wanted.ONLINE))
        assert loop.time() - started < 1.5
    finally:
        await client.close()
    assert isinstance(result, PresenceUnavailable), result


async def test_a_silent_peer_times_out_within_the_ask_time() -> None:
    """A peer that accepts the connection and never answers."""
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = link_client(f"http://127.0.0.1:{port}")
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await LinkPresence(client, ask_s=1.0).ask(ask(Wanted.ONLINE))
        assert loop.time() - started < 2.5
    finally:
        await client.close()
        server.close()
    assert isinstance(result, PresenceUnavailable), result
