"""The advisors admin API and presence event stream over real HTTP (aiohttp test server)
and a real PostgreSQL: merchant tokens, bad input naming its field, and a presence change
reaching an SSE subscriber within a second."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from advisors import edge_phones
from advisors.assignment import Assignment
from advisors.edge_phones import EndpointState
from advisors.errors import NotFound
from advisors.http import SERVICES_KEY, install
from advisors.model import PstnContact
from shared.http import TOKENS_KEY, MerchantTokens, error_middleware
from shared.phone import E164
from tests.integration import advisors_db

pytestmark = pytest.mark.integration
pool, clean = advisors_db.fixtures()

ACME, BENTO = "acme-token", "bento-token"
AUTH = {"Authorization": f"Bearer {ACME}"}


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture
async def client(clean: asyncpg.Pool, pg_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    app = web.Application(middlewares=[error_middleware])
    app[TOKENS_KEY] = MerchantTokens([("acme", digest(ACME)), ("bento", digest(BENTO))])
    install(app, lambda _: (pg_url, clean), operators={})
    async with TestClient(TestServer(app)) as c:
        await asyncio.wait_for(app[SERVICES_KEY].hub.listening.wait(), 10)
        yield c


ADVISOR = {"display_name": "月読 さくら", "code": "0123", "price_per_minute_yen": 280,
           "contact": {"kind": "pstn", "number": "090-1111-2222"},
           "name_prompt": "advisors/sakura"}


async def ok(resp: ClientResponse, status: int = 200) -> Any:
    body = await resp.json()
    assert resp.status == status, body
    return body


async def field_error(resp: ClientResponse, status: int = 400) -> str:
    body = await resp.json()
    assert resp.status == status, body
    return str(body["error"].get("field", body["error"]["id"]))


async def test_advisors_groups_customers_and_settings(client: TestClient[Any, Any],
                                                     clean: asyncpg.Pool) -> None:
    assert (await client.get("/v1/advisors")).status == 401
    async with clean.acquire() as conn:     # the edge told of sakura's SIP endpoint
        await edge_phones.store(conn, EndpointState("acme", "sakura", True, False, 1))
    created = await ok(await client.post("/v1/advisors", json=ADVISOR, headers=AUTH), 201)
    assert created["contact"] == {"kind": "pstn", "number": "+819011112222"}
    assert created["max_concurrent"] == 1 and created["presence"]["state"] == "offline"
    aid = created["id"]
    group = await ok(await client.post("/v1/advisor-groups", json={
        "name": "タロット", "members": [aid]}, headers=AUTH), 201)
    changed = await ok(await client.patch(f"/v1/advisors/{aid}", json={
        "contact": {"kind": "sip", "user": "sakura"}, "max_concurrent": 2}, headers=AUTH))
    assert changed["contact"] == {"kind": "sip", "user": "sakura"}
    assert changed["groups"] == [group["id"]] and changed["max_concurrent"] == 2
    listed = await ok(await client.get("/v1/advisors", headers=AUTH))
    assert [a["id"] for a in listed["items"]] == [aid]
    assert (await ok(await client.get(f"/v1/advisor-groups/{group['id']}",
                                      headers=AUTH)))["members"] == [aid]
    customer = await ok(await client.post("/v1/customers", json={
        "account": "member-42", "name": "山田", "numbers": ["08012345678"]}, headers=AUTH), 201)
    assert customer["numbers"] == ["+818012345678"]
    customer = await ok(await client.patch(f"/v1/customers/{customer['id']}", json={
        "numbers": ["08012345678", "+81312345678"]}, headers=AUTH))
    assert customer["numbers"] == ["+81312345678", "+818012345678"]
    assert (await ok(await client.get("/v1/advisor-settings", headers=AUTH))) == {
        "after_call": "timer", "wrap_up_s": 30, "ring_timeout_s": 20,
        "misses_before_break": 3, "lines": 10, "click_to_call_first": "customer",
        "lines_busy": "guidance", "queue_announce_s": 30}
    settings = await ok(await client.put("/v1/advisor-settings", json={
        "after_call": "manual", "lines": 3, "click_to_call_first": "advisor"}, headers=AUTH))
    assert settings["after_call"] == "manual" and settings["lines"] == 3
    assert settings["click_to_call_first"] == "advisor"
    assert (await ok(await client.get("/v1/advisor-settings", headers=AUTH)))[
        "click_to_call_first"] == "advisor"
    assert settings["wrap_up_s"] == 30
    # another merchant's token sees none of it
    other = {"Authorization": f"Bearer {BENTO}"}
    assert (await ok(await client.get("/v1/advisors", headers=other)))["items"] == []
    assert (await client.get(f"/v1/advisors/{aid}", headers=other)).status == 404


@pytest.mark.parametrize(("body", "field"), [
    ({**ADVISOR, "code": "12a4"}, "code"),
    ({**ADVISOR, "code": 1234}, "code"),
    ({**ADVISOR, "price_per_minute_yen": -1}, "price_per_minute_yen"),
    ({**ADVISOR, "price_per_minute_yen": True}, "price_per_minute_yen"),
    ({**ADVISOR, "max_concurrent": 0}, "max_concurrent"),
    ({**ADVISOR, "contact": {"kind": "pstn", "number": "12"}}, "contact.number"),
    ({**ADVISOR, "contact": {"kind": "sip", "user": "a b"}}, "contact.user"),
    ({**ADVISOR, "contact": {"kind": "fax"}}, "contact.kind"),
    ({**ADVISOR, "contact": "09011112222"}, "contact"),
    ({**ADVISOR, "display_name": ""}, "display_name"),
    ({**ADVISOR, "name_prompt": "../../etc passwd"}, "name_prompt"),
    ({**ADVISOR, "groups": [999]}, "groups"),
    ({**ADVISOR, "colour": "red"}, "colour"),
    ({k: v for k, v in ADVISOR.items() if k != "code"}, "code"),
])
async def test_bad_advisor_input_is_a_400_naming_the_field(
        client: TestClient[Any, Any], body: dict[str, Any], field: str) -> None:
    assert await field_error(await client.post("/v1/advisors", json=body,
                                               headers=AUTH)) == field
    assert (await ok(await client.get("/v1/advisors", headers=AUTH)))["items"] == []


async def test_a_groups_own_price_is_set_shown_and_cleared(
        client: TestClient[Any, Any]) -> None:
    aid = (await ok(await client.post("/v1/advisors", json=ADVISOR, headers=AUTH), 201))["id"]
    group = await ok(await client.post("/v1/advisor-groups", json={
        "name": "タロット", "members": [aid], "price_per_minute_yen": 150}, headers=AUTH), 201)
    assert group["price_per_minute_yen"] == 150
    path = f"/v1/advisor-groups/{group['id']}"
    renamed = await ok(await client.patch(path, json={"name": "星占い"}, headers=AUTH))
    assert (renamed["name"], renamed["price_per_minute_yen"]) == ("星占い", 150)
    assert (await ok(await client.patch(path, json={"price_per_minute_yen": None},
                                        headers=AUTH)))["price_per_minute_yen"] is None
    for bad in (-1, 100_001, "150", 1.5, True):
        assert await field_error(await client.patch(path, json={
            "price_per_minute_yen": bad}, headers=AUTH)) == "price_per_minute_yen"
        assert await field_error(await client.post("/v1/advisor-groups", json={
            "name": "g", "price_per_minute_yen": bad}, headers=AUTH)) == "price_per_minute_yen"
    assert (await ok(await client.get(path, headers=AUTH)))["price_per_minute_yen"] is None
    assert [g["name"] for g in (await ok(await client.get("/v1/advisor-groups",
                                                          headers=AUTH)))["items"]] == ["星占い"]


async def test_other_bad_input_and_duplicates(client: TestClient[Any, Any]) -> None:
    aid = (await ok(await client.post("/v1/advisors", json=ADVISOR, headers=AUTH), 201))["id"]
    assert await field_error(await client.post("/v1/advisors", json=ADVISOR, headers=AUTH),
                             409) == "code"
    assert await field_error(await client.get("/v1/advisors/x1", headers=AUTH)) == "advisor_id"
    assert await field_error(await client.get("/v1/advisors/9999", headers=AUTH),
                             404) == "not-found"
    assert await field_error(await client.put(f"/v1/advisors/{aid}/presence", json={
        "presence": "asleep"}, headers=AUTH)) == "presence"
    assert await field_error(await client.put("/v1/advisor-settings", json={
        "after_call": "never"}, headers=AUTH)) == "after_call"
    assert await field_error(await client.put("/v1/advisor-settings", json={
        "click_to_call_first": "both"}, headers=AUTH)) == "click_to_call_first"
    assert await field_error(await client.put("/v1/advisor-settings", json={
        "lines": 0}, headers=AUTH)) == "lines"
    assert await field_error(await client.post("/v1/customers", json={
        "account": "a", "numbers": []}, headers=AUTH)) == "numbers"
    assert await field_error(await client.post("/v1/customers", json={
        "account": "a", "numbers": ["090", "abc"]}, headers=AUTH)) == "numbers[0]"
    assert await field_error(await client.post("/v1/advisor-groups", json={
        "name": "g", "members": ["1"]}, headers=AUTH)) == "members"
    resp = await client.post("/v1/advisors", data=b"{", headers=AUTH)
    assert resp.status == 400 and (await resp.json())["error"]["id"] == "invalid-json"


async def next_event(resp: ClientResponse) -> dict[str, Any]:
    event: dict[str, str] = {}
    while True:
        line = (await resp.content.readline()).decode().rstrip("\n")
        if not line and "data" in event:
            data = json.loads(event["data"])
            assert (event["event"], int(event["id"])) == ("presence", data["id"])
            return dict(data)
        if line and not line.startswith(":"):
            key, _, value = line.partition(": ")
            event[key] = value


async def test_a_presence_change_reaches_an_sse_subscriber_within_a_second(
        client: TestClient[Any, Any]) -> None:
    aid = (await ok(await client.post("/v1/advisors", json=ADVISOR, headers=AUTH), 201))["id"]
    async with client.get("/v1/advisors/events", headers=AUTH) as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert (await stream.content.readline()).startswith(b":")
        started = time.monotonic()
        presence = await ok(await client.put(f"/v1/advisors/{aid}/presence", json={
            "presence": "online"}, headers=AUTH))
        event = await asyncio.wait_for(next_event(stream), 5)
        elapsed = time.monotonic() - started
        assert presence["state"] == "standby"
        assert (event["event"], event["advisor_id"], event["before"], event["after"],
                event["via"]) == ("online", aid, "offline", "standby", "api")
        assert elapsed < 1.0, f"{elapsed:.3f} s"
        await ok(await client.put(f"/v1/advisors/{aid}/presence", json={
            "presence": "break", "reason": "昼休み"}, headers=AUTH))
        second = await asyncio.wait_for(next_event(stream), 5)
        assert (second["after"], second["reason"]) == ("break", "昼休み")
    # reconnecting with the last id seen replays what came after it
    async with client.get("/v1/advisors/events", headers={
            **AUTH, "Last-Event-ID": str(event["id"])}) as again:
        replayed = await asyncio.wait_for(next_event(again), 5)
        assert replayed["id"] == second["id"]
    bad = await client.get("/v1/advisors/events", headers={**AUTH, "Last-Event-ID": "x"})
    assert bad.status == 400 and (await bad.json())["error"]["field"] == "Last-Event-ID"


async def read_http_chunk(resp: ClientResponse) -> bytes:
    """The next HTTP chunk of the response that holds data."""
    data = b""
    while True:
        more, end = await resp.content.readchunk()
        data += more
        if end and data:
            return data


async def chunk_events(resp: ClientResponse) -> list[dict[str, Any]]:
    """The SSE events of the next HTTP chunk (each frame's id checked against its row)."""
    chunk = (await asyncio.wait_for(read_http_chunk(resp), 5)).decode()
    frames = [dict(line.split(": ", 1) for line in frame.splitlines())
              for frame in chunk.split("\n\n") if frame and not frame.startswith(":")]
    events = [json.loads(f["data"]) for f in frames]
    assert [int(f["id"]) for f in frames] == [e["id"] for e in events]
    return events


async def test_events_committed_together_reach_a_stream_in_one_write(
        client: TestClient[Any, Any]) -> None:
    """A missed ring and the offer to the next advisor are one transaction: the stream
    gets both events in one chunk, in order."""
    async with client.get("/v1/advisors/events", headers=AUTH) as stream:
        assert await chunk_events(stream) == []  # the opening comment
        ids = [(await ok(await client.post("/v1/advisors", json={**ADVISOR, "code": code},
                                           headers=AUTH), 201))["id"]
               for code in ("0001", "0002")]
        for aid in ids:
            await ok(await client.put(f"/v1/advisors/{aid}/presence", json={
                "presence": "online"}, headers=AUTH))
        live = client.app[SERVICES_KEY].live
        offered, _ = await live.assign("acme", Assignment("c1", frozenset(ids)))
        seen: list[dict[str, Any]] = []
        while not any(e["event"] == "offered" for e in seen):  # online, online, offered
            seen += await chunk_events(stream)
        await live.ring_missed("acme", offered)
        events = await chunk_events(stream)
    assert [(e["event"], e["advisor_id"]) for e in events] == [
        ("ring_missed", offered.offered_to), ("offered", *(set(ids) - {offered.offered_to}))]


async def test_the_database_away_is_a_503_to_retry(pg_url: str) -> None:
    from shared.db import create_pool

    away = await create_pool(pg_url, min_size=1, max_size=1)
    app = web.Application(middlewares=[error_middleware])
    app[TOKENS_KEY] = MerchantTokens([("acme", digest(ACME))])
    install(app, lambda _: (pg_url, away), operators={})
    async with TestClient(TestServer(app)) as c:
        await away.close()
        for resp in (await c.get("/v1/advisors", headers=AUTH),
                     await c.put("/v1/advisor-settings", json={"lines": 2}, headers=AUTH)):
            body = await resp.json()
            assert resp.status == 503 and body["error"]["id"] == "database-unavailable", body
            assert resp.headers["Retry-After"] == "5"


async def test_stopping_the_server_ends_open_event_streams(clean: asyncpg.Pool,
                                                           pg_url: str) -> None:
    app = web.Application(middlewares=[error_middleware])
    app[TOKENS_KEY] = MerchantTokens([("acme", digest(ACME))])
    install(app, lambda _: (pg_url, clean), operators={})
    server = TestServer(app)
    async with TestClient(server) as c:
        stream = await c.get("/v1/advisors/events", headers=AUTH)
        assert (await stream.content.readline()).startswith(b":")
        started = time.monotonic()
        await server.close()
        assert (await asyncio.wait_for(stream.content.read(), 5)).strip() == b""
        assert time.monotonic() - started < 5
        stream.release()


async def test_retiring_an_advisor_keeps_their_history_and_frees_their_code(
        client: TestClient[Any, Any], clean: asyncpg.Pool) -> None:
    """DELETE /v1/advisors/{id} retires: refused while rung or awaited alone in the
    queue; then offline, out of their groups, signed out, a ``retired`` event on the
    stream, found by no code, contact or list, unchangeable, read by id; the code is free
    for a new advisor."""
    svc = client.app[SERVICES_KEY]
    aid = (await ok(await client.post("/v1/advisors", json=ADVISOR, headers=AUTH), 201))["id"]
    other = (await ok(await client.post("/v1/advisors", json={**ADVISOR, "code": "0999"},
                                        headers=AUTH), 201))["id"]
    group = await ok(await client.post("/v1/advisor-groups", json={
        "name": "タロット", "members": [aid, other]}, headers=AUTH), 201)
    # a customer queued for this advisor alone (by their code, the advisor offline)
    queued, _ = await svc.live.assign("acme", Assignment("q1", frozenset({aid})))
    busy = await client.delete(f"/v1/advisors/{aid}", headers=AUTH)
    assert busy.status == 409 and (await busy.json())["error"]["id"] == "advisor-busy"
    assert "q1" in (await busy.json())["error"]["message"]
    await svc.live.cancelled("acme", queued)
    await ok(await client.put(f"/v1/advisors/{aid}/presence", json={"presence": "online"},
                              headers=AUTH))
    offered, _ = await svc.live.assign("acme", Assignment("c1", frozenset({aid})))
    assert offered.offered_to == aid
    busy = await client.delete(f"/v1/advisors/{aid}", headers=AUTH)
    assert busy.status == 409 and (await busy.json())["error"]["id"] == "advisor-busy"
    assert "ringing" in (await busy.json())["error"]["message"]
    await svc.live.cancelled("acme", offered)
    link = await svc.sessions.issue("acme", aid, svc.live.clock())
    opened = await svc.sessions.sign_in(link.token, svc.live.clock())
    assert opened is not None

    async with client.get("/v1/advisors/events", headers={
            **AUTH, "Last-Event-ID": "0"}) as stream:
        retired = await ok(await client.delete(f"/v1/advisors/{aid}", headers=AUTH))
        seen = [await asyncio.wait_for(next_event(stream), 5) for _ in range(4)]
    assert retired["retired_at"] is not None and retired["groups"] == []
    assert retired["presence"]["state"] == "offline"
    assert (seen[-1]["event"], seen[-1]["advisor_id"], seen[-1]["before"],
            seen[-1]["after"], seen[-1]["via"]) == ("retired", aid, "standby", "offline",
                                                    "system")
    # a second DELETE changes nothing, and records nothing
    assert (await ok(await client.delete(f"/v1/advisors/{aid}", headers=AUTH)))[
        "retired_at"] == retired["retired_at"]
    assert await clean.fetchval("SELECT count(*) FROM advisor_events WHERE "
                                "event = 'retired'") == 1
    assert await svc.sessions.current(opened.token, svc.live.clock()) is None
    # read by id with their name, listed nowhere, found by no code or contact
    assert (await ok(await client.get(f"/v1/advisors/{aid}", headers=AUTH)))[
        "display_name"] == ADVISOR["display_name"]
    assert [a["id"] for a in (await ok(await client.get("/v1/advisors", headers=AUTH)))[
        "items"]] == [other]
    assert (await ok(await client.get(f"/v1/advisor-groups/{group['id']}", headers=AUTH)))[
        "members"] == [other]
    assert await svc.store.advisor_by_code("acme", "0123") is None
    assert await svc.store.advisors_by_contact("acme", [
        PstnContact(E164.parse("+819011112222"))]) == [
        await svc.store.advisor("acme", other)]
    with pytest.raises(NotFound):
        await svc.live.members("acme", code="0123")
    with pytest.raises(NotFound):
        await svc.sessions.issue("acme", aid, svc.live.clock())
    # unchangeable
    for resp in (await client.patch(f"/v1/advisors/{aid}", json={"code": "0124"},
                                    headers=AUTH),
                 await client.put(f"/v1/advisors/{aid}/presence",
                                  json={"presence": "online"}, headers=AUTH)):
        assert resp.status == 409 and (await resp.json())["error"]["id"] == "advisor-retired"
    assert await field_error(await client.patch(f"/v1/advisor-groups/{group['id']}", json={
        "members": [aid, other]}, headers=AUTH)) == "members"
    # the code is free for a new advisor
    again = await ok(await client.post("/v1/advisors", json=ADVISOR, headers=AUTH), 201)
    assert again["id"] != aid and again["code"] == "0123"
    assert (await svc.store.advisor_by_code("acme", "0123")).id == again["id"]  # type: ignore[union-attr]
    assert (await client.delete("/v1/advisors/99999", headers=AUTH)).status == 404
    assert (await client.delete(f"/v1/advisors/{aid}", headers={
        "Authorization": f"Bearer {BENTO}"})).status == 404
