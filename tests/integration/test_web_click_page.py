"""The customer's click-to-call page in a real browser (chromium) against a real
PostgreSQL and the local server speaking Twilio's API that the SMS tests use: the
advisors' availability, refreshed live; a number verified by the code the SMS worker
sent through the outbox, then the call asked for through ``POST /v1/consultations``'s
path (the click-to-call row with the advisor and the number) and followed to its end;
three wrong codes lock the number; billing's refusal is said in Japanese; the rate
limits per number and per client. A real call through Asterisk from this page is not
made here (the click-to-call e2e proves the call itself)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from advisors import presence as pm
from advisors.live import Presences
from advisors.model import Via
from billing.settings import BillingSettings
from callback_server import click_verify
from callback_server.advisor_desk import AdvisorDesk
from callback_server.click_http import ClickIntake
from callback_server.click_http import install as install_click
from callback_server.click_web_http import install as install_click_web
from callback_server.consult_billing import ConsultBilling
from callback_server.guard.service import Guard
from callback_server.guard.settings import GuardSettings
from callback_server.routing import Routing
from callback_server.store import CallbackStore
from ivr_platform.sms_config import SmsSettings
from ivr_platform.sms_http import install as install_sms
from ivr_platform.sms_twilio import TwilioSettings
from shared.client_address import TRUSTED_PROXIES_KEY, parse_network
from shared.http import TOKENS_KEY, MerchantTokens, error_middleware
from shared.phone import normalise
from tests.integration import test_click_to_call_http as click_to_call
from tests.integration.browser import browser_fixture
from tests.integration.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio
from tests.integration.test_callback_http import MERCHANTS
from web.click_page import install as install_page

pytestmark = pytest.mark.integration
browser = browser_fixture()
pool, db = click_to_call.pool, click_to_call.db      # the merchants, advisors, customer
CUSTOMER = click_to_call.CUSTOMER
SENDER = normalise("050-1111-2222")
#: a number with no account: no balance
STRANGER = "080-5555-6666"
TOPUP = "https://acme.example.jp/charge"
#: the site's trusted proxy: the test client's address
LOAD_BALANCER = parse_network("127.0.0.1")
MINE = ("click_phone_codes, click_phone_locks, click_verified, click_web_calls, "
        "sms_messages")


@pytest.fixture
async def site(pool: asyncpg.Pool, db: dict[str, int]
               ) -> AsyncIterator[tuple[TestClient[Any, Any], FakeTwilio, dict[str, int]]]:
    await pool.execute(f"TRUNCATE {MINE} CASCADE")
    fake = FakeTwilio()
    provider = TestServer(fake.app(), host="127.0.0.1")
    await provider.start_server()
    sms = SmsSettings(TwilioSettings(ACCOUNT_SID, AUTH_TOKEN, str(provider.make_url("")),
                                     timeout_s=2), SENDER, backoff_s=0.2, max_backoff_s=0.4,
                      lease_s=8, poll_s=0.1)
    app = web.Application(middlewares=[error_middleware])
    app[TRUSTED_PROXIES_KEY] = (LOAD_BALANCER,)     # the test client stands for it
    app[TOKENS_KEY] = MerchantTokens([(m.id, m.api_token_sha256) for m in MERCHANTS
                                      if m.api_token_sha256])
    install_click(app, lambda _: ClickIntake(
        CallbackStore(pool, owner="http"), AdvisorDesk(pool, Routing(None, ())),
        Guard(pool, GuardSettings()), ConsultBilling(pool, BillingSettings()),
        {m.id: replace(m, topup_url=TOPUP) if m.id == "acme" else m for m in MERCHANTS}))
    install_sms(app, sms, lambda _: pool, owner="page-test")
    install_click_web(app, sms)
    install_page(app)
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            yield client, fake, db
    finally:
        await provider.close()


async def code_sent(fake: FakeTwilio, to: str, count: int = 1) -> str:
    """The code of the ``count``-th SMS to ``to``, once the SMS worker sent it."""
    for _ in range(200):
        bodies = [m["Body"] for m in fake.received if m["To"] == str(normalise(to))]
        if len(bodies) >= count:
            found = re.search(r"[0-9]{6}", bodies[count - 1])
            assert found is not None, bodies
            return found.group()
        await asyncio.sleep(0.05)
    raise AssertionError(f"no SMS to {to}: {fake.received}")


async def open_page(browser: Any, client: TestClient[Any, Any]) -> tuple[Any, Any]:
    context = await browser.new_context(locale="ja-JP")
    page = await context.new_page()
    response = await page.goto(str(client.make_url("/m/acme/advisors")))
    assert response is not None and response.status == 200
    return context, page


async def ask_code(page: Any, advisor_id: int, number: str) -> None:
    await page.click(f'button.call[data-advisor-id="{advisor_id}"]')
    await page.fill("#phone-number", number)
    await page.click("#send-code")
    await page.locator("#code-form").wait_for(state="visible", timeout=5_000)


async def status_says(page: Any, words: str) -> None:
    await page.wait_for_function(
        "words => document.getElementById('call-status').textContent.includes(words)",
        arg=words, timeout=5_000)


async def test_a_verified_number_asks_for_a_call_and_follows_it(
        site: tuple[TestClient[Any, Any], FakeTwilio, dict[str, int]], browser: Any,
        pool: asyncpg.Pool) -> None:
    client, fake, ids = site
    context, page = await open_page(browser, client)
    try:
        assert await page.title() == "ACME 電話相談"
        sip = page.locator(f'li.advisor[data-advisor-id="{ids["sip"]}"]')
        pstn = page.locator(f'li.advisor[data-advisor-id="{ids["pstn"]}"]')
        assert await sip.locator(".price").inner_text() == "1分 100円（税込）"
        assert await sip.locator(".availability").inner_text() == "相談できます"
        assert await pstn.locator(".availability").inner_text() == "オフライン"
        assert await sip.locator("button.call").inner_text() == "電話で相談する"
        assert not await pstn.locator("button.call").is_visible()
        # the list follows the advisors' presence
        live = Presences(pool)
        await live.apply("acme", ids["pstn"], pm.GoOnline(datetime.now(UTC), Via.API))
        await pstn.locator('button.call').wait_for(state="visible", timeout=5_000)
        assert await pstn.locator(".availability").inner_text() == "相談できます"
        await live.apply("acme", ids["pstn"], pm.GoOffline(datetime.now(UTC), Via.API))
        await pstn.locator("button.call").wait_for(state="hidden", timeout=5_000)

        await ask_code(page, ids["sip"], "090-1234-5678")
        await page.fill("#phone-code", await code_sent(fake, CUSTOMER))
        await page.click("#verify-code")
        await status_says(page, "お客様のお電話をお呼び出ししています")
        row = await pool.fetchrow(
            "SELECT k.callback_id, k.advisor_id, r.caller FROM click_to_call_requests k "
            "JOIN callback_requests r USING (callback_id)")
        assert (row["advisor_id"], row["caller"]) == (ids["sip"], CUSTOMER)
        cookie = [c for c in await context.cookies() if c["name"] == "cbgw_caller"]
        assert [(c["httpOnly"], c["sameSite"]) for c in cookie] == [(True, "Strict")]
        consultation = f"{row['callback_id']}-c1"
        await live.apply("acme", ids["sip"], pm.Offered(datetime.now(UTC), consultation))
        await status_says(page, "相談員におつなぎしています")
        await live.apply("acme", ids["sip"], pm.Answered(datetime.now(UTC), consultation))
        await status_says(page, "通話中です。")
        await pool.execute("UPDATE callback_requests SET status = 'completed' "
                           "WHERE callback_id = $1", row["callback_id"])
        await status_says(page, "通話は終了しました。")
    finally:
        await context.close()


async def test_three_wrong_codes_lock_the_number(
        site: tuple[TestClient[Any, Any], FakeTwilio, dict[str, int]], browser: Any,
        pool: asyncpg.Pool) -> None:
    client, fake, ids = site
    context, page = await open_page(browser, client)
    try:
        await ask_code(page, ids["sip"], "090-1234-5678")
        right = await code_sent(fake, CUSTOMER)
        wrong = f"{(int(right) + 1) % 1_000_000:06d}"
        for left in (2, 1):
            await page.fill("#phone-code", wrong)
            await page.click("#verify-code")
            await status_says(page, f"確認コードが違います（あと{left}回）")
        await page.fill("#phone-code", wrong)
        await page.click("#verify-code")
        await status_says(page, "この番号はしばらくご利用いただけません")
    finally:
        await context.close()
    assert await pool.fetchval("SELECT count(*) FROM click_to_call_requests") == 0
    assert await pool.fetchval("SELECT locked_until > now() + interval '20 minutes' "
                               "FROM click_phone_locks WHERE number = $1", CUSTOMER)
    # locked: the right code does nothing now, nor does a new code go out
    resp = await client.post("/v1/m/acme/phone-verifications",
                             json={"number": CUSTOMER, "code": right})
    assert (resp.status, (await resp.json())["error"]["id"]) == (423, "number-locked")
    resp = await client.post("/v1/m/acme/phone-codes", json={"number": CUSTOMER})
    assert resp.status == 423
    assert len([m for m in fake.received if m["To"] == CUSTOMER]) == 1


async def test_a_refused_request_says_why(
        site: tuple[TestClient[Any, Any], FakeTwilio, dict[str, int]], browser: Any,
        pool: asyncpg.Pool) -> None:
    client, fake, ids = site
    context, page = await open_page(browser, client)
    try:
        await ask_code(page, ids["sip"], STRANGER)
        await page.fill("#phone-code", await code_sent(fake, STRANGER))
        await page.click("#verify-code")
        await status_says(page, "残高が不足しています（残高 0円、必要 100円）")
        link = page.locator("#topup-link")
        assert await link.is_visible() and await link.inner_text() == "残高をチャージする"
        assert await link.get_attribute("href") == TOPUP
    finally:
        await context.close()
    assert await pool.fetchval("SELECT count(*) FROM click_to_call_requests") == 0


async def test_codes_and_calls_are_rate_limited_and_need_a_verified_number(
        site: tuple[TestClient[Any, Any], FakeTwilio, dict[str, int]],
        pool: asyncpg.Pool) -> None:
    client, fake, ids = site
    unverified = await client.post("/v1/m/acme/calls", json={"advisor_id": ids["sip"]})
    assert (await unverified.json())["error"]["id"] == "verification-required"
    for _ in range(click_verify.CODES_PER_NUMBER):
        assert (await client.post("/v1/m/acme/phone-codes",
                                  json={"number": CUSTOMER})).status == 202
    resp = await client.post("/v1/m/acme/phone-codes", json={"number": CUSTOMER})
    assert (resp.status, (await resp.json())["error"]["id"]) == (429, "rate-limited")
    # the client address too, whatever the number
    others = [f"+81901111{n:04d}" for n in range(click_verify.CODES_PER_CLIENT)]
    statuses = [(await client.post("/v1/m/acme/phone-codes", json={"number": n})).status
                for n in others]
    assert statuses.count(429) == len(others) - (click_verify.CODES_PER_CLIENT
                                                 - click_verify.CODES_PER_NUMBER)
    for number in ("12", "03-1234-5678"):       # not a number; a landline takes no SMS
        bad = await client.post("/v1/m/acme/phone-codes", json={"number": number})
        assert (bad.status, (await bad.json())["error"]["field"]) == (400, "number")
    assert (await client.get("/v1/m/nobody/advisors")).status == 404
    page = await client.get("/m/nobody/advisors")
    assert (page.status, page.content_type) == (404, "text/html")
    # calls per number: a verified number asks for at most CALLS_PER_NUMBER
    await pool.execute("TRUNCATE click_phone_codes")
    await client.post("/v1/m/acme/phone-codes", json={"number": CUSTOMER})
    code = await code_sent(fake, CUSTOMER, 4)
    verified = await client.post("/v1/m/acme/phone-verifications",
                                 json={"number": CUSTOMER, "code": code})
    csrf = (await verified.json())["csrf"]
    no_csrf = await client.post("/v1/m/acme/calls", json={"advisor_id": ids["sip"]})
    assert (await no_csrf.json())["error"]["id"] == "csrf-invalid"
    statuses = [(await client.post("/v1/m/acme/calls", json={"advisor_id": ids["sip"]},
                                   headers={"X-CSRF-Token": csrf})).status
                 for _ in range(click_verify.CALLS_PER_NUMBER + 1)]
    # the guard refuses a second call to a number whose first is pending; refusals count
    assert statuses == [202, 403, 403, 429]
    assert await pool.fetchval("SELECT count(*) FROM click_web_calls") == 3
    assert await pool.fetchval("SELECT count(callback_id) FROM click_web_calls") == 1


async def test_the_page_in_english_and_its_headers(
        site: tuple[TestClient[Any, Any], FakeTwilio, dict[str, int]]) -> None:
    client, _, ids = site
    resp = await client.get("/m/acme/advisors", headers={"Accept-Language": "en-US,en"})
    html = await resp.text()
    assert (resp.status, resp.content_type) == (200, "text/html")
    assert '<html lang="en">' in html and "¥100 a minute (tax included)" in html
    assert ">Call me</button>" in html and f'data-topup-url="{TOPUP}"' in html
    assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert "1分 100円（税込）" in await (await client.get("/m/acme/advisors")).text()
    listed_resp = await client.get("/v1/m/acme/advisors")
    listed = await listed_resp.json()
    # JSON, answered or refused, is never sniffed as HTML nor shown as a page
    for json_resp in (listed_resp, await client.get("/v1/m/<script>/advisors"),
                      await client.post("/v1/m/acme/phone-codes", data=b"<html>")):
        assert json_resp.content_type == "application/json"
        assert json_resp.headers["X-Content-Type-Options"] == "nosniff"
        assert json_resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert [(a["id"], a["availability"]) for a in listed["advisors"]] == [
        (ids["sip"], "available"), (ids["pstn"], "offline")]


async def test_another_sites_page_cannot_send_codes_or_verify_and_codes_go_to_japan_only(
        site: tuple[TestClient[Any, Any], FakeTwilio, dict[str, int]],
        pool: asyncpg.Pool) -> None:
    """A page elsewhere posting to the code routes from its visitors' browsers (each its
    own address, so the per-client limit never bites) is refused before anything is sent;
    so is a code to a mobile abroad, whose operator may share the SMS fee."""
    client, fake, ids = site
    own = str(client.make_url("")).rstrip("/")
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site", "Origin": own},
                    {"Sec-Fetch-Site": "same-site"}):
        for path, body in (("phone-codes", {"number": CUSTOMER}),
                           ("phone-verifications", {"number": CUSTOMER, "code": "123456"}),
                           ("calls", {"advisor_id": ids["sip"]})):
            resp = await client.post(f"/v1/m/acme/{path}", json=body, headers=headers)
            assert (resp.status, (await resp.json())["error"]["id"]) == (
                403, "cross-site-request"), (path, headers)
    assert await pool.fetchval("SELECT count(*) FROM click_phone_codes") == 0
    for number in ("+44 7700 900123", "+63 917 123 4567", "+1 212 555 0100"):
        resp = await client.post("/v1/m/acme/phone-codes", json={"number": number},
                                 headers={"Origin": own})
        assert (resp.status, (await resp.json())["error"]["field"]) == (400, "number")
    assert await pool.fetchval("SELECT count(*) FROM sms_messages") == 0
    for headers in ({"Origin": own}, {"Sec-Fetch-Site": "same-origin"}):
        resp = await client.post("/v1/m/acme/phone-codes", json={"number": CUSTOMER},
                                 headers=headers)
        assert resp.status == 202, await resp.text()
    assert await pool.fetchval("SELECT count(*) FROM click_phone_codes") == 2


HOSTILE = '星野</script><img src=x onerror="document.title=\'xss\'">\'"&<b>ひかり'


async def test_a_hostile_advisor_name_and_query_are_shown_as_text(
        site: tuple[TestClient[Any, Any], FakeTwilio, dict[str, int]], browser: Any,
        pool: asyncpg.Pool) -> None:
    """An advisor's name with markup, quotes and a closing script tag, and a ``lang``
    that is markup: the HTML has them escaped, the browser shows the name as the text
    it is, in the page and after the script's refresh, and runs nothing."""
    client, _, ids = site
    await pool.execute("UPDATE advisors SET display_name = $1 WHERE id = $2", HOSTILE,
                       ids["sip"])
    resp = await client.get("/m/acme/advisors", params={"lang": '"><script>x</script>'})
    html = await resp.text()
    assert resp.status == 200 and "<img" not in html and "<script>x" not in html
    assert "星野&lt;/script&gt;&lt;img src=x onerror=&quot;" in html
    context, page = await open_page(browser, client)
    try:
        name = page.locator(f'li.advisor[data-advisor-id="{ids["sip"]}"] .name')
        assert await name.inner_text() == HOSTILE
        await asyncio.sleep(2.5)       # the script's refresh (REFRESH_S) rewrites the list
        assert await name.inner_text() == HOSTILE
        assert await page.locator("#advisors img, #advisors b").count() == 0
        assert await page.title() == "ACME 電話相談"
    finally:
        await context.close()


async def test_an_advisor_id_past_a_bigint_is_a_400_not_a_500(
        site: tuple[TestClient[Any, Any], FakeTwilio, dict[str, int]],
        pool: asyncpg.Pool) -> None:
    """Behind a verified session (where the contract fuzz, which has none, cannot reach):
    an advisor id one past the database's bigint, or of 400 digits, is refused naming the
    field, and is not counted as a call asked for."""
    client, fake, _ = site
    await client.post("/v1/m/acme/phone-codes", json={"number": CUSTOMER})
    verified = await client.post("/v1/m/acme/phone-verifications", json={
        "number": CUSTOMER, "code": await code_sent(fake, CUSTOMER)})
    csrf = {"X-CSRF-Token": (await verified.json())["csrf"]}
    for raw in (b'{"advisor_id": %d}' % 2**63, b'{"advisor_id": 1' + b"0" * 400 + b"}"):
        resp = await client.post("/v1/m/acme/calls", data=raw, headers=csrf)
        assert (resp.status, (await resp.json())["error"]["field"]) == (400, "advisor_id")
    assert await pool.fetchval("SELECT count(*) FROM click_web_calls") == 0


async def test_behind_the_load_balancer_the_limits_key_on_the_client_it_names(
        site: tuple[TestClient[Any, Any], FakeTwilio, dict[str, int]],
        pool: asyncpg.Pool) -> None:
    """The balancer appends the client's address; what a client wrote to its left (a
    forged hop) changes nothing, and another client behind the same balancer has its own
    count."""
    client, _, _ = site
    numbers = iter(f"+81902222{n:04d}" for n in range(100))

    async def ask(*hops: str) -> int:
        resp = await client.post("/v1/m/acme/phone-codes", json={"number": next(numbers)},
                                 headers={"X-Forwarded-For": ", ".join(hops)})
        return resp.status

    statuses = [await ask(f"6.6.6.{n}", "203.0.113.7")
                for n in range(click_verify.CODES_PER_CLIENT + 1)]
    assert statuses == [202] * click_verify.CODES_PER_CLIENT + [429]
    assert await ask("203.0.113.8") == 202                  # another customer
    assert await ask("203.0.113.8", "203.0.113.7") == 429   # the balancer names .7 again
    assert await ask() == 202                               # the balancer itself
    clients = await pool.fetch("SELECT client, count(*) FROM click_phone_codes GROUP BY 1 "
                               "ORDER BY 1")
    assert [(r["client"], r["count"]) for r in clients] == [
        ("127.0.0.1", 1), ("203.0.113.7", click_verify.CODES_PER_CLIENT), ("203.0.113.8", 1)]
