"""The advisors' SIP endpoints at the edge, as the callback site knows them: ``POST
/v1/link/sip-endpoints`` over real HTTP, signed by the edge's key (a real ``LinkClient``),
into a real PostgreSQL; and the advisors API refusing a SIP contact the edge has no
endpoint of, and showing whether the phone is registered. The edge's side (what it
writes to its outbox, and when) is ``tests/integration/test_edge_sip_endpoints.py``."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from advisors.edge_phones import KIND, PATH, EndpointState
from advisors.edge_phones import install as install_edge_phones
from advisors.http import install as install_advisors
from shared.http import TOKENS_KEY, MerchantTokens
from shared.link import LinkClient, LinkRejected
from shared.outbox import encode
from tests.integration import advisors_db
from tests.integration.test_advisors_phone import link_app, link_client, served

pytestmark = pytest.mark.integration

pool, clean = advisors_db.fixtures()
TOKEN = "acme-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OPERATORS = {"acme": "desk"}       # acme's operator extension: the edge's operator phone


@pytest.fixture
async def site(clean: asyncpg.Pool, pg_url: str) -> AsyncIterator[str]:
    """The callback site's link route and advisors API; its base URL."""
    app = link_app()
    app[TOKENS_KEY] = MerchantTokens([("acme", hashlib.sha256(TOKEN.encode()).hexdigest())])
    install_edge_phones(app, lambda _: clean)
    install_advisors(app, lambda _: (pg_url, clean), operators=OPERATORS)
    async with served(app) as url:
        yield url


@pytest.fixture
async def edge(site: str) -> AsyncIterator[LinkClient]:
    client = link_client(site)
    yield client
    await client.close()


@pytest.fixture
async def api(site: str) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=site, headers=AUTH) as session:
        yield session


async def tell(edge: LinkClient, state: EndpointState, message_id: str | None = None
               ) -> Any:
    """Send ``state`` as the edge's outbox relay does (its body as the outbox encodes it)."""
    delivered = await edge.post(PATH, encode(state.to_json()), message_id or str(uuid.uuid4()),
                                kind=KIND)
    assert delivered.status == 200, delivered
    return delivered.body


async def add(api: aiohttp.ClientSession, user: str, code: str = "0123"
              ) -> tuple[int, dict[str, Any]]:
    async with api.post("/v1/advisors", json={
            "display_name": "星野", "code": code, "price_per_minute_yen": 300,
            "contact": {"kind": "sip", "user": user}}) as resp:
        return resp.status, await resp.json()


async def test_a_sip_contact_needs_its_endpoint_at_the_edge(
        edge: LinkClient, api: aiohttp.ClientSession) -> None:
    status, body = await add(api, "hoshino")
    assert status == 400 and body["error"]["field"] == "contact.user", body
    await tell(edge, EndpointState("acme", "hoshino", True, False, 5))
    status, made = await add(api, "hoshino")
    assert status == 201, made
    assert made["sip_registered"] is False
    await tell(edge, EndpointState("acme", "hoshino", True, True, 6))
    async with api.get(f"/v1/advisors/{made['id']}") as resp:
        assert (await resp.json())["sip_registered"] is True
    # the operator extension is the edge's operator phone: no endpoint needed
    status, desk = await add(api, "desk", code="0124")
    assert status == 201 and desk["sip_registered"] is None, desk
    # deleted at the edge: the contact cannot be set again, and shows no phone
    await tell(edge, EndpointState("acme", "yui", True, False, 7))
    await tell(edge, EndpointState("acme", "yui", False, False, 8))
    async with api.patch(f"/v1/advisors/{made['id']}",
                         json={"contact": {"kind": "sip", "user": "yui"}}) as resp:
        refused = await resp.json()
        assert resp.status == 400 and refused["error"]["field"] == "contact.user", refused
    await tell(edge, EndpointState("acme", "hoshino", False, False, 9))
    async with api.get("/v1/advisors") as resp:
        shown = {a["contact"]["user"]: a["sip_registered"]
                 for a in (await resp.json())["items"]}
    assert shown == {"hoshino": None, "desk": None}
    # another merchant's endpoint of the same user is not acme's
    await tell(edge, EndpointState("bento", "ren", True, False, 10))
    status, body = await add(api, "ren", code="0125")
    assert status == 400 and body["error"]["field"] == "contact.user", body


async def test_an_older_state_changes_nothing_and_a_repeat_gets_the_first_answer(
        clean: asyncpg.Pool, edge: LinkClient) -> None:
    later = EndpointState("acme", "hoshino", True, True, 12)
    message = str(uuid.uuid4())
    assert await tell(edge, later, message) == {"status": "stored"}
    assert await tell(edge, EndpointState("acme", "hoshino", False, False, 11)) \
        == {"status": "stale"}
    assert await tell(edge, later, message) == {"status": "stored"}
    row = await clean.fetchrow("SELECT * FROM edge_sip_endpoints")
    assert row is not None
    assert (row["present"], row["registered"], row["version"]) == (True, True, 12)


@pytest.mark.parametrize(("change", "field"), [
    ({"user": "a b"}, "user"),
    ({"merchant_id": "Acme"}, "merchant_id"),
    ({"exists": "yes"}, "exists"),
    ({"registered": None}, "registered"),
    ({"version": 0}, "version"),
    ({"version": True}, "version"),
    ({"password": "x"}, "password"),
])
async def test_a_malformed_state_is_400_naming_the_field(
        clean: asyncpg.Pool, edge: LinkClient, change: dict[str, Any], field: str) -> None:
    body = {**EndpointState("acme", "hoshino", True, False, 3).to_json(), **change}
    with pytest.raises(LinkRejected) as refused:
        await edge.post(PATH, json.dumps(body).encode(), str(uuid.uuid4()), kind=KIND)
    assert refused.value.status == 400
    assert refused.value.body["error"]["field"] == field, refused.value.body
    assert await clean.fetchval("SELECT count(*) FROM edge_sip_endpoints") == 0
