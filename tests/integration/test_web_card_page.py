"""The customer's card page in a real browser (chromium) against a real localstripe
process (its own fake Stripe.js) and a real PostgreSQL: the card typed in is put on file
from Stripe's word and a postpaid consultation is charged to it; a declined card says why
in Japanese and leaves nothing on file; a used, expired or unknown link is its own page;
English on request; the page's headers forbid inline script and framing; the database
keeps the links' digests only (a dump holds no usable link), links sent before that
still open."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from html.parser import HTMLParser
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from billing.card_http import SERVICES_KEY
from billing.cards import Cards
from billing.settings import BillingSettings
from billing.topup_link_http import install as install_topup_links
from shared.db import create_pool, migrate_url
from tests.integration import billing_db
from tests.integration.browser import browser_fixture
from tests.integration.db_scan import tables_holding
from tests.integration.localstripe import client_for, localstripe_fixture
from tests.integration.test_billing_card_http import app_with, error_id, ok, settings_for
from tests.integration.test_billing_http import AUTH
from tests.integration.test_billing_postpaid import TERMS
from web.pages import install as install_pages

pytestmark = pytest.mark.integration
pool, clean = billing_db.fixtures()
localstripe = localstripe_fixture()
browser = browser_fixture()


def page_settings(port: int) -> BillingSettings:
    settings = settings_for(port)
    assert settings.stripe is not None
    return replace(settings, topup_page_url="https://pay.example.jp/topup/{token}",
                   stripe=replace(settings.stripe,
                                  js_url=f"http://127.0.0.1:{port}/js.stripe.com/v3/"))


@pytest.fixture
async def client(clean: asyncpg.Pool, localstripe: int
                 ) -> AsyncIterator[TestClient[Any, Any]]:
    app = app_with(clean, page_settings(localstripe))
    install_topup_links(app)
    install_pages(app, {"acme": "占いの館 星読み"})
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def registered(client: TestClient[Any, Any], account: str = "member-42"
                     ) -> dict[str, Any]:
    reg = await ok(await client.post(f"/v1/billing/accounts/{account}/cards",
                                     json={"by": "op"}, headers=AUTH), 201)
    reg["token"] = reg["link"].removeprefix("https://pay.example.jp/card?t=")
    return reg


async def typed_card(browser: Any, url: str, number: str, title: str = "カードのご登録"
                     ) -> tuple[str, list[str]]:
    """Open the page (its title ``title``), type the card into the card element and
    submit: the status line once the page has an answer, and what the browser's console
    said."""
    context = await browser.new_context(locale="ja-JP")
    try:
        page = await context.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        response = await page.goto(url)
        assert response is not None and response.status == 200
        assert await page.title() == title
        field = "#card-element input[placeholder={}]".format
        await page.locator(field("number")).press_sequentially(number)
        await page.locator(field("exp_month")).fill("12")
        await page.locator(field("exp_year")).fill("30")
        await page.locator(field("cvc")).fill("123")
        await page.locator(field("postal_code")).fill("1000001")
        await page.click("#card-submit")
        status = page.locator("#card-status.done, #card-status.error")
        await status.wait_for(timeout=20_000)
        return await status.inner_text(), console
    finally:
        await context.close()


async def test_the_card_typed_in_the_page_is_put_on_file_and_charged(
        client: TestClient[Any, Any], browser: Any) -> None:
    reg = await registered(client)
    url = str(client.make_url(f"/card/{reg['token']}"))
    said, console = await typed_card(browser, url, "4242 4242 4242 4242")
    assert said == "カードを登録しました。このページを閉じてください。", console
    assert not [m for m in console if "Content Security Policy" in m], console
    on_file = await ok(await client.get(f"/v1/billing/card-registrations/{reg['id']}",
                                        headers=AUTH))
    assert on_file["state"] == "on-file" and on_file["payment_method"].startswith("pm_")
    standing = await ok(await client.get("/v1/billing/accounts/member-42/postpaid",
                                         headers=AUTH))
    assert standing["has_card"] is True
    postpaid = client.server.app[SERVICES_KEY].postpaid
    charge = await postpaid.charge("acme", "member-42", "consult-1", 125, TERMS, by="calls")
    assert charge is not None and (charge.state, charge.total_yen) == ("paid", 300)
    used = await client.get(f"/card/{reg['token']}")        # the link once more
    assert used.status == 410
    assert "このリンクのカードはすでに登録されています。" in await used.text()


async def test_a_declined_card_says_so_and_nothing_is_on_file(
        client: TestClient[Any, Any], browser: Any) -> None:
    reg = await registered(client)
    said, console = await typed_card(browser, str(client.make_url(f"/card/{reg['token']}")),
                                     "4000000000000002")
    assert said == "このカードはご利用いただけませんでした。別のカードをお試しください。", console
    on_file = await ok(await client.get(f"/v1/billing/card-registrations/{reg['id']}",
                                        headers=AUTH))
    assert (on_file["state"], on_file["payment_method"]) == ("awaiting-card", None)
    # the browser's word alone puts nothing on file: the site asks Stripe
    assert await error_id(await client.post(
        f"/v1/billing/card-setup/{reg['token']}/confirm"), 409) == "setup-not-succeeded"


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_script = tag == "script"
        if tag == "script":
            self.scripts.append(dict(attrs))
        self.inline += [name for name, _ in attrs if name.startswith("on") or name == "style"]

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(data)

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


async def test_the_page_s_headers_and_markup_are_strict(
        client: TestClient[Any, Any], localstripe: int) -> None:
    reg = await registered(client)
    resp = await client.get(f"/card/{reg['token']}")
    html = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/html"
    csp = resp.headers["Content-Security-Policy"]
    stripe = f"http://127.0.0.1:{localstripe}"
    assert f"script-src 'self' {stripe};" in csp and "frame-ancestors 'none'" in csp
    assert "default-src 'none'" in csp and "unsafe" not in csp
    assert (resp.headers["X-Frame-Options"], resp.headers["Referrer-Policy"],
            resp.headers["Cache-Control"]) == ("DENY", "no-referrer", "no-store")
    tags = Tags()
    tags.feed(html)
    assert tags.inline == []
    assert [s["src"] for s in tags.scripts] == [f"{stripe}/js.stripe.com/v3/", "/web/card.js"]
    assert "占いの館 星読み" in html and "ご相談が終わるたびに" in html     # postpaid: acme
    # no secret but the client secret and the publishable key
    assert reg["client_secret"] in html and "pk_test_page" in html
    assert "sk_test" not in html and "whsec" not in html
    script = await client.get("/web/card.js")
    assert (script.status, script.content_type) == (200, "text/javascript")
    assert "confirmCardSetup" in await script.text()
    assert (await client.get("/web/page.css")).content_type == "text/css"
    assert await error_id(await client.get("/web/other.js"), 404) == "not-found"


async def test_english_by_query_or_accept_language(client: TestClient[Any, Any]) -> None:
    reg = await registered(client, "member-7")
    url = f"/card/{reg['token']}"
    for headers, query in (({}, "?lang=en"), ({"Accept-Language": "en-US,en;q=0.9"}, ""),
                           ({"Accept-Language": "ja;q=0.1, en;q=0.8"}, "")):
        html = await (await client.get(url + query, headers=headers)).text()
        assert '<html lang="en">' in html and "<title>Register your card</title>" in html
    html = await (await client.get(url + "?lang=ja",
                                   headers={"Accept-Language": "en"})).text()
    assert "<title>カードのご登録</title>" in html
    html = await (await client.get(url, headers={"Accept-Language": "fr, en;q=0"})).text()
    assert '<html lang="ja">' in html


async def test_an_unknown_used_or_expired_link_is_its_own_page(
        client: TestClient[Any, Any], clean: asyncpg.Pool) -> None:
    for token in ("x" * 32, "short", "y" * 300):
        resp = await client.get(f"/card/{token}")
        assert (resp.status, resp.content_type) == (404, "text/html")
        assert "このリンクは無効です" in await resp.text()
    reg = await registered(client)     # and one like it, sent 8 days ago (a week is valid)
    await clean.execute(
        "INSERT INTO billing_card_registrations (merchant_id, account_id, customer, "
        "setup_intent, client_secret, link_sha256, requested_by, requested_at) "
        "SELECT merchant_id, account_id, customer, 'seti_old', client_secret, "
        "sha256('old-link-token-1234'), requested_by, now() - interval '8 days' "
        "FROM billing_card_registrations WHERE id = $1", reg["id"])
    assert (await client.get(f"/card/{reg['token']}")).status == 200
    resp = await client.get("/card/old-link-token-1234?lang=en")
    assert (resp.status, resp.content_type) == (410, "text/html")
    assert "This link has expired" in await resp.text()
    assert resp.headers["X-Frame-Options"] == "DENY"


async def test_a_dump_of_the_database_holds_no_usable_link(
        client: TestClient[Any, Any], clean: asyncpg.Pool) -> None:
    reg = await registered(client)
    link = await ok(await client.post("/v1/billing/accounts/member-43/topup-links",
                                      json={"amount_yen": 3000, "by": "op"}, headers=AUTH), 201)
    topup_token = link["link"].removeprefix("https://pay.example.jp/topup/")
    for token in (reg["token"], topup_token):
        assert len(token) >= 32 and await tables_holding(clean, token) == {}
        assert await clean.fetchval("SELECT count(*) FROM billing_card_registrations WHERE "
                                    "link_sha256 = sha256($1::bytea)", token.encode()) == 1
    # the link is in the reply that made it only; the pages still open by it
    again = await ok(await client.get(f"/v1/billing/card-registrations/{reg['id']}",
                                      headers=AUTH))
    assert again["link"] is None and again["client_secret"] == reg["client_secret"]
    assert (await client.get(f"/card/{reg['token']}")).status == 200
    assert (await client.get(f"/topup/{topup_token}")).status == 200
    assert (await ok(await client.get(f"/v1/billing/card-setup/{reg['token']}")))[
        "state"] == "awaiting-card"


async def test_the_links_sent_before_the_digests_still_open_their_pages(
        pg_server_url: str) -> None:
    """Migration 0012 on rows written with the token itself: each keeps its digest."""
    async with billing_db.database_before(pg_server_url, "links_before_digests", "0012") as url:
        conn = await asyncpg.connect(url)
        try:
            acc = await conn.fetchval("INSERT INTO billing_accounts (merchant_id, account) "
                                      "VALUES ('acme', 'member-1') RETURNING id")
            await conn.execute(
                "INSERT INTO billing_card_registrations (merchant_id, account_id, customer, "
                "setup_intent, client_secret, link_token, requested_by) VALUES ('acme', $1, "
                "'cus_1', 'seti_1', 'seti_1_secret', 'a-link-sent-before-0012', 'op')", acc)
        finally:
            await conn.close()
        assert (await migrate_url(url, list(billing_db.SETS)))[0] == \
            "billing/0012_link_digests.sql"
        pool = await create_pool(url)
        try:
            assert await tables_holding(pool, "a-link-sent-before-0012") == {}
            cards = Cards(pool, client_for(1))
            reg = await cards.by_token("a-link-sent-before-0012")
            assert (reg.setup_intent, reg.link_token) == ("seti_1", "a-link-sent-before-0012")
        finally:
            await pool.close()
