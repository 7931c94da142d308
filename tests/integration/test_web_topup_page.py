"""The prepaid top-up page in a real browser (chromium) against a real localstripe and a
real PostgreSQL: the card typed in is looked up at Stripe by the site, charged the link's
amount and the balance credited once, whatever asks again (the page, the
setup_intent.succeeded webhook, the periodic job, all at once); a card whose charge is
declined credits nothing and the link says so; the link once used is a 410 page."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from billing.card_http import SERVICES_KEY, run_once
from billing.ledger import Balance, Ledger
from tests.integration import billing_db
from tests.integration.browser import browser_fixture
from tests.integration.localstripe import client_for, localstripe_fixture
from tests.integration.test_billing_card_http import error_id, event, ok, webhook
from tests.integration.test_billing_http import AUTH
from tests.integration.test_billing_postpaid import enter_card
from tests.integration.test_web_card_page import client, typed_card

pytestmark = pytest.mark.integration
pool, clean = billing_db.fixtures()
localstripe = localstripe_fixture()
browser = browser_fixture()
__all__ = ["client"]        # the fixture, shared with the card page's tests


async def link_for(client: TestClient[Any, Any], account: str, amount: int
                   ) -> dict[str, Any]:
    link = await ok(await client.post(f"/v1/billing/accounts/{account}/topup-links",
                                      json={"amount_yen": amount, "by": "op"},
                                      headers=AUTH), 201)
    assert (link["state"], link["amount_yen"], link["topup_id"]) == ("awaiting-card",
                                                                      amount, None)
    link["token"] = link["link"].removeprefix("https://pay.example.jp/topup/")
    return link


async def deposits(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM billing_transactions "
                                   "WHERE kind = 'deposit'"))


async def test_the_card_typed_in_the_page_tops_the_balance_up_once(
        client: TestClient[Any, Any], clean: asyncpg.Pool, browser: Any,
        localstripe: int) -> None:
    link = await link_for(client, "member-9", 3000)
    confirm = f"/v1/billing/topup-links/{link['token']}/confirm"
    assert await error_id(await client.post(confirm), 409) == "setup-not-succeeded"
    said, console = await typed_card(browser, str(client.make_url(f"/topup/{link['token']}")),
                                     "4242 4242 4242 4242", title="残高のチャージ")
    assert said == "3,000円 をチャージしました。このページを閉じてください。", console
    assert not [m for m in console if "Content Security Policy" in m], console
    assert await Ledger(clean).balance("acme", "member-9") == Balance(3000, 0)
    # asked again every way at once: no second charge, no second deposit
    reg = await ok(await client.get(f"/v1/billing/card-registrations/{link['id']}",
                                    headers=AUTH))
    intent = await asyncio.to_thread(client_for(localstripe).v1.setup_intents.retrieve,
                                     reg["setup_intent"])
    body = event("evt_topup_setup", "setup_intent.succeeded", intent.to_dict())
    answers = await asyncio.gather(client.post(confirm), client.post(confirm),
                                   webhook(client, body),
                                   run_once(client.server.app[SERVICES_KEY]))
    assert [(await ok(r))["state"] for r in answers[:2]] == ["succeeded", "succeeded"]
    assert await Ledger(clean).balance("acme", "member-9") == Balance(3000, 0)
    assert await deposits(clean) == 1
    assert await clean.fetchval("SELECT count(*) FROM billing_card_topups") == 1
    state = await ok(await client.get(f"/v1/billing/topup-links/{link['id']}", headers=AUTH))
    assert state["state"] == "succeeded" and state["topup_id"] is not None
    topup = await ok(await client.get(f"/v1/billing/card-topups/{state['topup_id']}",
                                      headers=AUTH))
    assert (topup["state"], topup["amount_yen"]) == ("succeeded", 3000)
    used = await client.get(f"/topup/{link['token']}")
    assert (used.status, used.content_type) == (410, "text/html")
    assert "このリンクの 3,000円 のチャージは完了しています。" in await used.text()


async def test_the_webhook_alone_tops_up_once(
        client: TestClient[Any, Any], clean: asyncpg.Pool, localstripe: int) -> None:
    """The customer closed the page before it asked the site: Stripe's event does it."""
    link = await link_for(client, "member-8", 1500)
    stripe_client = client_for(localstripe)
    reg = await ok(await client.get(f"/v1/billing/card-registrations/{link['id']}",
                                    headers=AUTH))
    await asyncio.to_thread(enter_card, stripe_client, reg["customer"], reg["setup_intent"],
                            reg["client_secret"], "4242424242424242")
    intent = await asyncio.to_thread(stripe_client.v1.setup_intents.retrieve,
                                     reg["setup_intent"])
    body = event("evt_topup_2", "setup_intent.succeeded", intent.to_dict())
    assert (await webhook(client, body))["applied"] is True
    assert (await webhook(client, body))["replay"] is True
    assert await Ledger(clean).balance("acme", "member-8") == Balance(1500, 0)
    assert await deposits(clean) == 1
    resp = await client.get(f"/topup/{link['token']}?lang=en")
    assert resp.status == 410 and "The top-up of ¥1,500 for this link is done." in (
        await resp.text())


async def test_the_page_and_the_webhook_at_once_top_up_once(
        client: TestClient[Any, Any], clean: asyncpg.Pool, localstripe: int) -> None:
    """The card given, then the page (twice), Stripe's event and the periodic job all at
    once: one top-up, one deposit."""
    link = await link_for(client, "member-5", 1000)
    stripe_client = client_for(localstripe)
    reg = await ok(await client.get(f"/v1/billing/card-registrations/{link['id']}",
                                    headers=AUTH))
    await asyncio.to_thread(enter_card, stripe_client, reg["customer"], reg["setup_intent"],
                            reg["client_secret"], "4242424242424242")
    intent = await asyncio.to_thread(stripe_client.v1.setup_intents.retrieve,
                                     reg["setup_intent"])
    confirm = f"/v1/billing/topup-links/{link['token']}/confirm"
    answers = await asyncio.gather(
        client.post(confirm), client.post(confirm),
        webhook(client, event("evt_topup_3", "setup_intent.succeeded", intent.to_dict())),
        run_once(client.server.app[SERVICES_KEY]))
    assert [(await ok(r))["state"] for r in answers[:2]] == ["succeeded", "succeeded"]
    assert await Ledger(clean).balance("acme", "member-5") == Balance(1000, 0)
    assert await deposits(clean) == 1
    assert await clean.fetchval("SELECT count(*) FROM billing_card_topups") == 1


async def test_a_declined_charge_credits_nothing_and_the_link_says_so(
        client: TestClient[Any, Any], clean: asyncpg.Pool, browser: Any) -> None:
    link = await link_for(client, "member-7", 2000)
    said, console = await typed_card(browser, str(client.make_url(f"/topup/{link['token']}")),
                                     "4000000000000341", title="残高のチャージ")
    assert said.startswith("このリンクのお支払いはできませんでした。"), console
    assert await Ledger(clean).balance("acme", "member-7") == Balance(0, 0)
    assert await deposits(clean) == 0
    state = await ok(await client.get(f"/v1/billing/topup-links/{link['id']}", headers=AUTH))
    assert (state["state"], state["failure"]) == ("failed", "card_declined")
    resp = await client.get(f"/topup/{link['token']}")
    assert resp.status == 410 and "新しいリンクをご依頼ください" in await resp.text()


async def test_a_card_link_is_no_top_up_page(client: TestClient[Any, Any]) -> None:
    reg = await ok(await client.post("/v1/billing/accounts/member-6/cards",
                                     json={"by": "op"}, headers=AUTH), 201)
    token = reg["link"].removeprefix("https://pay.example.jp/card?t=")
    resp = await client.get(f"/topup/{token}")
    assert (resp.status, resp.content_type) == (404, "text/html")
    assert await error_id(await client.post(f"/v1/billing/topup-links/{token}/confirm"),
                          404) == "not-found"
