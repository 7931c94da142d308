"""The advisor's page in a real browser (chromium) against a real PostgreSQL: a sign-in
link the merchant issues opens a session (an HttpOnly, SameSite=Strict cookie; Secure
over TLS); 待機 sets the advisor in standby in the database; a change made elsewhere (an
offer, the call answered and ended, through ``Presences``) is on the page within a
second; sign-out, a revoked session and a used or expired link each end at a page
asking for a new link; the page's routes act on the session's own advisor only and
need its CSRF token."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from advisors import presence as pm
from advisors.http import SERVICES_KEY
from advisors.http import install as install_advisors
from advisors.session_http import COOKIE, SESSION_CHECK_S
from advisors.session_http import install as install_sessions
from shared import pki
from shared.http import TOKENS_KEY, MerchantTokens, error_middleware
from shared.link import serve_options
from tests.integration import advisors_db
from tests.integration.browser import browser_fixture
from tests.integration.test_advisors_http import ACME, ADVISOR, AUTH, BENTO, digest, ok
from web.advisor_page import install as install_page

pytestmark = pytest.mark.integration
pool, clean = advisors_db.fixtures()
browser = browser_fixture()


def site(pg_url: str, pool: asyncpg.Pool) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[TOKENS_KEY] = MerchantTokens([("acme", digest(ACME)), ("bento", digest(BENTO))])
    install_advisors(app, lambda _: (pg_url, pool), operators={})
    install_sessions(app)
    install_page(app)
    return app


@pytest.fixture
async def client(clean: asyncpg.Pool, pg_url: str) -> AsyncIterator[TestClient[Any, Any]]:
    app = site(pg_url, clean)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        await asyncio.wait_for(app[SERVICES_KEY].hub.listening.wait(), 10)
        yield c


async def advisor(client: TestClient[Any, Any], code: str = "0123",
                  name: str = "月読 さくら") -> int:
    body = {**ADVISOR, "code": code, "display_name": name}
    created = await ok(await client.post("/v1/advisors", json=body, headers=AUTH), 201)
    return int(created["id"])


async def link(client: TestClient[Any, Any], advisor_id: int) -> str:
    issued = await ok(await client.post(f"/v1/advisors/{advisor_id}/signin-links",
                                        headers=AUTH), 201)
    assert issued["path"] == f"/advisor/signin/{issued['token']}"
    return str(issued["path"])


async def signed_in(client: TestClient[Any, Any], advisor_id: int) -> tuple[str, str]:
    """(the session cookie's value, the page's CSRF token), signed in over HTTP."""
    resp = await client.post(await link(client, advisor_id), allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (303, "/advisor")
    token = resp.cookies[COOKIE].value
    client.session.cookie_jar.clear()      # each request names its session itself
    page = await (await client.get("/advisor", headers=cookie(token))).text()
    csrf = page.split('data-csrf="', 1)[1].split('"', 1)[0]
    return token, csrf


def cookie(token: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={token}"}


async def desk(pool: asyncpg.Pool, advisor_id: int) -> str:
    return str(await pool.fetchval("SELECT desk FROM advisor_presence WHERE advisor_id = $1",
                                   advisor_id))


async def shows(page: Any, state: str, since: float) -> float:
    """Seconds from ``since`` until the page shows ``state``."""
    await page.locator(f'#advisor-state[data-state="{state}"]').wait_for(timeout=5_000)
    return time.monotonic() - since


async def test_sign_in_go_on_standby_and_see_changes_made_elsewhere(
        client: TestClient[Any, Any], browser: Any, clean: asyncpg.Pool) -> None:
    aid = await advisor(client)
    await client.put("/v1/advisor-settings", json={"after_call": "manual"}, headers=AUTH)
    context = await browser.new_context(locale="ja-JP")
    try:
        page = await context.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        await page.goto(str(client.make_url(await link(client, aid))))
        assert await page.title() == "相談員ページへのサインイン"
        await page.click("#sign-in")
        await page.wait_for_url("**/advisor")
        assert await page.title() == "相談員ページ"
        assert await page.inner_text("#advisor-name") == "月読 さくら"
        assert await page.inner_text("#advisor-state") == "オフライン"
        [session] = await context.cookies()
        assert (session["name"], session["httpOnly"], session["sameSite"],
                session["secure"]) == (COOKIE, True, "Strict", False)   # plain HTTP here
        assert await clean.fetchval("SELECT count(*) FROM advisor_sessions "
                                    "WHERE token_sha256 = sha256($1::text::bytea)",
                                    session["value"]) == 1      # stored as its digest
        await page.click("button.presence[data-presence=online]")
        await shows(page, "standby", time.monotonic())
        assert await page.inner_text("#advisor-state") == "待機中"
        assert await desk(clean, aid) == "standby"
        assert await clean.fetchval("SELECT via FROM advisor_events WHERE advisor_id = $1 "
                                    "ORDER BY id DESC LIMIT 1", aid) == "web"
        live = client.server.app[SERVICES_KEY].live
        for event, state, label in (
                (pm.Offered(live.clock(), "c-1"), "ringing", "着信中"),
                (pm.Answered(live.clock(), "c-1"), "talking", "通話中"),
                (pm.ConsultationEnded(live.clock(), "c-1"), "wrap_up", "後処理中")):
            started = time.monotonic()
            await live.apply("acme", aid, event)
            assert await shows(page, state, started) < 1.0
            assert await page.inner_text("#advisor-state") == label
        end = page.locator("#end-wrap-up")
        assert await end.is_visible() and await end.inner_text() == "後処理を終える"
        await end.click()
        await shows(page, "standby", time.monotonic())
        assert not await end.is_visible() and await desk(clean, aid) == "standby"
        for presence, state, label in (("break", "break", "休憩中"),
                                       ("working", "working", "作業中"),
                                       ("offline", "offline", "オフライン")):
            await page.click(f"button.presence[data-presence={presence}]")
            await shows(page, state, time.monotonic())
            assert await page.inner_text("#advisor-state") == label
            assert await desk(clean, aid) == state
        # a change by the merchant's API reaches the page too
        started = time.monotonic()
        await ok(await client.put(f"/v1/advisors/{aid}/presence", json={"presence": "online"},
                                  headers=AUTH))
        assert await shows(page, "standby", started) < 1.0
        assert not [m for m in console if "Content Security Policy" in m], console
    finally:
        await context.close()


async def test_sign_out_and_a_revoked_session_end_at_the_sign_in_page(
        client: TestClient[Any, Any], browser: Any, clean: asyncpg.Pool) -> None:
    aid = await advisor(client)
    context = await browser.new_context(locale="ja-JP")
    try:
        page = await context.new_page()
        await page.goto(str(client.make_url(await link(client, aid))))
        await page.click("#sign-in")
        await page.wait_for_url("**/advisor")
        token = (await context.cookies())[0]["value"]
        await page.click("#sign-out")
        await page.locator("main.message h1").wait_for(timeout=5_000)
        assert await page.inner_text("main.message h1") == "サインインしてください"
        assert await clean.fetchval("SELECT revoked_at IS NOT NULL FROM advisor_sessions")
        assert (await client.get("/v1/advisor/me", headers=cookie(token))).status == 401
        # signed in again, then the merchant revokes the advisor's sessions
        await page.goto(str(client.make_url(await link(client, aid))))
        await page.click("#sign-in")
        await page.wait_for_url("**/advisor")
        assert await page.inner_text("#advisor-state") == "オフライン"
        token = (await context.cookies())[0]["value"]
        csrf = await page.get_attribute("#advisor-page", "data-csrf")
        assert csrf is not None
        ended = await ok(await client.delete(f"/v1/advisors/{aid}/sessions", headers=AUTH))
        assert ended == {"advisor_id": aid, "sessions_ended": 1}
        # the open page's stream ends with its session, and its reconnection is refused
        await page.locator("main.message h1").wait_for(
            timeout=(SESSION_CHECK_S + 10) * 1000)
        refused = await client.put("/v1/advisor/presence", json={"presence": "online"},
                                   headers={**cookie(token), "X-CSRF-Token": csrf})
        assert (await refused.json())["error"]["id"] == "session-invalid"
        assert await desk(clean, aid) == "offline"
        resp = await client.get("/advisor")
        assert (resp.status, resp.content_type) == (401, "text/html")
        assert "新しいサインイン用リンク" in await resp.text()
    finally:
        await context.close()


async def test_a_link_signs_in_once_before_it_expires(
        client: TestClient[Any, Any], clean: asyncpg.Pool) -> None:
    aid = await advisor(client)
    path = await link(client, aid)
    assert (await client.get(path)).status == 200          # looking at it uses nothing
    first, second = await asyncio.gather(client.post(path, allow_redirects=False),
                                         client.post(path, allow_redirects=False))
    assert sorted((first.status, second.status)) == [303, 410]
    resp = await client.get(path)
    assert (resp.status, resp.content_type) == (410, "text/html")
    assert "使用済み" in await resp.text()
    old = await link(client, aid)
    await clean.execute("UPDATE advisor_signin_links SET expires_at = now() - interval '1 s' "
                        "WHERE used_at IS NULL")
    assert (await client.get(old)).status == 410
    assert (await client.post(old, allow_redirects=False)).status == 410
    assert (await client.post("/advisor/signin/nothing", allow_redirects=False)).status == 410
    # a session past its time is no session
    token, _ = await signed_in(client, aid)
    await clean.execute("UPDATE advisor_sessions SET expires_at = now() - interval '1 s'")
    assert (await client.get("/advisor", headers=cookie(token))).status == 401
    # links are the merchant's to issue, for its own advisors
    assert (await client.post(f"/v1/advisors/{aid}/signin-links")).status == 401
    other = {"Authorization": f"Bearer {BENTO}"}
    assert (await client.post(f"/v1/advisors/{aid}/signin-links", headers=other)).status \
        == 404
    assert (await client.delete(f"/v1/advisors/{aid}/sessions", headers=other)).status == 404


async def test_a_session_changes_its_own_advisor_only_and_needs_its_csrf_token(
        client: TestClient[Any, Any], clean: asyncpg.Pool) -> None:
    sakura, hikari = await advisor(client), await advisor(client, "0456", "日向 ひかり")
    token, csrf = await signed_in(client, sakura)
    other_token, other_csrf = await signed_in(client, hikari)
    online = {"presence": "online"}
    for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": other_csrf}):
        resp = await client.put("/v1/advisor/presence", json=online,
                                headers={**cookie(token), **headers})
        assert (resp.status, (await resp.json())["error"]["id"]) == (403, "csrf-invalid"), (
            headers, await resp.text())
    assert (await client.put("/v1/advisor/presence", json=online,
                             headers={"X-CSRF-Token": csrf})).status == 401
    bad = await client.put("/v1/advisor/presence", json={"presence": "asleep"},
                           headers={**cookie(token), "X-CSRF-Token": csrf})
    assert (await bad.json())["error"]["field"] == "presence"
    mine = await ok(await client.put("/v1/advisor/presence", json=online,
                                      headers={**cookie(token), "X-CSRF-Token": csrf}))
    assert (mine["advisor_id"], mine["presence"]["state"]) == (sakura, "standby")
    assert (await desk(clean, sakura), await desk(clean, hikari)) == ("standby", "offline")
    # the stream of one advisor carries none of another's changes
    async with client.get("/v1/advisor/events", headers=cookie(other_token)) as stream:
        first = await stream.content.readuntil(b"\n\n")
        assert b"event: state" in first and b'"advisor_id": %d' % hikari in first
        await client.put("/v1/advisor/presence", json={"presence": "break"},
                         headers={**cookie(token), "X-CSRF-Token": csrf})
        await client.put("/v1/advisor/presence", json={"presence": "working"},
                         headers={**cookie(other_token), "X-CSRF-Token": other_csrf})
        frame = await asyncio.wait_for(stream.content.readuntil(b"\n\n"), 5)
        assert b"event: presence" in frame and b'"advisor_id": %d' % hikari in frame
        assert b'"after": "working"' in frame


async def test_another_sites_page_can_neither_sign_its_visitor_in_nor_change_anything(
        client: TestClient[Any, Any], clean: asyncpg.Pool) -> None:
    """Login CSRF: a page elsewhere holding the attacker's own sign-in link posts its form
    from the victim's browser, which would then work (and be watched) as the attacker's
    advisor. The browser names the other site; the link stays unused."""
    aid = await advisor(client)
    path = await link(client, aid)
    own = str(client.make_url("")).rstrip("/")
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                    {"Sec-Fetch-Site": "cross-site", "Origin": own}):
        resp = await client.post(path, headers=headers, allow_redirects=False)
        assert (resp.status, resp.content_type) == (403, "text/html"), headers
        assert COOKIE not in resp.cookies and "別のサイト" in await resp.text()
    assert await clean.fetchval("SELECT count(*) FROM advisor_sessions") == 0
    resp = await client.post(path, headers={"Origin": own, "Sec-Fetch-Site": "same-origin"},
                             allow_redirects=False)
    assert resp.status == 303
    client.session.cookie_jar.clear()
    token, csrf = await signed_in(client, aid)
    mine = {**cookie(token), "X-CSRF-Token": csrf, "Origin": "https://evil.example"}
    for method, route, body in (("PUT", "/v1/advisor/presence", {"presence": "online"}),
                                ("POST", "/v1/advisor/signout", None)):
        resp = await client.request(method, route, json=body, headers=mine)
        assert (resp.status, (await resp.json())["error"]["id"]) == (
            403, "cross-site-request"), route
    assert await desk(clean, aid) == "offline"
    assert (await client.get("/advisor", headers=cookie(token))).status == 200


async def test_a_hostile_name_is_text_on_the_advisors_page(
        client: TestClient[Any, Any], browser: Any) -> None:
    """A display name with markup, quotes and a closing script tag is escaped in the
    page and stays text once the event stream's state has rewritten it."""
    hostile = '月読</script><img src=x onerror="document.title=\'xss\'">\'"&<b>さくら'
    aid = await advisor(client, name=hostile)
    token, _ = await signed_in(client, aid)
    html = await (await client.get("/advisor", headers=cookie(token))).text()
    assert "<img" not in html and "月読&lt;/script&gt;&lt;img" in html
    context = await browser.new_context(locale="ja-JP")
    try:
        page = await context.new_page()
        await page.goto(str(client.make_url(await link(client, aid))))
        await page.click("#sign-in")
        await page.locator("#advisor-state").wait_for(timeout=5_000)
        await asyncio.sleep(1)          # the stream's first state has been written
        assert await page.locator("#advisor-name").inner_text() == hostile
        assert await page.locator("main img, main b").count() == 0
        assert await page.title() != "xss"
    finally:
        await context.close()


async def test_a_real_browser_on_another_site_is_not_signed_in_by_its_form(
        client: TestClient[Any, Any], browser: Any, clean: asyncpg.Pool) -> None:
    """Chromium opens a page on another site (``localhost``, the site being
    ``127.0.0.1``) that posts the attacker's sign-in link by itself: the site answers the
    403 page, the link stays unused and the browser holds no session cookie."""
    path = await link(client, await advisor(client))
    target = str(client.make_url(path))

    async def attacker(_: web.Request) -> web.Response:
        return web.Response(content_type="text/html", text=(
            f'<form id="f" method="post" action="{target}"></form>'
            '<script>document.getElementById("f").submit()</script>'))

    evil = web.Application()
    evil.router.add_get("/", attacker)
    async with TestServer(evil, host="127.0.0.1") as evil_server:
        context = await browser.new_context(locale="ja-JP")
        try:
            page = await context.new_page()
            async with page.expect_response(target) as answered:
                await page.goto(f"http://localhost:{evil_server.port}/")
            response = await answered.value
            assert response.status == 403
            await page.get_by_text("別のサイトから送られた操作").wait_for(timeout=5_000)
            assert not [c for c in await context.cookies() if c["name"] == COOKIE]
        finally:
            await context.close()
    assert await clean.fetchval("SELECT count(*) FROM advisor_sessions") == 0
    assert await clean.fetchval("SELECT count(*) FROM advisor_signin_links "
                                "WHERE used_at IS NULL") == 1


async def test_the_access_log_leaves_a_links_token_out(
        clean: asyncpg.Pool, pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The server's options (``serve``'s) log each request without the token that is
    the link's credential, nor a recording link's signature."""
    app = site(pg_url, clean)
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(access_log=logging.getLogger("aiohttp.access"),
                              **serve_options())
    async with TestClient(server) as c:
        await asyncio.wait_for(app[SERVICES_KEY].hub.listening.wait(), 10)
        path = await link(c, await advisor(c))
        token = path.rsplit("/", 1)[1]
        assert (await c.get(path)).status == 200
        assert (await c.post(path, allow_redirects=False)).status == 303
        await c.get("/v1/recordings/1/audio?expires=9&signature=cafe01")
    # each line is written once its response is sent: all are in once the server closed
    lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"
             and "/v1/advisors" not in r.getMessage()]
    assert token not in "\n".join(lines) and "cafe01" not in "\n".join(lines), lines
    assert '"GET /advisor/signin/[redacted] HTTP/1.1" 200' in lines[0], lines
    assert '"POST /advisor/signin/[redacted] HTTP/1.1" 303' in lines[1], lines
    assert "/v1/recordings/1/audio?expires=9&signature=[redacted]" in lines[2], lines


async def test_english_and_the_cookie_is_secure_over_tls(
        clean: asyncpg.Pool, pg_url: str, pki_dir: Path) -> None:
    app = site(pg_url, clean)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = pki.server_context(pki_dir / "callback.pem", pki_dir / "callback.key",
                             pki_dir / "ca.pem", require_client_cert=False)
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    client_ctx: ssl.SSLContext = pki.client_context(pki_dir / "ca.pem")
    client_ctx.check_hostname = False
    base = f"https://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(base) as http:
            created = await ok(await http.post("/v1/advisors", json=ADVISOR, headers=AUTH,
                                               ssl=client_ctx), 201)
            issued = await ok(await http.post(f"/v1/advisors/{created['id']}/signin-links",
                                              headers=AUTH, ssl=client_ctx), 201)
            signin = await http.get(issued["path"] + "?lang=en", ssl=client_ctx)
            assert "<title>Sign in to the advisor page</title>" in await signin.text()
            resp = await http.post(issued["path"] + "?lang=en", ssl=client_ctx,
                                   allow_redirects=False)
            assert (resp.status, resp.headers["Location"]) == (303, "/advisor?lang=en")
            set_cookie = resp.headers["Set-Cookie"]
            for attribute in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
                assert attribute in set_cookie, set_cookie
            token = resp.cookies[COOKIE].value
            page = await http.get("/advisor", headers={**cookie(token),
                                                       "Accept-Language": "en-GB,en"},
                                  ssl=client_ctx)
            html = await page.text()
            assert '<html lang="en">' in html and ">Offline</strong>" in html
            assert page.headers["Content-Security-Policy"].startswith("default-src 'none'")
            script = await http.get("/web/advisor.js", ssl=client_ctx)
            assert (script.status, script.content_type) == (200, "text/javascript")
    finally:
        await runner.cleanup()
