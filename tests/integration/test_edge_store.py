"""The edge's call store and reports against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from edge_server import report_store
from edge_server.flow_messages import (
    AnnounceMode,
    CancelRequest,
    Outcome,
    RecordCall,
    StoreRequest,
    edge_call_id_for,
)
from edge_server.report_store import ONE_STATEMENT, Delivery, apply_report, apply_reports
from edge_server.reports import list_rows, parse_event
from edge_server.store import (
    CALLBACK_PATH,
    CallStore,
    DuplicateCall,
    UnknownMerchant,
    edge_migrations,
    message_id_for,
)
from edge_server.testing import merchant
from shared.db import create_pool, migrate_url
from shared.paging import ListQuery, decode_cursor
from shared.phone import E164
from tests.integration.statements import counted_pool

pytestmark = pytest.mark.integration

CALLER = E164("819012345678")
DIALED = E164("81120123456")
T0 = datetime(2026, 11, 22, 1, 2, 3, 456000, tzinfo=UTC)


@pytest.fixture(scope="module")
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate_url(pg_url, edge_migrations())
    pool = await create_pool(pg_url)
    store = CallStore(pool)
    await store.sync_merchants([merchant("acme", "0120123456"),
                                merchant("bento", "0120999888")])
    yield pool
    await pool.close()


def store_cmd(channel: str, merchant_id: str = "acme") -> StoreRequest:
    return StoreRequest(edge_call_id_for(channel), channel, merchant_id, CALLER, DIALED,
                        AnnounceMode.EARLY_MEDIA, "mobile: cheaper")


async def outbox_row(pool: asyncpg.Pool, edge_call_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM outbox WHERE message_id = $1::uuid",
                               message_id_for(edge_call_id))


async def test_request_and_held_message_are_written_together(pool: asyncpg.Pool) -> None:
    store = CallStore(pool)
    request_id = await store.store_request(store_cmd("c1.1"), T0)
    assert request_id == "edge-c1.1"
    call = await store.get_call(request_id)
    assert call is not None and call.state == "stored" and call.caller == "+819012345678"
    row = await outbox_row(pool, request_id)
    assert row is not None and row["held"] is True and row["path"] == CALLBACK_PATH
    body = json.loads(bytes(row["body"]))
    assert body == {"edge_call_id": "edge-c1.1", "merchant_id": "acme",
                    "caller": "+819012345678", "dialed": "+81120123456",
                    "received_at": "2026-11-22T01:02:03.456Z", "hungup_at": None,
                    "announce_mode": "early_media"}


async def test_storing_the_same_call_twice_is_a_no_op(pool: asyncpg.Pool) -> None:
    store = CallStore(pool)
    await store.store_request(store_cmd("c2.1"), T0)
    assert await store.store_request(store_cmd("c2.1"), T0) == "edge-c2.1"
    count = await pool.fetchval("SELECT count(*) FROM edge_calls WHERE edge_call_id = $1",
                                "edge-c2.1")
    assert count == 1


async def test_edge_call_id_is_unique_across_states(pool: asyncpg.Pool) -> None:
    store = CallStore(pool)
    await store.record_call(RecordCall("edge-c3.1", "c3.1", "acme", None, DIALED,
                                       Outcome.WITHHELD, "caller id 'anonymous'"), T0)
    with pytest.raises(DuplicateCall):
        await store.store_request(store_cmd("c3.1"), T0)
    with pytest.raises(asyncpg.UniqueViolationError):
        await pool.execute(
            "INSERT INTO edge_calls (edge_call_id, channel_id, merchant_id, dialed, state, "
            "received_at) VALUES ('edge-c3.1', 'x', 'acme', '+1', 'refused', now())")


async def test_unknown_merchant_is_refused_and_nothing_is_queued(pool: asyncpg.Pool) -> None:
    with pytest.raises(UnknownMerchant):
        await CallStore(pool).store_request(store_cmd("c4.1", merchant_id="nobody"), T0)
    assert await outbox_row(pool, "edge-c4.1") is None


async def test_release_turns_the_held_message_ready_once(pool: asyncpg.Pool) -> None:
    store = CallStore(pool)
    await store.store_request(store_cmd("c5.1"), T0)
    assert await store.release("edge-c5.1", Outcome.RELEASED) is True
    row = await outbox_row(pool, "edge-c5.1")
    assert row is not None and row["held"] is False and row["released_at"] is not None
    call = await store.get_call("edge-c5.1")
    assert call is not None and call.state == "released" and call.outcome == "callback_released"
    assert await store.release("edge-c5.1", Outcome.RELEASED) is False


async def test_release_wakes_the_relay_by_notify(pool: asyncpg.Pool, pg_url: str) -> None:
    from shared.db import listening

    store = CallStore(pool)
    await store.store_request(store_cmd("c6.1"), T0)
    async with listening(pg_url, "outbox") as wakeups:
        await store.release("edge-c6.1", Outcome.RELEASED_MID_ANNOUNCEMENT)
        import asyncio

        payload = await asyncio.wait_for(wakeups.get(), 2)
    assert payload == message_id_for("edge-c6.1")


async def test_release_hands_its_message_to_the_running_relay(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path) -> None:
    """With the edge's relay running (``CallStore.relay``) the release leases the message
    to it in the same statement and hands it over: the relay sends it at once without a
    claim, and nothing wakes it (here the peer is down: the one attempt fails and the
    message waits for its retry; the relay's sweep is 30 s away)."""
    from shared.link_policy import HealthSettings, LinkPolicy
    from shared.outbox import OutboxRelay
    from tests.faults.linklab import link_client

    client = link_client(pki_dir, [("r", "https://127.0.0.1:1")],
                         policy=LinkPolicy(health=HealthSettings(interval_s=0)))
    relay = OutboxRelay(pool, pg_url, client, owner="edge-test", sweep_s=30.0)
    store = CallStore(pool)
    store.relay = relay
    await store.store_request(store_cmd("c6.2"), T0)
    await store.store_request(store_cmd("c6.3"), T0)
    assert await store.release("edge-c6.3", Outcome.RELEASED) is True   # not running yet
    task = asyncio.create_task(relay.run())
    await asyncio.sleep(0.5)                # its first claim made (c6.3's one attempt)
    try:
        assert await store.release("edge-c6.2", Outcome.RELEASED) is True
        assert await store.release("edge-c6.2", Outcome.RELEASED) is False
        for _ in range(250):
            row = await outbox_row(pool, "edge-c6.2")
            if row is not None and row["last_error"] is not None:
                break
            await asyncio.sleep(0.02)
        assert row is not None and row["held"] is False and row["attempts"] == 1
        assert row["last_error"] is not None and row["lease_owner"] is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
    call = await store.get_call("edge-c6.2")
    assert call is not None and call.state == "released"


async def test_cancel_withdraws_a_late_request(pool: asyncpg.Pool) -> None:
    store = CallStore(pool)
    await store.store_request(store_cmd("c7.1"), T0)
    assert await store.cancel(CancelRequest("edge-c7.1", Outcome.STORE_TIMEOUT)) is True
    assert await outbox_row(pool, "edge-c7.1") is None
    assert await store.release("edge-c7.1", Outcome.RELEASED) is False
    call = await store.get_call("edge-c7.1")
    assert call is not None and (call.state, call.outcome) == ("cancelled", "store_timeout")
    await pool.execute("UPDATE edge_calls SET stored_at = now() - interval '2 minutes' "
                       "WHERE edge_call_id = 'edge-c7.1'")
    assert "edge-c7.1" not in await store.sweep_held(60), "a cancelled request stays dead"


async def test_a_late_request_is_cancelled_in_one_statement(
        pool: asyncpg.Pool, pg_url: str) -> None:
    """The overload path (the store answered after its guard): the call and its held
    message withdrawn together in one statement, not a transaction of four round trips
    holding a pool connection between them; a second cancel finds nothing."""
    store = CallStore(pool)
    await store.store_request(store_cmd("c7.2"), T0)
    async with counted_pool(pg_url) as (counted, statements):
        late = CallStore(counted)
        assert await late.cancel(CancelRequest("edge-c7.2", Outcome.STORE_TIMEOUT)) is True
        await statements.heard()
        assert len(statements.queries) == 1, str(statements)
        assert await late.cancel(CancelRequest("edge-c7.2", Outcome.STORE_TIMEOUT)) is False
    assert await outbox_row(pool, "edge-c7.2") is None
    call = await store.get_call("edge-c7.2")
    assert call is not None and (call.state, call.outcome) == ("cancelled", "store_timeout")


async def test_sweeper_releases_only_requests_held_too_long(pool: asyncpg.Pool) -> None:
    store = CallStore(pool)
    await store.store_request(store_cmd("c8.old"), T0)
    await store.store_request(store_cmd("c8.new"), T0)
    await pool.execute("UPDATE edge_calls SET stored_at = now() - interval '2 minutes' "
                       "WHERE edge_call_id = 'edge-c8.old'")
    released = await store.sweep_held(60)
    assert "edge-c8.old" in released and "edge-c8.new" not in released
    old, new = await outbox_row(pool, "edge-c8.old"), await outbox_row(pool, "edge-c8.new")
    assert old is not None and old["held"] is False
    assert new is not None and new["held"] is True
    call = await store.get_call("edge-c8.old")
    assert call is not None and call.outcome == "released_by_sweeper"


async def test_held_for_channel_ids_names_only_the_requests_still_held(
        pool: asyncpg.Pool) -> None:
    """Recovery after a reconnect: of these channels' calls, the requests still held (found
    through their held messages), not those released, cancelled or never requests."""
    store = CallStore(pool)
    for channel in ("c8h.held", "c8h.released", "c8h.cancelled"):
        await store.store_request(store_cmd(channel), T0)
    await store.release("edge-c8h.released", Outcome.RELEASED)
    await store.cancel(CancelRequest("edge-c8h.cancelled", Outcome.STORE_TIMEOUT))
    await store.record_call(RecordCall("edge-c8h.direct", "c8h.direct", "acme", CALLER,
                                       DIALED, Outcome.KEPT_DIRECT, "fixed line"), T0)
    channels = ["c8h.held", "c8h.released", "c8h.cancelled", "c8h.direct", "c8h.none"]
    assert await store.held_for_channel_ids(channels) == ["edge-c8h.held"]
    assert await store.held_for_channel_ids([]) == []


async def test_record_call_keeps_refusals_with_their_reason(pool: asyncpg.Pool) -> None:
    store = CallStore(pool)
    await store.record_call(RecordCall("edge-c9.1", "c9.1", "acme", None, DIALED,
                                       Outcome.MALFORMED, "non-digit caller id"), T0)
    await store.record_call(RecordCall("edge-c9.2", "c9.2", "acme", CALLER, DIALED,
                                       Outcome.KEPT_DIRECT, "fixed line"), T0)
    refused, direct = await store.get_call("edge-c9.1"), await store.get_call("edge-c9.2")
    assert refused is not None and (refused.state, refused.outcome) == (
        "refused", "caller_id_malformed")
    assert direct is not None and direct.state == "direct"


async def test_merchant_sync_marks_removed_merchants_inactive(pool: asyncpg.Pool) -> None:
    store = CallStore(pool)
    await store.sync_merchants([merchant("acme", "0120123456")])
    assert await pool.fetchval("SELECT active FROM merchants WHERE id = 'bento'") is False
    await store.sync_merchants([merchant("acme", "0120123456"),
                                merchant("bento", "0120999888")])
    assert await pool.fetchval("SELECT active FROM merchants WHERE id = 'bento'") is True


# --- reports from the callback site -------------------------------------------------------

def cdr_event(call_id: str, merchant_id: str = "acme",
              edge_call_id: str = "edge-c1.1") -> dict[str, Any]:
    return {"kind": "cdr", "call_id": call_id, "callback_id": "cb-1", "edge_call_id": edge_call_id,
            "merchant_id": merchant_id, "leg": "customer", "destination": "+819012345678",
            "carrier": "carrier-b", "started_at": "2026-11-22T01:02:10.000Z",
            "answered_at": "2026-11-22T01:02:12.000Z", "ended_at": "2026-11-22T01:02:24.480Z",
            "duration_s": "12.480", "billed_s": 60, "hangup_cause": 16,
            "disposition": "answered", "carrier_cost": {"amount": "0.1398", "currency": "USD"},
            "direct_cost": {"amount": "30", "currency": "JPY"}}


async def deliver(pool: asyncpg.Pool, message_id: str, event: dict[str, Any]
                  ) -> tuple[int, dict[str, Any]]:
    report = parse_event(event)
    assert isinstance(report, ONE_STATEMENT)
    async with pool.acquire() as conn:
        return await apply_report(conn, message_id, report)


async def a_statement_waits_on_a_lock(pool: asyncpg.Pool) -> None:
    """Returns once a statement waits on a lock (or after 10 s)."""
    for _ in range(200):
        if await pool.fetchval("SELECT count(*) FROM pg_stat_activity "
                               "WHERE wait_event_type = 'Lock'"):
            return
        await asyncio.sleep(0.05)


async def test_replayed_link_event_is_a_no_op(pool: asyncpg.Pool) -> None:
    first = await deliver(pool, "m-cdr-1", cdr_event("call-1"))
    again = await deliver(pool, "m-cdr-1", cdr_event("call-1"))
    assert first == again == (200, {"status": "stored", "kind": "cdr"})
    # the same fact under a new message id is still stored once
    assert await deliver(pool, "m-cdr-2", cdr_event("call-1")) == (
        200, {"status": "duplicate", "kind": "cdr"})
    assert await pool.fetchval("SELECT count(*) FROM cdrs WHERE call_id = 'call-1'") == 1
    row = await pool.fetchrow("SELECT * FROM cdrs WHERE call_id = 'call-1'")
    assert row is not None and row["duration_s"] == Decimal("12.480")
    assert row["carrier_cost_amount"] == Decimal("0.1398")


async def test_a_delivery_waiting_on_the_same_message_gets_its_first_answer(
        pool: asyncpg.Pool) -> None:
    """Two deliveries of one message at once (over both links): the second's statement
    waits for the first's commit, writes nothing and answers what the first answered."""
    event = cdr_event("call-twice")
    report = parse_event(event)
    assert isinstance(report, ONE_STATEMENT)
    async with pool.acquire() as first, pool.acquire() as second:
        async with first.transaction():     # the first delivery, not committed yet
            assert await apply_report(first, "m-twice", report) == (
                200, {"status": "stored", "kind": "cdr"})
            waiting = asyncio.create_task(apply_report(second, "m-twice", report))
            await a_statement_waits_on_a_lock(pool)
            assert not waiting.done()
        assert await asyncio.wait_for(waiting, 10) == (200, {"status": "stored", "kind": "cdr"})
    assert await pool.fetchval("SELECT count(*) FROM cdrs WHERE call_id = 'call-twice'") == 1


async def test_reports_for_another_tenants_call_are_refused(pool: asyncpg.Pool) -> None:
    from shared.http import ApiError

    # its own acme call: a test chosen alone (``-k report``) finds no call of another test's
    acme_call = await CallStore(pool).store_request(store_cmd("c-x.1"), T0)
    with pytest.raises(ApiError) as info:
        await deliver(pool, "m-x-1", cdr_event("call-x", merchant_id="bento",
                                               edge_call_id=acme_call))
    assert info.value.error_id == "tenant-mismatch"
    with pytest.raises(ApiError) as info:
        await deliver(pool, "m-x-2", cdr_event("call-y", merchant_id="ghost"))
    assert info.value.error_id == "unknown-merchant"
    assert await pool.fetchval("SELECT count(*) FROM inbound_messages "        # judged again
                               "WHERE message_id IN ('m-x-1', 'm-x-2')") == 0  # when resent


async def test_status_report_updates_the_call(pool: asyncpg.Pool) -> None:
    # its own call: a test chosen alone (``-k status``) finds no call of another test's
    request_id = await CallStore(pool).store_request(store_cmd("c-st.1"), T0)
    await deliver(pool, "m-st-1", {
        "kind": "callback_status", "callback_id": "cb-st-1", "edge_call_id": request_id,
        "merchant_id": "acme", "status": "completed", "reason": "", "attempts": 2,
        "at": "2026-11-22T01:03:00Z"})
    call = await CallStore(pool).get_call(request_id)
    assert call is not None and call.callback_status == "completed"


async def test_listing_pages_with_a_cursor_and_stays_in_its_tenant(pool: asyncpg.Pool) -> None:
    for i in range(5):
        await deliver(pool, f"m-ri-{i}", {
            "kind": "request_info", "callback_id": f"cb-l{i}", "edge_call_id": f"edge-l{i}",
            "merchant_id": "acme", "caller": "+819012345678", "category": "order",
            "fields": {"item_code": "1234", "quantity": str(i)},
            "collected_at": f"2026-11-22T02:0{i}:00Z"})
    await deliver(pool, "m-ri-b", {
        "kind": "request_info", "callback_id": "cb-b", "edge_call_id": "edge-b",
        "merchant_id": "bento", "caller": "+819012345678", "category": "inquiry",
        "fields": {}, "collected_at": "2026-11-22T02:00:30Z"})
    page = await list_rows(pool, "requests", ListQuery("acme", limit=2))
    assert [i["fields"]["quantity"] for i in page.items] == ["0", "1"]
    assert page.next_cursor is not None

    rest = await list_rows(pool, "requests", ListQuery(
        "acme", after_id=decode_cursor(page.next_cursor), limit=10))
    assert [i["fields"]["quantity"] for i in rest.items] == ["2", "3", "4"]
    assert rest.next_cursor is None
    window = await list_rows(pool, "requests", ListQuery(
        "acme", since=datetime(2026, 11, 22, 2, 1, tzinfo=UTC),
        until=datetime(2026, 11, 22, 2, 3, tzinfo=UTC)))
    assert [i["callback_id"] for i in window.items] == ["cb-l1", "cb-l2"]
    bento = await list_rows(pool, "requests", ListQuery("bento"))
    assert [i["callback_id"] for i in bento.items] == ["cb-b"]
    assert bento.items[0]["collected_at"] == "2026-11-22T02:00:30.000Z"


async def test_a_request_stored_and_released_costs_one_statement_each(
        pool: asyncpg.Pool, pg_url: str) -> None:
    """The hot path of every call-back at the edge: the call and its held message written
    together, then released together, each one statement (one round trip, one
    transaction), besides the pool's reset when the connection is given back."""
    async with counted_pool(pg_url) as (counted, statements):
        store = CallStore(counted)
        await store.store_request(store_cmd("c20.1"), T0)   # learns the statements' types
        await store.release("edge-c20.1", Outcome.RELEASED)
        await statements.heard()
        statements.clear()
        await store.store_request(store_cmd("c20.2"), T0)
        assert await store.release("edge-c20.2", Outcome.RELEASED) is True
        await statements.heard()
    own = [q for q in statements.queries if "pg_advisory_unlock_all" not in q]
    assert len(own) == 2, str(statements)
    assert statements.transactions == len(statements.queries), str(statements)
    row = await outbox_row(pool, "edge-c20.2")
    assert row is not None and row["held"] is False and row["released_at"] is not None


def status_event(status: str, second: int, edge_call_id: str = "edge-c30.1",
                 merchant_id: str = "acme") -> dict[str, Any]:
    return {"kind": "callback_status", "callback_id": "cb-30", "edge_call_id": edge_call_id,
            "merchant_id": merchant_id, "status": status, "reason": None, "attempts": 1,
            "at": f"2026-11-22T01:03:{second:02d}Z"}


def deliveries(*messages: tuple[str, dict[str, Any]]) -> list[Delivery]:
    parsed = [(mid, parse_event(event)) for mid, event in messages]
    assert all(isinstance(report, ONE_STATEMENT) for _, report in parsed)
    return parsed   # type: ignore[return-value]


STORED = {"kind": "callback_status", "status": "stored"}


async def test_a_batch_gets_the_answers_its_reports_would_get_one_by_one(
        pool: asyncpg.Pool) -> None:
    """In one statement, each report is answered as if applied alone in the batch's order:
    a message id claimed before or earlier in the batch gets its first answer, a natural
    key stored earlier in the batch is a duplicate, a refused report writes nothing (its
    message id judged again later in the batch), and the call keeps the batch's last
    status (not the last in time or in the keys' order)."""
    await CallStore(pool).store_request(store_cmd("c30.1"), T0)
    async with pool.acquire() as conn:
        assert await apply_reports(conn, deliveries(("m-b-0", status_event("queued", 0)))) \
            == [(200, STORED)]
    bento_cdr = cdr_event("call-b-30", merchant_id="bento") | {"edge_call_id": "edge-c30.1"}
    batch = deliveries(
        ("m-b-1", status_event("failed", 2)),
        ("m-b-1", status_event("failed", 2)),                   # the same message again
        ("m-b-2", status_event("failed", 2)),                   # the same report, a new id
        ("m-b-0", status_event("queued", 0)),                  # claimed before the batch
        ("m-b-4", bento_cdr),                                   # another merchant's call
        ("m-b-5", cdr_event("call-b-31", merchant_id="ghost")),
        ("m-b-4", bento_cdr | {"merchant_id": "acme"}),         # judged again: stored
        ("m-b-3", status_event("dialing", 1)),                  # the batch's last status
    )
    stored_cdr = (200, {"kind": "cdr", "status": "stored"})
    async with pool.acquire() as conn:
        answers = await apply_reports(conn, batch)
    assert [(status, body.get("status") or body["error"]["id"]) for status, body in answers] \
        == [(200, "stored"), (200, "stored"), (200, "duplicate"), (200, "stored"),
            (422, "tenant-mismatch"), (422, "unknown-merchant"), (200, "stored"),
            (200, "stored")]
    assert answers[6] == stored_cdr
    call = await CallStore(pool).get_call("edge-c30.1")
    assert call is not None and call.callback_status == "dialing"
    assert await pool.fetchval("SELECT count(*) FROM callback_status WHERE callback_id = "
                               "'cb-30'") == 3
    assert await pool.fetchval("SELECT count(*) FROM inbound_messages "
                               "WHERE message_id = 'm-b-5'") == 0
    # again: every message id but the refused one's is claimed now, so the first answers
    async with pool.acquire() as conn:
        again = await apply_reports(conn, batch)
    assert again[:4] == answers[:4] and again[4] == again[6] == stored_cdr
    assert again[5] == answers[5] and again[7] == answers[7]
    assert await pool.fetchval("SELECT count(*) FROM cdrs WHERE call_id = 'call-b-30'") == 1


async def test_a_batch_racing_the_same_batch_gets_its_first_answers(pool: asyncpg.Pool) -> None:
    """Two deliveries of one batch at once: the second's statement waits for the first's
    commit, writes nothing and answers what the first answered, message by message."""
    batch = deliveries(("m-race-1", cdr_event("call-race-1")),
                       ("m-race-2", cdr_event("call-race-2")),
                       ("m-race-3", cdr_event("call-race-1")))   # the first's CDR again
    async with pool.acquire() as first, pool.acquire() as second:
        async with first.transaction():
            answers = await apply_reports(first, batch)
            waiting = asyncio.create_task(apply_reports(second, list(reversed(batch))))
            await a_statement_waits_on_a_lock(pool)
            assert not waiting.done()
        assert await asyncio.wait_for(waiting, 10) == list(reversed(answers))
    assert [body["status"] for _, body in answers] == ["stored", "stored", "duplicate"]
    assert await pool.fetchval("SELECT count(*) FROM cdrs "
                               "WHERE call_id IN ('call-race-1', 'call-race-2')") == 2


async def test_a_batch_counts_each_new_customer_leg_once_for_the_call_lengths(
        pool: asyncpg.Pool, pg_url: str) -> None:
    """Rates on: the answered customer legs of a batch are counted in its statement, those
    of one length together, a CDR stored before or twice in the batch not again."""
    await migrate_url(pg_url, edge_migrations(with_rates=True))

    def leg(call_id: str, ended: str, seconds: str, **extra: Any) -> dict[str, Any]:
        return cdr_event(call_id, merchant_id="bento") | {
            "edge_call_id": "edge-c31", "ended_at": ended, "duration_s": seconds, **extra}

    async with pool.acquire() as conn:
        assert await apply_reports(conn, deliveries(
            ("m-len-0", leg("len-0", "2026-11-22T01:05:00Z", "12.480"))),
            learn_call_lengths=True) == [(200, {"kind": "cdr", "status": "stored"})]
        answers = await apply_reports(conn, deliveries(
            ("m-len-0", leg("len-0", "2026-11-22T01:05:00Z", "12.480")),   # seen
            ("m-len-1", leg("len-1", "2026-11-22T01:04:00Z", "12.010")),
            ("m-len-2", leg("len-2", "2026-11-22T01:07:00Z", "30")),
            ("m-len-3", leg("len-2", "2026-11-22T01:07:00Z", "30")),       # a duplicate
            ("m-len-4", leg("len-4", "2026-11-22T01:08:00Z", "13", leg="advisor")),
            ("m-len-5", leg("len-5", "2026-11-22T01:09:00Z", "0", answered_at=None)),
        ), learn_call_lengths=True)
    assert [body["status"] for _, body in answers] == [
        "stored", "stored", "stored", "duplicate", "stored", "stored"]
    assert dict(await pool.fetch("SELECT talk_s, calls FROM rates_call_lengths "
                                 "WHERE merchant_id = 'bento'")) == {13: 2, 30: 1}
    total = await pool.fetchrow("SELECT number_class, calls, first_call_at, last_call_at "
                                "FROM rates_call_length_totals WHERE merchant_id = 'bento'")
    assert total is not None and tuple(total) == (
        "mobile", 3, datetime(2026, 11, 22, 1, 4, tzinfo=UTC),
        datetime(2026, 11, 22, 1, 7, tzinfo=UTC))


async def test_the_batch_statement_runs_its_generic_plan_after_five(
        pool: asyncpg.Pool, pg_url: str) -> None:
    """The relay's batches of one kind, on a new connection: after the plan cache's five
    custom plans the statement runs its generic plan, not planned again for each batch
    (planning a custom plan cost PostgreSQL more than the statement's run)."""
    async with counted_pool(pg_url) as (fresh, _), fresh.acquire() as conn:
        for n in range(8):
            assert [body["status"] for _, body in await apply_reports(conn, deliveries(
                (f"m-plan-{n}", cdr_event(f"call-plan-{n}"))))] == ["stored"]
        plans = await conn.fetchrow(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE '/* edge_server.report_store%'")
    assert plans is not None and tuple(plans) == (3, 5), dict(plans or {})


async def test_a_batch_of_one_kind_opens_no_other_kind_s_table(pool: asyncpg.Pool) -> None:
    """A batch of CDRs (the relay sends one kind a batch) is written by a statement of that
    kind's writes only: the other kinds' tables are not opened and locked for nothing."""
    async with pool.acquire() as conn, conn.transaction():
        await apply_reports(conn, deliveries(("m-kind-1", cdr_event("call-kind-1"))))
        locked = {row["relname"] for row in await conn.fetch(
            "SELECT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE l.pid = pg_backend_pid() AND c.relkind = 'r'")}
    assert "cdrs" in locked and "inbound_messages" in locked, locked
    assert not locked & {"requests", "request_transcripts", "callback_status"}, locked


async def test_the_batch_statement_reads_the_claims_and_calls_by_their_keys(
        pool: asyncpg.Pool) -> None:
    """The statement's generic plan, kept from the first batches a connection applies
    (when the tables may still be nearly empty), looks up each report's earlier claim and
    call by their unique keys: it never scans ``inbound_messages`` (a week of message ids)
    or a merchant's calls, however they grow."""
    await CallStore(pool).store_request(store_cmd("c-keys"), T0)
    batches = [deliveries((f"m-keys-{kind}", event)) for kind, event in (
        ("status", status_event("queued", 0, edge_call_id="edge-c-keys")),
        ("cdr", cdr_event("call-keys", edge_call_id="edge-c-keys")))]
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        for batch in batches:
            kinds = tuple(k for k in report_store._KINDS
                          if any(isinstance(r, k.report) for _, r in batch))
            plan = "\n".join(row[0] for row in await conn.fetch(
                "EXPLAIN " + report_store._statement(kinds, False),
                *report_store._arguments(batch, kinds, False)))
            assert "Seq Scan on inbound_messages" not in plan, plan
            assert "Seq Scan on edge_calls" not in plan, plan
            assert "edge_calls_merchant" not in plan, plan
