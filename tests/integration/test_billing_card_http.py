"""The card routes over real HTTP against a real localstripe process and a real
PostgreSQL: a card registered (client secret, the link's page data, confirmed by the
route or by a signed setup_intent.succeeded webhook), a top-up from the card on file, a
postpaid charge declined into dunning (notices) and retried with a new card; Stripe
webhooks applied once (a replay is a no-op, a bad signature 400) to a top-up and a
postpaid charge whose process died after Stripe answered."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
import stripe
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from billing.card_http import SERVICES_KEY, CardServices, run_once
from billing.card_http import install as install_cards
from billing.http import install
from billing.ledger import Balance, Ledger
from billing.postpaid import METADATA_KEY
from billing.rating import Terms
from billing.settings import BillingSettings, StripeSettings
from billing.standing import charges
from billing.stripe_payments import create_intent
from shared.http import TOKENS_KEY, MerchantTokens, error_middleware
from tests.integration import billing_db
from tests.integration.localstripe import card, client_for, localstripe_fixture
from tests.integration.test_billing_http import AUTH, BENTO, BENTO_AUTH, digest
from tests.integration.test_billing_postpaid import enter_card

pytestmark = pytest.mark.integration
pool, clean = billing_db.fixtures()
localstripe = localstripe_fixture()
SECRET = "whsec_test_secret"


def settings_for(port: int) -> BillingSettings:
    return BillingSettings(
        stripe=StripeSettings("sk_test_billing", SECRET, "pk_test_page",
                              f"http://127.0.0.1:{port}"),
        postpaid_merchants=frozenset({"acme"}), retry_after_s=(3600,), every_s=3600,
        card_page_url="https://pay.example.jp/card?t={token}")


def app_with(pool: asyncpg.Pool, settings: BillingSettings) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[TOKENS_KEY] = MerchantTokens([("acme", digest("acme-token")),
                                      ("bento", digest(BENTO))])
    install(app, lambda _: pool)
    install_cards(app, lambda _: pool, settings)
    return app


@pytest.fixture
async def client(clean: asyncpg.Pool, localstripe: int
                 ) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(app_with(clean, settings_for(localstripe)))) as c:
        yield c


def services(client: TestClient[Any, Any]) -> CardServices:
    return client.server.app[SERVICES_KEY]


async def ok(resp: ClientResponse, status: int = 200) -> Any:
    body = await resp.json()
    assert resp.status == status, body
    return body


async def error_id(resp: ClientResponse, status: int) -> str:
    body = await resp.json()
    assert resp.status == status, body
    return str(body["error"]["id"])


def signed(event: dict[str, Any], secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    """The event as Stripe sends it: ``Stripe-Signature: t=…,v1=HMAC-SHA256(secret,
    "t.payload")``."""
    payload = json.dumps(event).encode()
    ts = int(time.time())
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return payload, {"Stripe-Signature": f"t={ts},v1={mac}",
                     "Content-Type": "application/json"}


def event(event_id: str, kind: str, obj: Any) -> dict[str, Any]:
    return {"id": event_id, "object": "event", "type": kind, "data": {"object": obj}}


async def webhook(client: TestClient[Any, Any], body: dict[str, Any]) -> Any:
    payload, headers = signed(body)
    return await ok(await client.post("/v1/billing/stripe/webhook", data=payload,
                                      headers=headers))


async def register(client: TestClient[Any, Any], stripe_client: stripe.StripeClient,
                   account: str, number: str) -> dict[str, Any]:
    reg = await ok(await client.post(f"/v1/billing/accounts/{account}/cards",
                                     json={"by": "op"}, headers=AUTH), 201)
    await asyncio.to_thread(enter_card, stripe_client, reg["customer"], reg["setup_intent"],
                            reg["client_secret"], number)
    return await ok(await client.post(f"/v1/billing/card-registrations/{reg['id']}/confirm",
                                      headers=AUTH))


async def test_a_card_is_registered_and_put_on_file_by_the_webhook_once(
        client: TestClient[Any, Any], localstripe: int) -> None:
    stripe_client = client_for(localstripe)
    reg = await ok(await client.post("/v1/billing/accounts/member-42/cards",
                                      json={"by": "op"}, headers=AUTH), 201)
    assert (reg["state"], reg["publishable_key"]) == ("awaiting-card", "pk_test_page")
    token = reg["link"].removeprefix("https://pay.example.jp/card?t=")
    page = await ok(await client.get(f"/v1/billing/card-setup/{token}"))   # no token needed
    assert page == {"client_secret": reg["client_secret"], "publishable_key": "pk_test_page",
                    "state": "awaiting-card"}
    assert await error_id(await client.get("/v1/billing/card-setup/" + "x" * 32), 404) == (
        "not-found")
    confirm = f"/v1/billing/card-registrations/{reg['id']}/confirm"
    assert await error_id(await client.post(confirm, headers=AUTH), 409) == (
        "setup-not-succeeded")
    await asyncio.to_thread(enter_card, stripe_client, reg["customer"], reg["setup_intent"],
                            reg["client_secret"], "4242424242424242")
    intent = await asyncio.to_thread(stripe_client.v1.setup_intents.retrieve,
                                     reg["setup_intent"])
    body = event("evt_setup_1", "setup_intent.succeeded", intent.to_dict())
    assert await webhook(client, body) == {"event": "evt_setup_1", "applied": True,
                                           "replay": False}
    assert await webhook(client, body) == {"event": "evt_setup_1", "applied": False,
                                           "replay": True}
    await run_once(services(client))                  # kept for 30 days: still a replay
    assert (await webhook(client, body))["replay"] is True
    on_file = await ok(await client.get(f"/v1/billing/card-registrations/{reg['id']}",
                                        headers=AUTH))
    assert (on_file["state"], on_file["payment_method"]) == ("on-file", intent.payment_method)
    assert await ok(await client.post(confirm, headers=AUTH)) == on_file
    assert await error_id(await client.get(f"/v1/billing/card-registrations/{reg['id']}",
                                           headers=BENTO_AUTH), 404) == "not-found"


async def test_event_ids_are_forgotten_after_30_days(
        client: TestClient[Any, Any], clean: asyncpg.Pool) -> None:
    await clean.execute("INSERT INTO billing_stripe_events (event_id, type, received_at) "
                        "VALUES ('evt_old', 'x', now() - interval '31 days'), "
                        "('evt_new', 'x', now() - interval '29 days')")
    await run_once(services(client))
    assert await clean.fetchval("SELECT array_agg(event_id) FROM billing_stripe_events"
                                ) == ["evt_new"]


async def test_a_bad_signature_is_400_and_nothing_is_applied(
        client: TestClient[Any, Any], clean: asyncpg.Pool) -> None:
    body = event("evt_bad", "setup_intent.succeeded", {"id": "seti_x"})
    payload, headers = signed(body, secret="whsec_someone_else")
    resp = await client.post("/v1/billing/stripe/webhook", data=payload, headers=headers)
    assert await error_id(resp, 400) == "invalid-signature"
    resp = await client.post("/v1/billing/stripe/webhook", data=payload)
    assert await error_id(resp, 400) == "invalid-signature"
    assert await clean.fetchval("SELECT count(*) FROM billing_stripe_events") == 0


async def test_a_signed_event_not_shaped_as_stripe_s_is_400(
        client: TestClient[Any, Any], clean: asyncpg.Pool) -> None:
    for body in ({"id": "evt_odd", "type": "payment_intent.succeeded"},
                 event("evt_odd", "setup_intent.succeeded", {"id": "seti_1"})):
        payload, headers = signed(body)
        resp = await client.post("/v1/billing/stripe/webhook", data=payload, headers=headers)
        assert await error_id(resp, 400) == "invalid-event"
    assert await clean.fetchval("SELECT count(*) FROM billing_stripe_events") == 0


async def test_a_top_up_from_the_card_on_file(
        client: TestClient[Any, Any], clean: asyncpg.Pool, localstripe: int) -> None:
    stripe_client = client_for(localstripe)
    assert await error_id(await client.post(
        "/v1/billing/accounts/member-42/card-topups", json={"amount_yen": 3000, "by": "op"},
        headers=AUTH), 409) == "no-card"
    await register(client, stripe_client, "member-42", "4242424242424242")
    topup = await ok(await client.post(
        "/v1/billing/accounts/member-42/card-topups", json={"amount_yen": 3000, "by": "web"},
        headers=AUTH), 201)
    assert (topup["state"], topup["amount_yen"]) == ("succeeded", 3000)
    assert await ok(await client.get(f"/v1/billing/card-topups/{topup['id']}",
                                     headers=AUTH)) == topup
    assert await Ledger(clean).balance("acme", "member-42") == Balance(3000, 0)
    for bad in ({"amount_yen": 0, "by": "web"}, {"amount_yen": "3000", "by": "web"},
                {"amount_yen": 1, "by": "web", "extra": 1}, {"amount_yen": 1}):
        assert await error_id(await client.post(
            "/v1/billing/accounts/member-42/card-topups", json=bad, headers=AUTH),
            400) == "invalid-field"


async def test_webhooks_record_a_top_up_and_a_charge_whose_process_died(
        client: TestClient[Any, Any], clean: asyncpg.Pool, localstripe: int) -> None:
    stripe_client = client_for(localstripe)
    customer, method = await asyncio.to_thread(card, stripe_client, "4242424242424242")
    topups = services(client).topups
    topup = await topups.request("acme", "member-42", 2000, customer=customer,
                                 payment_method=method, by="web")
    intent, _ = await asyncio.to_thread(topups._create, topup)     # then the process died
    body = event("evt_pi_1", "payment_intent.succeeded", intent.to_dict())
    assert (await webhook(client, body))["applied"] is True
    assert await webhook(client, body) == {"event": "evt_pi_1", "applied": False,
                                           "replay": True}
    assert await Ledger(clean).balance("acme", "member-42") == Balance(2000, 0)
    state = await ok(await client.get(f"/v1/billing/card-topups/{topup.id}", headers=AUTH))
    assert (state["state"], state["payment_intent"]) == ("succeeded", intent.id)

    await register(client, stripe_client, "member-9", "4242424242424242")
    postpaid = services(client).postpaid
    recorded = await postpaid.record("acme", "member-9", "consult-1", 90, Terms(100),
                                     by="calls")
    assert recorded is not None
    charge, attempt_id = recorded
    row = await clean.fetchrow("SELECT * FROM billing_postpaid_attempts WHERE id = $1",
                               attempt_id)
    made, _ = await asyncio.to_thread(
        create_intent, stripe_client, amount_yen=charge.total_yen, customer=row["customer"],
        payment_method=row["payment_method"], metadata_key=METADATA_KEY,
        key=row["idempotency_key"], metadata={})
    assert (await webhook(client, event("evt_pi_2", "payment_intent.succeeded",
                                        made.to_dict())))["applied"] is True
    standing = await ok(await client.get("/v1/billing/accounts/member-9/postpaid",
                                         headers=AUTH))
    assert (standing["unpaid"], standing["in_dunning"], standing["has_card"]) == (0, False,
                                                                                True)
    assert [(c["state"], c["payment_intent"], c["total_yen"]) for c in standing["charges"]
            ] == [("paid", made.id, 200)]
    other = event("evt_other", "payment_intent.succeeded", {**made.to_dict(), "metadata": {}})
    assert (await webhook(client, other))["applied"] is False      # not one of ours


async def test_a_declined_charge_is_dunned_then_retried_with_a_new_card(
        client: TestClient[Any, Any], localstripe: int) -> None:
    stripe_client = client_for(localstripe)
    await register(client, stripe_client, "member-42", "4000000000000341")
    charge = await services(client).postpaid.charge("acme", "member-42", "consult-7", 60,
                                                    Terms(150), by="calls")
    assert charge is not None and charge.state == "failed"
    standing = await ok(await client.get("/v1/billing/accounts/member-42/postpaid",
                                         headers=AUTH))
    assert (standing["unpaid"], standing["in_dunning"]) == (1, True)
    notices = await ok(await client.get("/v1/billing/notices", headers=AUTH))
    assert [(n["kind"], n["account"], n["charge_id"]) for n in notices["items"]] == [
        ("charge-failed", "member-42", charge.id)]
    assert (await ok(await client.get("/v1/billing/notices", headers=BENTO_AUTH)))[
        "items"] == []
    await register(client, stripe_client, "member-42", "4242424242424242")
    paid = await ok(await client.post(f"/v1/billing/postpaid-charges/{charge.id}/retry",
                                      headers=AUTH))
    assert (paid["state"], paid["attempts"], paid["total_yen"]) == ("paid", 2, 150)
    after = await ok(await client.get(f"/v1/billing/notices?after_id="
                                      f"{notices['next_after_id']}", headers=AUTH))
    assert [n["kind"] for n in after["items"]] == ["charge-recovered"]
    assert await error_id(await client.post(
        f"/v1/billing/postpaid-charges/{charge.id}/retry", headers=BENTO_AUTH), 404) == (
        "not-found")
    close = f"/v1/billing/postpaid-charges/{charge.id}/close"
    assert await error_id(await client.post(close, json={
        "how": "written-off", "by": "sato", "reason": "goodwill"}, headers=AUTH), 409) == (
        "charge-not-in-dunning")                                      # it was paid
    for bad, field in (({"how": "forgiven", "by": "sato", "reason": "x"}, "how"),
                       ({"how": "written-off", "reason": "x"}, "by"),
                       ({"how": "written-off", "by": "sato", "reason": "x", "y": 1}, "y")):
        resp = await client.post(close, json=bad, headers=AUTH)
        body = await resp.json()
        assert (resp.status, body["error"]["id"], body["error"]["field"]) == (
            400, "invalid-field", field)


async def test_an_operator_closes_a_charge_in_dunning_over_http(
        client: TestClient[Any, Any], localstripe: int) -> None:
    await register(client, client_for(localstripe), "member-42", "4000000000000341")
    charge = await services(client).postpaid.charge("acme", "member-42", "consult-9", 60,
                                                    Terms(100), by="calls")
    assert charge is not None and charge.state == "failed"
    closed = await ok(await client.post(
        f"/v1/billing/postpaid-charges/{charge.id}/close",
        json={"how": "paid-elsewhere", "by": "sato", "reason": "bank transfer"}, headers=AUTH))
    assert (closed["state"], closed["closed"]) == ("closed", "paid-elsewhere")
    standing = await ok(await client.get("/v1/billing/accounts/member-42/postpaid",
                                         headers=AUTH))
    assert (standing["unpaid"], standing["in_dunning"]) == (0, False)


async def test_a_declined_charge_reported_by_webhook_is_dunned(
        client: TestClient[Any, Any], localstripe: int) -> None:
    stripe_client = client_for(localstripe)
    await register(client, stripe_client, "member-42", "4000000000000341")
    postpaid = services(client).postpaid
    recorded = await postpaid.record("acme", "member-42", "consult-8", 60, Terms(100),
                                     by="calls")
    assert recorded is not None
    charge, attempt_id = recorded
    row = await postpaid.pool.fetchrow("SELECT * FROM billing_postpaid_attempts WHERE id = $1",
                                       attempt_id)
    declined, failure = await asyncio.to_thread(       # Stripe declined; the process died
        create_intent, stripe_client, amount_yen=charge.total_yen, customer=row["customer"],
        payment_method=row["payment_method"], metadata_key=METADATA_KEY,
        key=row["idempotency_key"], metadata={})
    assert failure == "card_declined" and declined.status == "requires_payment_method"
    assert (await webhook(client, event("evt_fail", "payment_intent.payment_failed",
                                        declined.to_dict())))["applied"] is True
    standing = await ok(await client.get("/v1/billing/accounts/member-42/postpaid",
                                         headers=AUTH))
    assert (standing["in_dunning"], standing["charges"][0]["failure"]) == (True,
                                                                          "card_declined")
    notices = await ok(await client.get("/v1/billing/notices", headers=AUTH))
    assert [n["kind"] for n in notices["items"]] == ["charge-failed"]


async def test_the_site_job_reconciles_and_retries(
        clean: asyncpg.Pool, localstripe: int) -> None:
    stripe_client = client_for(localstripe)
    settings = replace(settings_for(localstripe), every_s=1, reconcile_after_s=0,
                       retry_after_s=(1,))
    async with TestClient(TestServer(app_with(clean, settings))) as client:
        await register(client, stripe_client, "member-42", "4242424242424242")
        postpaid, topups = services(client).postpaid, services(client).topups
        recorded = await postpaid.record("acme", "member-42", "consult-1", 60, Terms(100),
                                         by="calls")             # then the process died
        assert recorded is not None
        card_row = await clean.fetchrow("SELECT customer, payment_method FROM "
                                        "billing_postpaid_attempts")
        topup = await topups.request("acme", "member-42", 500, by="web", **card_row)
        await register(client, stripe_client, "member-7", "4000000000000341")
        failed = await postpaid.charge("acme", "member-7", "consult-2", 60, Terms(100),
                                       by="calls")
        assert failed is not None and failed.state == "failed"
        deadline = time.monotonic() + 20
        while True:
            charged = (await charges(clean, "acme", "member-42")
                       + await charges(clean, "acme", "member-7"))
            _, result = await topups.get("acme", topup.id)
            if [(c.state, c.attempts) for c in charged] == [("paid", 1), ("failed", 2)] \
                    and result is not None:
                break
            assert time.monotonic() < deadline, (charged, result)
            await asyncio.sleep(0.2)
        assert result.outcome == "abandoned"   # a top-up is the customer's wish then: not
        #                                        made later; a postpaid charge is a debt
