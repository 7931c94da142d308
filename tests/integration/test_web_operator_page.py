"""The merchant's operators' page in a real browser (chromium) against a real PostgreSQL:
a sign-in link the merchant issues opens a session (an HttpOnly, SameSite=Strict
cookie); the board follows an advisor's presence changed elsewhere (``Presences.apply``)
within 2 s of polling; a consultation talking (its ``consult_live`` row) is shown with
the customer's number masked, and its buttons send the API's own controls, received on
the ``consult_control`` channel by a LISTENing connection (forced end after a
confirmation, hold, a transfer to an advisor picked from the board); a refused control
shows the API's reason in Japanese; an operator of one merchant never sees or changes
another's; a change without the CSRF header is refused."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import advisors
from advisors import record_store
from advisors import schemas as s
from advisors.http import SERVICES_KEY
from advisors.http import install as install_advisors
from advisors.model import Via
from callback_server.consult_control import CONTROL_CHANNEL
from callback_server.consult_control import install as install_control
from callback_server.operator_http import COOKIE
from callback_server.operator_sessions import OperatorSessions
from shared.client_address import TRUSTED_PROXIES_KEY, parse_network
from shared.db import listening, migrate_url, package_migrations
from shared.http import TOKENS_KEY, MerchantTokens, error_middleware
from tests.integration import advisors_db, callback_db
from tests.integration.browser import browser_fixture
from tests.integration.test_advisors_http import ACME, ADVISOR, AUTH, BENTO, digest, ok
from tests.integration.test_callback_http import MERCHANTS
from tests.unit.test_advisors_records import answered
from web.operator_page import install as install_page

pytestmark = pytest.mark.integration
pool, clean = callback_db.fixtures(MERCHANTS)
browser = browser_fixture()
NOW = datetime(2026, 12, 5, 2, 0, tzinfo=UTC)
CUSTOMER = "+819012345678"


@pytest.fixture
async def client(clean: asyncpg.Pool, pg_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    await migrate_url(pg_url, [package_migrations("advisors", advisors.__file__),
                               record_store.MIGRATIONS])
    await clean.execute(f"TRUNCATE {advisors_db.TABLES}, consult_live, "
                        "operator_signin_links, operator_sessions CASCADE")
    app = web.Application(middlewares=[error_middleware])
    app[TRUSTED_PROXIES_KEY] = (parse_network("127.0.0.1"),)   # the client: a balancer
    app[TOKENS_KEY] = MerchantTokens([("acme", digest(ACME)), ("bento", digest(BENTO))])
    install_advisors(app, lambda _: (pg_url, clean), operators={})
    install_control(app, lambda _: clean)
    install_page(app)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        await asyncio.wait_for(app[SERVICES_KEY].hub.listening.wait(), 10)
        yield c


async def advisor(client: TestClient[Any, Any], code: str, name: str,
                  auth: dict[str, str] = AUTH) -> int:
    body = {**ADVISOR, "code": code, "display_name": name}
    return int((await ok(await client.post("/v1/advisors", json=body, headers=auth),
                         201))["id"])


async def talking(pool: asyncpg.Pool, merchant: str, callback_id: str, advisor_id: int,
                  status: str = "dialing") -> str:
    """A call-back being dialled whose first consultation talks (its runner's
    ``consult_live`` row); its id."""
    await pool.execute(
        "INSERT INTO callback_requests (callback_id, edge_call_id, merchant_id, caller,"
        " received_at, message_id, max_attempts, next_attempt_at, status)"
        " VALUES ($1, $1, $2, $3, $4, $1, 3, $4, $5)",
        callback_id, merchant, CUSTOMER, NOW, status)
    cid = f"{callback_id}-c1"
    record = answered(consultation_id=cid, callback_id=callback_id, merchant_id=merchant,
                      advisor_id=advisor_id, customer_number=CUSTOMER, holds=())
    await pool.execute(
        "INSERT INTO consult_live (consultation_id, callback_id, merchant_id,"
        " customer_channel, advisor_channel, bridge_id, advisor_id, presence_id, snapshot)"
        " VALUES ($1, $2, $3, 'cust', 'adv', 'br', $4, $1, $5)",
        cid, callback_id, merchant, advisor_id, record.to_json())
    return cid


async def link(client: TestClient[Any, Any], auth: dict[str, str] = AUTH) -> str:
    issued = await ok(await client.post("/v1/operator-signin-links", headers=auth), 201)
    assert issued["path"] == f"/operator/signin/{issued['token']}"
    return str(issued["path"])


async def signed_in(client: TestClient[Any, Any], auth: dict[str, str] = AUTH
                    ) -> tuple[dict[str, str], str]:
    """(the session's cookie header, its CSRF token), signed in over HTTP."""
    resp = await client.post(await link(client, auth), allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (303, "/operator")
    cookie = {"Cookie": f"{COOKIE}={resp.cookies[COOKIE].value}"}
    client.session.cookie_jar.clear()
    page = await (await client.get("/operator", headers=cookie)).text()
    return cookie, page.split('data-csrf="', 1)[1].split('"', 1)[0]


async def control(notes: asyncio.Queue[str]) -> dict[str, Any]:
    note: dict[str, Any] = json.loads(await asyncio.wait_for(notes.get(), 5))
    return note


async def test_the_board_is_live_and_its_buttons_send_the_controls(
        client: TestClient[Any, Any], browser: Any, clean: asyncpg.Pool, pg_url: str) -> None:
    sakura = await advisor(client, "0123", "月読 さくら")
    hikari = await advisor(client, "0456", "日向 ひかり")
    cid = await talking(clean, "acme", "cb-1", sakura)
    context = await browser.new_context(locale="ja-JP")
    try:
        page = await context.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        await page.goto(str(client.make_url(await link(client))))
        assert await page.title() == "オペレーター画面へのサインイン"
        await page.click("#sign-in")
        await page.wait_for_url("**/operator")
        assert await page.title() == "オペレーター画面"
        [session] = await context.cookies()
        assert (session["name"], session["httpOnly"], session["sameSite"]) == (
            COOKIE, True, "Strict")
        assert await clean.fetchval("SELECT count(*) FROM operator_sessions WHERE "
                                    "token_sha256 = sha256($1::text::bytea)",
                                    session["value"]) == 1
        row = page.locator(f'#advisors tr[data-advisor-id="{sakura}"]')
        await row.wait_for(timeout=5_000)
        assert await row.locator(".state").inner_text() == "オフライン"
        # a change made elsewhere is on the board within 2 s
        live = client.server.app[SERVICES_KEY].live
        started = time.monotonic()
        await live.apply("acme", hikari, s.parse_presence({"presence": "online"}).event(
            live.clock(), Via.API))
        await page.locator(f'#advisors tr[data-advisor-id="{hikari}"][data-state="standby"]'
                           ).wait_for(timeout=2_000)
        assert time.monotonic() - started < 2.0
        assert await page.locator(f'#advisors tr[data-advisor-id="{hikari}"] .state'
                                  ).inner_text() == "待機中"
        # the operator puts an advisor on break, through the presence API
        await row.locator("button[data-presence=break]").click()
        await page.locator(f'#advisors tr[data-advisor-id="{sakura}"][data-state="break"]'
                           ).wait_for(timeout=3_000)
        assert await page.locator(f'#advisors tr[data-advisor-id="{sakura}"] .state'
                                  ).inner_text() == "休憩中"
        assert await clean.fetchval("SELECT via FROM advisor_events WHERE advisor_id = $1 "
                                    "ORDER BY id DESC LIMIT 1", sakura) == "operator"
        talk = page.locator(f'#consultations tr[data-consultation-id="{cid}"]')
        await talk.wait_for(timeout=5_000)
        assert await talk.locator(".customer").inner_text() == "*********5678"
        assert CUSTOMER not in await page.content()
        assert await page.inner_text("#lines-total") == "10"
        async with listening(pg_url, CONTROL_CHANNEL) as notes:
            await talk.locator("button.hold").click()
            assert await control(notes) == {"consultation_id": cid, "action": "hold",
                                            "to_advisor_id": None, "to_number": None}
            await talk.locator("select.transfer-to").select_option(str(hikari))
            await talk.locator("button.transfer").click()
            assert (await control(notes))["to_advisor_id"] == hikari
            page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.dismiss()))
            await talk.locator("button.force-end").click()          # not confirmed
            await asyncio.sleep(0.5)
            assert notes.empty()
            dialogs: list[str] = []

            async def accept(dialog: Any) -> None:
                dialogs.append(dialog.message)
                await dialog.accept()

            page.once("dialog", accept)
            await talk.locator("button.force-end").click()
            assert await control(notes) == {"consultation_id": cid, "action": "end",
                                            "to_advisor_id": None, "to_number": None}
            assert dialogs == ["この相談を強制終了します。よろしいですか？"]
            done = page.locator("#operator-status.done")   # cleared at the click
            await done.wait_for(timeout=3_000)
            assert await done.inner_text() == "受け付けました。"
            # on hold with a transfer in progress: resume, complete and cancel
            await clean.execute(
                "UPDATE consult_live SET second_party = '{}', snapshot = jsonb_set(snapshot,"
                " '{holds}', jsonb_build_array(jsonb_build_object('started_at',"
                " snapshot->'answered_at', 'ended_at', null)))")
            held = page.locator(f'#consultations tr[data-consultation-id="{cid}"]'
                                '[data-on-hold="true"]')
            await held.wait_for(timeout=3_000)
            for button, action in (("unhold", "unhold"),
                                   ("transfer-complete", "transfer-complete"),
                                   ("transfer-cancel", "transfer-cancel")):
                await held.locator(f"button.{button}").click()
                assert (await control(notes))["action"] == action
            # over meanwhile: the API's refusal, in Japanese
            await clean.execute("UPDATE callback_requests SET status = 'completed'")
            page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
            await talk.locator("button.force-end").click()
            status = page.locator('#operator-status[data-error="consultation-not-running"]')
            await status.wait_for(timeout=3_000)
            assert await status.inner_text() == "この相談はすでに終了しています。"
        assert not [m for m in console if "Content Security Policy" in m], console
    finally:
        await context.close()


async def test_an_operator_sees_and_changes_its_own_merchant_only(
        client: TestClient[Any, Any], clean: asyncpg.Pool) -> None:
    bento_auth = {"Authorization": f"Bearer {BENTO}"}
    sakura = await advisor(client, "0123", "月読 さくら")
    theirs = await advisor(client, "0789", "弁当 たろう", bento_auth)
    cid = await talking(clean, "acme", "cb-1", sakura)
    await talking(clean, "bento", "cb-2", theirs)
    cookie, csrf = await signed_in(client, bento_auth)
    board = await ok(await client.get("/v1/operator/board", headers=cookie))
    assert [a["advisor_id"] for a in board["advisors"]] == [theirs]
    assert [c["consultation_id"] for c in board["consultations"]] == ["cb-2-c1"]
    changing = {**cookie, "X-CSRF-Token": csrf}
    resp = await client.post(f"/v1/operator/consultations/{cid}/end", headers=changing)
    assert (resp.status, (await resp.json())["error"]["id"]) == (404, "not-found")
    resp = await client.put(f"/v1/operator/advisors/{sakura}/presence", headers=changing,
                            json={"presence": "online"})
    assert (resp.status, (await resp.json())["error"]["id"]) == (404, "not-found")
    # acme's operator may not transfer to bento's advisor
    acme_cookie, acme_csrf = await signed_in(client)
    # acme's board: two customers queued for sakura (offline) in order, one stale
    for cid_q, queued, seen in (("q-1", "1 min", "1 s"), ("q-2", "30 s", "1 s"),
                                ("q-old", "2 min", "1 min")):
        await clean.execute(
            "INSERT INTO advisor_queue (consultation_id, merchant_id, members, queued_at,"
            " seen_at) VALUES ($1, 'acme', $2, now() - $3::text::interval,"
            " now() - $4::text::interval)",
            cid_q, [sakura], queued, seen)
    mine = await ok(await client.get("/v1/operator/board", headers=acme_cookie))
    assert [(q["consultation_id"], q["place"]) for q in mine["queue"]] == [("q-1", 1),
                                                                          ("q-2", 2)]
    assert mine["lines"] == {"in_use": 0, "total": 10}
    assert [c["customer"] for c in mine["consultations"]] == ["*********5678"]
    resp = await client.post(f"/v1/operator/consultations/{cid}/transfer",
                             headers={**acme_cookie, "X-CSRF-Token": acme_csrf},
                             json={"advisor_id": theirs})
    assert (resp.status, (await resp.json())["error"]["id"]) == (404, "not-found")


async def test_a_change_needs_the_sessions_csrf_token_and_a_live_session(
        client: TestClient[Any, Any], clean: asyncpg.Pool) -> None:
    sakura = await advisor(client, "0123", "月読 さくら")
    cid = await talking(clean, "acme", "cb-1", sakura)
    cookie, csrf = await signed_in(client)
    _, other_csrf = await signed_in(client)
    english = await client.get("/operator?lang=en", headers=cookie)
    assert "<title>Operator board</title>" in await english.text()
    assert 'data-t-end="Force end"' in await english.text()
    for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": other_csrf}):
        resp = await client.post(f"/v1/operator/consultations/{cid}/end",
                                 headers={**cookie, **headers})
        assert (resp.status, (await resp.json())["error"]["id"]) == (403, "csrf-invalid")
        resp = await client.put(f"/v1/operator/advisors/{sakura}/presence",
                                headers={**cookie, **headers}, json={"presence": "online"})
        assert resp.status == 403
    # another site's page: its changes and its sign-in with a link are refused
    evil = {"Origin": "https://evil.example"}
    resp = await client.post(f"/v1/operator/consultations/{cid}/end",
                             headers={**cookie, "X-CSRF-Token": csrf, **evil})
    assert (resp.status, (await resp.json())["error"]["id"]) == (403, "cross-site-request")
    path = await link(client)
    resp = await client.post(path, headers={"Sec-Fetch-Site": "cross-site"},
                             allow_redirects=False)
    assert resp.status == 403 and COOKIE not in resp.cookies
    assert (await client.post(path, allow_redirects=False)).status == 303   # still unused
    client.session.cookie_jar.clear()
    assert (await client.get("/v1/operator/board")).status == 401
    assert (await client.post(f"/v1/operator/consultations/{cid}/end",
                              headers={"X-CSRF-Token": csrf})).status == 401
    # a link works once; the merchant's revocation ends the session
    path = await link(client)
    first, second = await asyncio.gather(client.post(path, allow_redirects=False),
                                         client.post(path, allow_redirects=False))
    assert sorted((first.status, second.status)) == [303, 410]
    client.session.cookie_jar.clear()
    ended = await ok(await client.delete("/v1/operator-sessions", headers=AUTH))
    assert ended["sessions_ended"] == 4
    assert (await client.get("/v1/operator/board", headers=cookie)).status == 401
    resp = await client.get("/operator", headers=cookie)
    assert (resp.status, resp.content_type) == (401, "text/html")
    assert await OperatorSessions(clean).usable("nothing", NOW) is False


async def test_a_sign_in_is_logged_with_the_client_the_balancer_names(
        client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "web.signin"):
        resp = await client.post(await link(client), allow_redirects=False, headers={
            "X-Forwarded-For": "6.6.6.6, 203.0.113.9"})
    assert resp.status == 303
    assert [r.getMessage() for r in caplog.records if r.name == "web.signin"] == [
        "signed in to /operator from 203.0.113.9"]
