"""The billing API over real HTTP (aiohttp test server) and a real PostgreSQL: bank
transfers entered as deposits (a reference once per merchant, who and when recorded),
balances and ledgers per merchant token, bad input naming its field, the database away
answered 503."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from billing import policy
from billing.http import install
from billing.ledger import Ledger, Reservation
from billing.rating import Terms
from billing.transfers import tokyo_today
from shared.db import create_pool
from shared.http import TOKENS_KEY, MerchantTokens, error_middleware
from tests.integration import billing_db

pytestmark = pytest.mark.integration
pool, clean = billing_db.fixtures()

ACME, BENTO = "acme-token", "bento-token"
AUTH = {"Authorization": f"Bearer {ACME}"}
BENTO_AUTH = {"Authorization": f"Bearer {BENTO}"}


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def app_over(p: asyncpg.Pool) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[TOKENS_KEY] = MerchantTokens([("acme", digest(ACME)), ("bento", digest(BENTO))])
    install(app, lambda _: p)
    return app


@pytest.fixture
async def client(clean: asyncpg.Pool) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(app_over(clean))) as c:
        yield c


def transfer(**extra: Any) -> dict[str, Any]:
    return {"account": "member-42", "amount_yen": 5000, "transferred_on": "2026-12-01",
            "payer_name": "ﾔﾏﾀﾞ ﾀﾛｳ", "bank_reference": "MUFG-20261201-0007",
            "entered_by": "sato", **extra}


async def ok(resp: ClientResponse, status: int = 200) -> Any:
    body = await resp.json()
    assert resp.status == status, body
    return body


async def refused(resp: ClientResponse, status: int = 400) -> tuple[str, str | None]:
    body = await resp.json()
    assert resp.status == status, body
    return body["error"]["id"], body["error"].get("field")


async def test_a_bank_transfer_is_a_deposit_entered_once_with_who_and_when(
        client: TestClient[Any, Any], clean: asyncpg.Pool) -> None:
    entered = await ok(await client.post("/v1/billing/bank-transfers", json=transfer(),
                                         headers=AUTH), 201)
    assert entered["balance"] == {"account": "member-42", "available_yen": 5000,
                                  "held_yen": 0, "total_yen": 5000}
    assert (entered["entered_by"], entered["payer_name"]) == ("sato", "ﾔﾏﾀﾞ ﾀﾛｳ")
    again = transfer(amount_yen=7000, account="member-43", entered_by="suzuki")
    assert await refused(await client.post("/v1/billing/bank-transfers", json=again,
                                           headers=AUTH), 409) == (
        "duplicate-reference", "bank_reference")
    # the same reference at another merchant is another transfer
    await ok(await client.post("/v1/billing/bank-transfers", json=transfer(),
                               headers=BENTO_AUTH), 201)
    listed = await ok(await client.get("/v1/billing/bank-transfers", headers=AUTH))
    assert [t["bank_reference"] for t in listed["items"]] == ["MUFG-20261201-0007"]
    assert listed["next_after_id"] == entered["id"]
    assert (await ok(await client.get(f"/v1/billing/bank-transfers?after_id={entered['id']}",
                                      headers=AUTH)))["items"] == []
    ledger = await ok(await client.get("/v1/billing/accounts/member-42/ledger", headers=AUTH))
    [move] = ledger["items"]
    assert (move["kind"], move["amount_yen"], move["by"], move["legs"]) == (
        "deposit", 5000, "sato", {"available": 5000, "funding": -5000})
    assert "MUFG-20261201-0007" in move["reason"] and move["id"] == entered["transaction_id"]
    assert await clean.fetchval("SELECT count(*) FROM billing_transactions") == 2
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await clean.execute("UPDATE billing_bank_transfers SET amount_yen = 1")


async def test_concurrent_entries_of_one_reference_deposit_once(
        client: TestClient[Any, Any]) -> None:
    answers = await asyncio.gather(*(client.post(
        "/v1/billing/bank-transfers", json=transfer(entered_by=f"op{i}"), headers=AUTH)
        for i in range(6)))
    assert sorted(a.status for a in answers) == [201, 409, 409, 409, 409, 409]
    balance = await ok(await client.get("/v1/billing/accounts/member-42/balance",
                                        headers=AUTH))
    assert balance["available_yen"] == 5000


async def test_balance_and_ledger_show_holds_and_stay_within_the_merchant(
        client: TestClient[Any, Any], clean: asyncpg.Pool) -> None:
    await ok(await client.post("/v1/billing/bank-transfers", json=transfer(), headers=AUTH),
             201)
    held = await Ledger(clean).reserve("acme", "member-42", "call-1",
                                       Terms(price_per_minute_yen=300, max_talk_s=600))
    assert isinstance(held, Reservation) and held.held_yen == 3000
    balance = await ok(await client.get("/v1/billing/accounts/member-42/balance",
                                        headers=AUTH))
    assert (balance["available_yen"], balance["held_yen"], balance["total_yen"]) == (
        2000, 3000, 5000)
    page = await ok(await client.get("/v1/billing/accounts/member-42/ledger?limit=1",
                                     headers=AUTH))
    assert [m["kind"] for m in page["items"]] == ["deposit"]
    rest = await ok(await client.get(
        f"/v1/billing/accounts/member-42/ledger?after_id={page['next_after_id']}",
        headers=AUTH))
    assert rest["items"] == []      # a hold is its reservation, no movement (migration 0021)
    assert await refused(await client.get("/v1/billing/accounts/member-42/balance",
                                          headers=BENTO_AUTH), 404) == ("not-found", None)
    assert await refused(await client.get("/v1/billing/accounts/nobody/ledger",
                                          headers=AUTH), 404) == ("not-found", None)
    assert (await client.get("/v1/billing/accounts/member-42/balance")).status == 401


#: tomorrow in Tokyo, read when the test runs: the parameters are read when the tests are
#: collected, and a run that crosses Tokyo's midnight in between made it today (accepted)
TOKYO_TOMORROW = object()


@pytest.mark.parametrize("change, field", [
    ({"amount_yen": 0}, "amount_yen"), ({"amount_yen": "5000"}, "amount_yen"),
    ({"amount_yen": 5000.0}, "amount_yen"), ({"amount_yen": True}, "amount_yen"),
    ({"amount_yen": 10**12}, "amount_yen"),
    ({"transferred_on": "2026/12/01"}, "transferred_on"),
    ({"transferred_on": "2026-02-30"}, "transferred_on"),
    ({"transferred_on": TOKYO_TOMORROW}, "transferred_on"),
    ({"payer_name": ""}, "payer_name"), ({"payer_name": "x" * 101}, "payer_name"),
    ({"bank_reference": None}, "bank_reference"), ({"entered_by": 7}, "entered_by"),
    ({"account": "a" * 65}, "account"), ({"memo": "hi"}, "memo")])
async def test_bad_transfers_are_400_naming_the_field(
        client: TestClient[Any, Any], change: dict[str, Any], field: str) -> None:
    change = {key: (tokyo_today() + timedelta(days=1)).isoformat()
                   if value is TOKYO_TOMORROW else value for key, value in change.items()}
    assert await refused(await client.post("/v1/billing/bank-transfers",
                                           json=transfer(**change), headers=AUTH)) == (
        "invalid-field", field)


async def test_bad_paging_and_bodies_are_400(client: TestClient[Any, Any]) -> None:
    for query, field in (("limit=0", "limit"), ("limit=1001", "limit"),
                         ("after_id=-1", "after_id"), ("after_id=x", "after_id")):
        assert await refused(await client.get(f"/v1/billing/bank-transfers?{query}",
                                              headers=AUTH)) == ("invalid-field", field)
    assert await refused(await client.post("/v1/billing/bank-transfers", data=b"[1]",
                                           headers=AUTH)) == ("invalid-json", None)
    await ok(await client.post("/v1/billing/bank-transfers", json=transfer(
        transferred_on=tokyo_today().isoformat()), headers=AUTH), 201)   # today is fine


async def test_the_database_away_is_503_and_before_it_billing_unavailable(
        pg_url: str, pool: asyncpg.Pool) -> None:
    gone = await create_pool(pg_url, min_size=1, max_size=1)
    await gone.close()
    async with TestClient(TestServer(app_over(gone))) as c:
        resp = await c.get("/v1/billing/accounts/member-42/balance", headers=AUTH)
        assert await refused(resp, 503) == ("database-unavailable", None)
        assert resp.headers["Retry-After"] == "5"
    app = web.Application(middlewares=[error_middleware])
    app[TOKENS_KEY] = MerchantTokens([("acme", digest(ACME))])
    install(app, lambda _: pool)
    app.cleanup_ctx.clear()                       # as before the site's database is up
    async with TestClient(TestServer(app)) as c:
        assert await refused(await c.get("/v1/billing/accounts/x/balance", headers=AUTH),
                             503) == ("billing-unavailable", None)


async def test_adjustments_and_refunds_say_who_and_why_and_keep_within_limits(
        client: TestClient[Any, Any], clean: asyncpg.Pool) -> None:
    url = "/v1/billing/accounts/member-42"
    assert await refused(await client.post(f"{url}/adjustments", json={
        "delta_yen": 100, "by": "sato", "reason": "goodwill"}, headers=AUTH), 404) == (
        "not-found", None)
    await ok(await client.post("/v1/billing/bank-transfers", json=transfer(), headers=AUTH),
             201)
    down = await ok(await client.post(f"{url}/adjustments", json={
        "delta_yen": -1000, "by": "sato", "reason": "entered 1000 yen too much"},
        headers=AUTH), 201)
    assert down["balance"]["available_yen"] == 4000
    assert await refused(await client.post(f"{url}/adjustments", json={
        "delta_yen": -4001, "by": "sato", "reason": "too much"}, headers=AUTH), 409) == (
        "insufficient-balance", None)
    held = await Ledger(clean).reserve("acme", "member-42", "call-1",
                                       Terms(price_per_minute_yen=300, max_talk_s=600))
    assert isinstance(held, Reservation)
    await Ledger(clean).settle("acme", held.id, 120)               # 600 yen charged
    assert await refused(await client.post(f"{url}/refunds", json={
        "amount_yen": 601, "by": "sato", "reason": "x"}, headers=AUTH), 409) == (
        "refund-exceeds-charges", None)
    back = await ok(await client.post(f"{url}/refunds", json={
        "amount_yen": 600, "by": "suzuki", "reason": "the advisor's line dropped"},
        headers=AUTH), 201)
    assert back["balance"] == {"account": "member-42", "available_yen": 4000, "held_yen": 0,
                               "total_yen": 4000}
    moves = (await ok(await client.get(f"{url}/ledger", headers=AUTH)))["items"]
    assert [(m["kind"], m["by"]) for m in moves] == [
        ("deposit", "sato"), ("adjustment", "sato"), ("charge", "billing"),
        ("refund", "suzuki")]           # the hold: its reservation, no movement (0021)
    assert moves[1]["id"] == down["transaction_id"] and moves[-1]["id"] == back[
        "transaction_id"]


@pytest.mark.parametrize("path, body, field", [
    ("adjustments", {"delta_yen": 0, "by": "a", "reason": "b"}, "delta_yen"),
    ("adjustments", {"delta_yen": "5", "by": "a", "reason": "b"}, "delta_yen"),
    ("adjustments", {"delta_yen": 5, "by": "", "reason": "b"}, "by"),
    ("adjustments", {"delta_yen": 5, "by": "a"}, "reason"),
    ("adjustments", {"amount_yen": 5, "by": "a", "reason": "b"}, "amount_yen"),
    ("refunds", {"amount_yen": -5, "by": "a", "reason": "b"}, "amount_yen"),
    ("refunds", {"amount_yen": 5, "by": "a", "reason": "b" * 501}, "reason")])
async def test_bad_corrections_are_400_naming_the_field(
        client: TestClient[Any, Any], path: str, body: dict[str, Any], field: str) -> None:
    assert await refused(await client.post(f"/v1/billing/accounts/member-42/{path}",
                                           json=body, headers=AUTH)) == ("invalid-field", field)


async def test_the_billing_policy_rates_new_reservations_and_keeps_its_history(
        client: TestClient[Any, Any], clean: asyncpg.Pool) -> None:
    defaults = await ok(await client.get("/v1/billing/policy", headers=AUTH))
    assert defaults == {"unit_s": 60, "grace_s": 0, "minimum_yen": 0, "max_talk_s": 10800,
                        "tax_percent": 10, "changed_by": None, "changed_at": None}
    changed = await ok(await client.put("/v1/billing/policy", json={
        "unit_s": 10, "grace_s": 30, "by": "sato"}, headers=AUTH))
    assert (changed["unit_s"], changed["grace_s"], changed["max_talk_s"],
            changed["changed_by"]) == (10, 30, 10800, "sato")
    again = await ok(await client.put("/v1/billing/policy", json={
        "minimum_yen": 100, "by": "suzuki"}, headers=AUTH))
    assert (again["unit_s"], again["minimum_yen"]) == (10, 100)
    assert (await ok(await client.get("/v1/billing/policy", headers=BENTO_AUTH)))[
        "unit_s"] == 60
    assert await clean.fetchval("SELECT count(*) FROM billing_policies") == 2
    terms = await policy.terms_for(clean, "acme", 300)
    assert terms == Terms(300, unit_s=10, grace_s=30, minimum_yen=100)
    await ok(await client.post("/v1/billing/bank-transfers", json=transfer(), headers=AUTH),
             201)
    held = await Ledger(clean).reserve("acme", "member-42", "call-1", terms)
    assert isinstance(held, Reservation) and held.allowed_s == 30 + 1000  # 5000 yen at 300/min
    await ok(await client.put("/v1/billing/policy", json={"grace_s": 0, "by": "sato"},
                              headers=AUTH))
    settled = await Ledger(clean).settle("acme", held.id, 45)   # the reserved terms: 15 s
    assert (settled.charge.billed_s, settled.charge.total_yen) == (20, 100)


@pytest.mark.parametrize("body, field", [
    ({"unit_s": 0, "by": "a"}, "unit_s"), ({"grace_s": "30", "by": "a"}, "grace_s"),
    ({"max_talk_s": 86_401, "by": "a"}, "max_talk_s"), ({"unit_s": 10}, "by"),
    ({"price_per_minute_yen": 10, "by": "a"}, "price_per_minute_yen"),
    ({"tax_percent": True, "by": "a"}, "tax_percent")])
async def test_bad_policies_are_400_naming_the_field(
        client: TestClient[Any, Any], body: dict[str, Any], field: str) -> None:
    assert await refused(await client.put("/v1/billing/policy", json=body,
                                          headers=AUTH)) == ("invalid-field", field)


async def test_a_group_overrides_fields_of_the_merchants_policy(
        client: TestClient[Any, Any], clean: asyncpg.Pool) -> None:
    """A group's policy: the fields it sets in place of the merchant's (null: the
    merchant's, even as the merchant's changes), its history, and the terms of a
    consultation through the group; other groups and merchants keep the merchant's."""
    url = "/v1/billing/groups/7/policy"
    none = await ok(await client.get(url, headers=AUTH))
    assert (none["unit_s"], none["in_force"]["unit_s"], none["changed_by"]) == (None, 60, None)
    await ok(await client.put("/v1/billing/policy", json={"minimum_yen": 100, "by": "sato"},
                              headers=AUTH))
    set_ = await ok(await client.put(url, json={"unit_s": 10, "max_talk_s": 1800,
                                                "by": "suzuki"}, headers=AUTH))
    assert {n: set_[n] for n in policy.FIELDS} == {
        "unit_s": 10, "grace_s": None, "minimum_yen": None, "max_talk_s": 1800,
        "tax_percent": None}
    assert set_["in_force"] == {"unit_s": 10, "grace_s": 0, "minimum_yen": 100,
                                "max_talk_s": 1800, "tax_percent": 10}
    assert set_["changed_by"] == "suzuki"
    assert await policy.terms_for(clean, "acme", 300, 7) == Terms(
        300, unit_s=10, minimum_yen=100, max_talk_s=1800)
    assert await policy.terms_for(clean, "acme", 300, 8) == Terms(300, minimum_yen=100)
    assert await policy.terms_for(clean, "acme", 300) == Terms(300, minimum_yen=100)
    assert (await ok(await client.get(url, headers=BENTO_AUTH)))["unit_s"] is None
    back = await ok(await client.put(url, json={"unit_s": None, "by": "sato"}, headers=AUTH))
    assert (back["unit_s"], back["max_talk_s"], back["in_force"]["unit_s"]) == (None, 1800, 60)
    assert await clean.fetchval("SELECT count(*) FROM billing_group_policies") == 2


@pytest.mark.parametrize("body, field", [
    ({"unit_s": 0, "by": "a"}, "unit_s"), ({"grace_s": "30", "by": "a"}, "grace_s"),
    ({"max_talk_s": 86_401, "by": "a"}, "max_talk_s"), ({"unit_s": 10}, "by"),
    ({"price_per_minute_yen": 10, "by": "a"}, "price_per_minute_yen"),
    ({"tax_percent": True, "by": "a"}, "tax_percent"),
    ({"minimum_yen": 1.5, "by": "a"}, "minimum_yen")])
async def test_bad_group_policies_are_400_naming_the_field(
        client: TestClient[Any, Any], body: dict[str, Any], field: str) -> None:
    assert await refused(await client.put("/v1/billing/groups/7/policy", json=body,
                                          headers=AUTH)) == ("invalid-field", field)


async def test_a_group_policy_needs_a_group_id(client: TestClient[Any, Any]) -> None:
    for bad in ("0", "x", "-1"):
        assert await refused(await client.get(f"/v1/billing/groups/{bad}/policy",
                                              headers=AUTH)) == ("invalid-field", "group_id")


async def test_a_reservation_a_call_left_live_is_listed_and_settled_by_an_operator(
        client: TestClient[Any, Any], clean: asyncpg.Pool) -> None:
    await ok(await client.post("/v1/billing/bank-transfers", json=transfer(), headers=AUTH),
             201)
    ledger = Ledger(clean)
    stuck = await ledger.reserve("acme", "member-42", "call-9", Terms(300, max_talk_s=600))
    assert isinstance(stuck, Reservation) and stuck.held_yen == 3000
    live = (await ok(await client.get("/v1/billing/reservations/live", headers=AUTH)))["items"]
    assert [(r["id"], r["account"], r["held_yen"], r["price_per_minute_yen"]) for r in live] == [
        (stuck.id, "member-42", 3000, 300)]
    assert (await ok(await client.get("/v1/billing/reservations/live?older_than_s=3600",
                                      headers=AUTH)))["items"] == []
    assert (await ok(await client.get("/v1/billing/reservations/live",
                                      headers=BENTO_AUTH)))["items"] == []
    url = f"/v1/billing/reservations/{stuck.id}/settle"
    settled = await ok(await client.post(url, json={
        "talk_s": 125, "by": "sato", "reason": "call crashed; 125 s in the switch's CDR"},
        headers=AUTH))
    assert (settled["total_yen"], settled["released_yen"]) == (900, 2100)
    assert await refused(await client.post(url, json={
        "talk_s": 126, "by": "sato", "reason": "again"}, headers=AUTH), 409) == (
        "already-settled", None)
    assert await refused(await client.post(url, json={"talk_s": -1, "by": "a", "reason": "b"},
                                           headers=AUTH)) == ("invalid-field", "talk_s")
    assert await refused(await client.post("/v1/billing/reservations/x/settle", json={
        "talk_s": 1, "by": "a", "reason": "b"}, headers=AUTH)) == (
        "invalid-field", "reservation_id")
    assert await refused(await client.post(url, json={"talk_s": 125, "by": "a", "reason": "b"},
                                           headers=BENTO_AUTH), 404) == ("not-found", None)
    moves = (await ok(await client.get("/v1/billing/accounts/member-42/ledger",
                                       headers=AUTH)))["items"]
    # the charge alone: the rest of the hold is no longer held, no release (migration 0021)
    assert [(m["kind"], m["by"], m["amount_yen"]) for m in moves[-2:]] == [
        ("deposit", "sato", 5000), ("charge", "sato", 900)]
    assert "call crashed" in moves[-1]["reason"]
    assert (await ok(await client.get("/v1/billing/reservations/live", headers=AUTH)))[
        "items"] == []


async def test_a_consultations_reservation_and_settlement_are_read_by_its_id(
        client: TestClient[Any, Any], clean: asyncpg.Pool) -> None:
    ledger = Ledger(clean)
    await ledger.deposit("acme", "member-42", 1000, "op", "bank transfer")
    held = await ledger.reserve("acme", "member-42", "cb-1-c1", Terms(100), at_most_s=300)
    assert isinstance(held, Reservation)
    url = "/v1/billing/consultations/cb-1-c1"
    live = await ok(await client.get(url, headers=AUTH))
    assert live["items"] == [{
        "kind": "prepaid", "id": held.id, "account": "member-42", "price_per_minute_yen": 100,
        "held_yen": 500, "allowed_s": 300, "state": "live", "talk_s": None, "billed_s": None,
        "total_yen": None, "tax_yen": None, "released_yen": None}]
    await ledger.settle("acme", held.id, 95)
    (settled,) = (await ok(await client.get(url, headers=AUTH)))["items"]
    assert (settled["state"], settled["talk_s"], settled["billed_s"], settled["total_yen"],
            settled["tax_yen"], settled["released_yen"]) == ("settled", 95, 120, 200, 18, 300)
    assert await refused(await client.get(url, headers=BENTO_AUTH), 404) == ("not-found", None)
    assert await refused(await client.get("/v1/billing/consultations/" + "x" * 129,
                                          headers=AUTH)) == ("invalid-field", "consultation_id")
