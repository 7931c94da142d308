"""A leg's CDR from the callback site's store to the edge's parser and store: the
legs to a SIP endpoint (a SIP advisor's softphone, the operator phone) go over the link
like the legs to a number, and a dead letter of one sent before CDRs named the
destination's kind is taken when requeued."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

import callback_server
import shared
from callback_server.dialer import Leg, leg_cdr
from callback_server.store import CallbackStore
from edge_server.reports import list_rows, parse_event
from edge_server.store import CallStore, edge_migrations
from edge_server.testing import merchant
from shared.db import create_pool, migrate_url, package_migrations
from shared.http import InvalidField
from shared.outbox import fact_message_id
from shared.paging import ListQuery
from tests.conftest import drop_database, fresh_database
from tests.integration.test_callback_store import MERCHANT, request
from tests.integration.test_edge_store import deliver

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 22, 1, 2, 3, tzinfo=UTC)


@pytest.fixture(scope="module")
async def callback_pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate_url(pg_url, [package_migrations("link", shared.__file__),
                               package_migrations("callback", callback_server.__file__)])
    pool = await create_pool(pg_url)
    store = CallbackStore(pool, owner="setup")
    await store.sync_merchants([MERCHANT])
    await store.intake("aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa", request("edge-1"), MERCHANT)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def edge_pool(pg_url: str, pg_server_url: str) -> AsyncIterator[asyncpg.Pool]:
    name = pg_url.rsplit("/", 1)[-1] + "_edge"
    url = await fresh_database(pg_server_url, name)
    await migrate_url(url, edge_migrations())
    pool = await create_pool(url)
    await CallStore(pool).sync_merchants([merchant("acme", "0120123456")])
    yield pool
    await pool.close()
    await drop_database(pg_server_url, name)


async def sent_cdr(pool: asyncpg.Pool, channel_id: str, role: str, carrier: str,
                   destination: str) -> dict[str, Any]:
    """The link message the callback site's store enqueues for one answered leg."""
    leg = Leg(channel_id, role, carrier, destination, T0, T0 + timedelta(seconds=4))
    callback_id = await pool.fetchval("SELECT callback_id FROM callback_requests")
    cdr = leg_cdr(callback_id, leg, T0 + timedelta(seconds=34.5), 16)
    assert await CallbackStore(pool, owner="w1").record_cdr(
        cdr, edge_call_id="edge-1", merchant_id="acme", billed_s=31, carrier_cost=None,
        direct_cost=None)
    body = await pool.fetchval("SELECT body FROM outbox WHERE kind = 'cdr' "
                               "AND message_id = $1::uuid", fact_message_id("cdr", channel_id))
    message: dict[str, Any] = json.loads(bytes(body))
    return message


@pytest.mark.parametrize(("channel_id", "role", "carrier", "destination", "kind"), [
    ("cb-1-a1", "advisor", "edge-trunk", "alice", "sip"),
    ("cb-1-op", "operator", "edge-trunk", "PJSIP/operator@edge-trunk", "sip"),
    ("cb-1-a2", "advisor", "carrier-b", "+819011112222", "pstn"),
    ("cb-1-t1", "transfer", "carrier-b", "+81312345678", "pstn"),
])
async def test_a_legs_cdr_is_taken_by_the_edge(
        callback_pool: asyncpg.Pool, edge_pool: asyncpg.Pool, channel_id: str, role: str,
        carrier: str, destination: str, kind: str) -> None:
    message = await sent_cdr(callback_pool, channel_id, role, carrier, destination)
    assert (message["destination"], message["destination_kind"]) == (destination, kind)
    assert await deliver(edge_pool, f"m-{channel_id}", message) == (
        200, {"status": "stored", "kind": "cdr"})
    page = await list_rows(edge_pool, "cdrs", ListQuery("acme", limit=100))
    (row,) = [r for r in page.items if r["call_id"] == channel_id]
    assert (row["leg"], row["destination"], row["destination_kind"]) == (
        role, destination, kind)


async def test_a_dead_letter_sent_before_destination_kinds_is_taken_when_requeued(
        callback_pool: asyncpg.Pool, edge_pool: asyncpg.Pool) -> None:
    message = await sent_cdr(callback_pool, "cb-1-old", "advisor", "edge-trunk", "bob")
    del message["destination_kind"]      # the body parked dead before the field existed
    assert await deliver(edge_pool, "m-old", message) == (
        200, {"status": "stored", "kind": "cdr"})
    kind = await edge_pool.fetchval(
        "SELECT destination_kind FROM cdrs WHERE call_id = 'cb-1-old'")
    assert kind == "sip"


@pytest.mark.parametrize(("destination", "kind", "field"), [
    ("alice", "pstn", "destination"),           # a pstn destination is a number
    ("ali ce", "sip", "destination"),           # not a SIP user or dial string
    ("x" * 129, None, "destination"),
    ("+819011112222", "fax", "destination_kind"),
])
async def test_a_bad_destination_is_refused_naming_its_field(
        callback_pool: asyncpg.Pool, destination: str, kind: str | None, field: str) -> None:
    message = await sent_cdr(callback_pool, f"cb-bad-{field}-{len(destination)}-{kind}",
                             "advisor", "edge-trunk", "carol")
    message["destination"] = destination
    message["destination_kind"] = kind
    if kind is None:
        del message["destination_kind"]
    with pytest.raises(InvalidField) as refused:
        parse_event(message)
    assert refused.value.fields == {"field": field}
