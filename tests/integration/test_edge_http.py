"""The edge's HTTP API with aiohttp's test client against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from edge_server.flow_messages import AnnounceMode, Outcome, RecordCall, StoreRequest
from edge_server.http import LINK_SHARE_KEY, POOL_KEY, create_http_app
from edge_server.store import CallStore, edge_migrations
from edge_server.testing import merchant
from shared.db import create_pool, migrate_url
from shared.paging import encode_cursor
from shared.phone import E164
from shared.signing import Signer, SigningKey, Verifier
from tests.integration.raw_http import DEEP_JSON, EDGE_TIMES, raw_get
from tests.integration.statements import counted_pool
from tests.prom import total

pytestmark = pytest.mark.integration

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
PEER_KEY = SigningKey.generate("callback-sign-1")
ACME_TOKEN = "acme-secret-token"
BENTO_TOKEN = "bento-secret-token"
MERCHANTS = [merchant("acme", "0120123456", api_token=ACME_TOKEN),
             merchant("bento", "0120999888", api_token=BENTO_TOKEN)]


@pytest.fixture(scope="module")
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate_url(pg_url, edge_migrations())
    pool = await create_pool(pg_url)
    await CallStore(pool).sync_merchants(MERCHANTS)
    yield pool
    await pool.close()


@pytest.fixture
async def client(pool: asyncpg.Pool, aiohttp_client: ClientFactory) -> TestClient[Any, Any]:
    app = create_http_app(merchants=MERCHANTS,
                          verifier=Verifier({PEER_KEY.key_id: PEER_KEY.public()}))
    app[POOL_KEY] = pool
    return await aiohttp_client(app)


def signed(body: bytes, message_id: str | None = None,
           path: str = "/v1/link/events") -> dict[str, str]:
    headers = Signer([PEER_KEY]).headers("POST", path, body,
                                         message_id=message_id or str(uuid.uuid4()))
    headers["content-type"] = "application/json"
    return headers


def request_info(callback_id: str, merchant_id: str = "acme", minute: int = 0,
                 **extra: Any) -> dict[str, Any]:
    return {"kind": "request_info", "callback_id": callback_id,
            "edge_call_id": f"edge-{callback_id}", "merchant_id": merchant_id,
            "caller": "+819012345678", "category": "order",
            "fields": {"item_code": "1234", "quantity": "2"},
            "collected_at": f"2026-11-22T03:{minute:02d}:00Z", **extra}


async def post_event(client: TestClient[Any, Any], event: dict[str, Any],
                     message_id: str | None = None) -> tuple[int, Any]:
    body = json.dumps(event).encode()
    resp = await client.post("/v1/link/events", data=body, headers=signed(body, message_id))
    return resp.status, await resp.json()


def cdr(call_id: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "cdr", "call_id": call_id, "callback_id": "cb-c1",
            "edge_call_id": "edge-cb-c1", "merchant_id": "bento", "leg": "customer",
            "destination": "+819012345678", "carrier": "carrier-b",
            "started_at": "2026-11-22T01:02:10Z", "answered_at": None,
            "ended_at": "2026-11-22T01:02:40Z", "duration_s": "0", "billed_s": 0,
            "hangup_cause": 17, "disposition": "busy",
            "carrier_cost": {"amount": "0", "currency": "USD"}, "direct_cost": None, **extra}


def callback_status(callback_id: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "callback_status", "callback_id": callback_id,
            "edge_call_id": f"edge-{callback_id}", "merchant_id": "acme", "status": "queued",
            "reason": None, "attempts": 0, "at": "2026-11-22T01:02:03Z", **extra}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- the link ------------------------------------------------------------------------------

async def test_signed_event_is_stored_and_a_replay_is_a_no_op(
        client: TestClient[Any, Any], pool: asyncpg.Pool) -> None:
    mid = str(uuid.uuid4())
    first = await post_event(client, request_info("cb-h1"), mid)
    again = await post_event(client, request_info("cb-h1"), mid)
    assert first == again == (200, {"status": "stored", "kind": "request_info"})
    assert await pool.fetchval("SELECT count(*) FROM requests WHERE callback_id = 'cb-h1'") == 1


async def test_a_recordings_transcript_is_stored_once_and_shown_with_its_request(
        client: TestClient[Any, Any], pool: asyncpg.Pool) -> None:
    """The transcript arrives after the request (made after the call) or before it; it is
    shown against the field holding its recording's id, stored once however redelivered."""
    rec = str(uuid.uuid4())
    transcript = {"kind": "recording_transcript", "callback_id": "cb-tr",
                  "edge_call_id": "edge-cb-tr", "merchant_id": "acme", "recording_id": rec,
                  "transcript": "please call me back tomorrow morning"}
    body = json.dumps(transcript).encode()
    resp = await client.post("/v1/link/events", data=body,
                             headers={"content-type": "application/json"})
    assert resp.status == 401                       # signed like every link message
    mid = str(uuid.uuid4())
    assert await post_event(client, transcript, mid) == (
        200, {"status": "stored", "kind": "recording_transcript"})
    assert await post_event(client, transcript, mid) == (
        200, {"status": "stored", "kind": "recording_transcript"})
    assert await post_event(client, transcript) == (        # the same fact, a new message
        200, {"status": "duplicate", "kind": "recording_transcript"})
    assert await pool.fetchval("SELECT count(*) FROM request_transcripts "
                               "WHERE recording_id = $1", rec) == 1
    assert (await post_event(client, request_info(
        "cb-tr", minute=40, fields={"item_code": "9", "message": rec})))[0] == 200
    page = await (await client.get("/v1/requests", headers=bearer(ACME_TOKEN), params={
        "since": "2026-11-22T03:40:00Z", "until": "2026-11-22T03:41:00Z"})).json()
    [item] = page["items"]
    assert item["fields"] == {"item_code": "9", "message": rec}
    assert item["transcripts"] == {"message": "please call me back tomorrow morning"}
    others = await (await client.get("/v1/requests", headers=bearer(BENTO_TOKEN))).json()
    assert all(i["transcripts"] == {} for i in others["items"])


async def test_unsigned_or_tampered_events_are_refused(client: TestClient[Any, Any]) -> None:
    body = json.dumps(request_info("cb-h2")).encode()
    resp = await client.post("/v1/link/events", data=body,
                             headers={"content-type": "application/json"})
    assert resp.status == 401
    assert (await resp.json())["error"]["id"] == "signature-missing"
    headers = signed(body)
    resp = await client.post("/v1/link/events", data=body.replace(b"cb-h2", b"cb-hX"),
                             headers=headers)
    assert resp.status == 401
    assert (await resp.json())["error"]["id"] == "signature-invalid"


@pytest.mark.parametrize(("mutate", "field"), [
    ({"kind": "bogus"}, "kind"),
    ({"caller": "09012345678"}, "caller"),
    ({"collected_at": "yesterday"}, "collected_at"),
    ({"collected_at": "2026-11-22T03:00:00"}, "collected_at"),
    ({"fields": {"item_code": 1234}}, "fields"),
    ({"merchant_id": None}, "merchant_id"),
])
async def test_bad_event_fields_are_400_naming_the_field(
        client: TestClient[Any, Any], mutate: dict[str, Any], field: str) -> None:
    status, body = await post_event(client, {**request_info("cb-h3"), **mutate})
    assert status == 400
    assert body["error"]["id"] == "invalid-field" and body["error"]["field"] == field


async def test_bad_json_is_400(client: TestClient[Any, Any]) -> None:
    body = b'{"kind": "cdr",'
    resp = await client.post("/v1/link/events", data=body, headers=signed(body))
    assert resp.status == 400 and (await resp.json())["error"]["id"] == "invalid-json"


async def test_body_over_64_kib_is_413_json(client: TestClient[Any, Any]) -> None:
    body = json.dumps({**request_info("cb-h4"), "pad": "x" * 70_000}).encode()
    resp = await client.post("/v1/link/events", data=body, headers=signed(body))
    assert resp.status == 413
    assert (await resp.json())["error"]["id"] == "body-too-large"


async def test_json_nested_too_deep_is_400(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/v1/link/events", data=DEEP_JSON, headers=signed(DEEP_JSON))
    assert resp.status == 400 and (await resp.json())["error"]["id"] == "invalid-json"


async def test_text_no_database_column_takes_is_400(client: TestClient[Any, Any]) -> None:
    for text in ("\\u0000", "\\udc00"):
        raw = json.dumps(request_info("cb-nul")).replace("order", text).encode()
        resp = await client.post("/v1/link/events", data=raw, headers=signed(raw))
        assert resp.status == 400 and (await resp.json())["error"]["id"] == "invalid-json"
    resp = await client.get("/v1/requests?cursor=%00", headers=bearer(ACME_TOKEN))
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "cursor"


@pytest.mark.parametrize(("event", "field"), [
    (cdr("call-big-1", billed_s=2**31), "billed_s"),
    (cdr("call-big-2", hangup_cause=2**31), "hangup_cause"),
    (cdr("call-big-3", duration_s="1000000000"), "duration_s"),
    (cdr("call-big-4", carrier_cost={"amount": "1e200000", "currency": "USD"}),
     "carrier_cost"),
    (callback_status("cb-big-5", attempts=2**31), "attempts"),
])
async def test_numbers_past_their_columns_are_400_naming_the_field(
        client: TestClient[Any, Any], event: dict[str, Any], field: str) -> None:
    status, body = await post_event(client, event)
    assert status == 400, body
    assert body["error"]["id"] == "invalid-field" and body["error"]["field"] == field


async def test_a_number_of_5000_digits_is_400(client: TestClient[Any, Any]) -> None:
    raw = json.dumps(callback_status("cb-digits")).replace('"attempts": 0',
                                                           '"attempts": ' + "1" * 5000).encode()
    resp = await client.post("/v1/link/events", data=raw, headers=signed(raw))
    assert resp.status == 400 and (await resp.json())["error"]["id"] == "invalid-json"


@pytest.mark.parametrize("at", EDGE_TIMES)
async def test_time_out_of_range_in_utc_is_400(client: TestClient[Any, Any], at: str) -> None:
    status, body = await post_event(client, request_info("cb-h6", collected_at=at))
    assert status == 400
    assert body["error"]["field"] == "collected_at" and "out of range" in body["error"]["message"]


async def test_a_batch_of_events_is_answered_message_by_message(
        client: TestClient[Any, Any], pool: asyncpg.Pool) -> None:
    stored_before = str(uuid.uuid4())
    assert (await post_event(client, request_info("cb-b0"), stored_before))[0] == 200
    messages = [(str(uuid.uuid4()), request_info("cb-b1")),
                (str(uuid.uuid4()), cdr("call-b1", callback_id="cb-b1", merchant_id="acme")),
                (stored_before, request_info("cb-b0")),                 # a duplicate
                (str(uuid.uuid4()), {"kind": "nonsense"}),
                (str(uuid.uuid4()), request_info("cb-b2", merchant_id="ghost")),
                (str(uuid.uuid4()), callback_status("cb-b1", status="completed"))]
    body = json.dumps({"messages": [{"message_id": mid, "body": event}
                                    for mid, event in messages]}).encode()
    path = "/v1/link/events/batch"
    resp = await client.post(path, data=body, headers=signed(body, path=path))
    assert resp.status == 200
    results = (await resp.json())["results"]
    assert [r["message_id"] for r in results] == [mid for mid, _ in messages]
    assert [r["status"] for r in results] == [200, 200, 200, 400, 422, 200]
    assert results[0]["body"] == results[2]["body"] == {"status": "stored",
                                                        "kind": "request_info"}
    assert results[3]["body"]["error"]["field"] == "kind"
    assert results[4]["body"]["error"]["id"] == "unknown-merchant"
    assert await pool.fetchval("SELECT count(*) FROM requests "
                               "WHERE callback_id IN ('cb-b0', 'cb-b1', 'cb-b2')") == 2
    assert await pool.fetchval("SELECT count(*) FROM cdrs WHERE call_id = 'call-b1'") == 1
    again = await client.post(path, data=body, headers=signed(body, path=path))
    assert [r["status"] for r in (await again.json())["results"]] == [200, 200, 200, 400, 422,
                                                                      200]
    assert await pool.fetchval("SELECT count(*) FROM cdrs WHERE call_id = 'call-b1'") == 1


async def test_a_batch_that_is_not_one_is_400(client: TestClient[Any, Any]) -> None:
    body = json.dumps({"messages": [{"message_id": "m1"}]}).encode()
    path = "/v1/link/events/batch"
    resp = await client.post(path, data=body, headers=signed(body, path=path))
    assert resp.status == 400
    assert (await resp.json())["error"]["field"] == "messages[0].body"


async def test_event_for_an_unknown_merchant_is_422(client: TestClient[Any, Any]) -> None:
    status, body = await post_event(client, request_info("cb-h5", merchant_id="ghost"))
    assert status == 422 and body["error"]["id"] == "unknown-merchant"


# --- the call center API -------------------------------------------------------------------

async def test_requests_need_a_valid_bearer_token(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/v1/requests")
    assert resp.status == 401 and (await resp.json())["error"]["id"] == "auth-missing"
    for header in ({"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}):
        resp = await client.get("/v1/requests", headers=header)
        assert resp.status == 401 and (await resp.json())["error"]["id"] == "auth-invalid"


async def test_a_token_that_is_not_ascii_is_401(client: TestClient[Any, Any]) -> None:
    status, body = await raw_get(client, "/v1/requests", b"Authorization: Bearer \xff")
    assert status == 401 and body["error"]["id"] == "auth-invalid"


async def test_each_merchant_sees_only_its_own_requests(client: TestClient[Any, Any]) -> None:
    for i in range(3):
        assert (await post_event(client, request_info(f"cb-t{i}", minute=10 + i)))[0] == 200
    assert (await post_event(client, request_info("cb-tb", merchant_id="bento")))[0] == 200
    acme = await (await client.get("/v1/requests", headers=bearer(ACME_TOKEN))).json()
    bento = await (await client.get("/v1/requests", headers=bearer(BENTO_TOKEN))).json()
    acme_ids = {i["callback_id"] for i in acme["items"]}
    assert {"cb-t0", "cb-t1", "cb-t2"} <= acme_ids and "cb-tb" not in acme_ids
    assert [i["callback_id"] for i in bento["items"]] == ["cb-tb"]
    item = bento["items"][0]
    assert item["fields"] == {"item_code": "1234", "quantity": "2"}
    assert item["caller"] == "+819012345678" and "merchant_id" not in item


async def test_requests_page_with_cursor_and_time_window(client: TestClient[Any, Any]) -> None:
    for i in range(4):
        await post_event(client, request_info(f"cb-p{i}", minute=30 + i))
    window = {"since": "2026-11-22T03:30:00Z", "until": "2026-11-22T12:34:00+09:00"}
    resp = await client.get("/v1/requests", params={**window, "limit": "3"},
                            headers=bearer(ACME_TOKEN))
    page = await resp.json()
    assert resp.status == 200
    assert [i["callback_id"] for i in page["items"]] == ["cb-p0", "cb-p1", "cb-p2"]
    resp = await client.get("/v1/requests", headers=bearer(ACME_TOKEN),
                            params={**window, "limit": "3", "cursor": page["next_cursor"]})
    rest = await resp.json()
    assert [i["callback_id"] for i in rest["items"]] == ["cb-p3"]
    assert rest["next_cursor"] is None


@pytest.mark.parametrize(("params", "field"), [
    ({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"since": "last week"}, "since"), ({"until": "2026-11-22T03:00:00"}, "until"),
    ({"since": "2026-11-22T04:00:00Z", "until": "2026-11-22T03:00:00Z"}, "until"),
    ({"cursor": "not-a-cursor"}, "cursor"), ({"merchant_id": "bento"}, "merchant_id"),
    ({"since": EDGE_TIMES[0]}, "since"), ({"until": EDGE_TIMES[1]}, "until"),
    ({"limit": "\u00b2"}, "limit"), ({"limit": "1" * 5000}, "limit"),
    ({"cursor": encode_cursor(2**63)}, "cursor"),
    ({"cursor": base64.urlsafe_b64encode(DEEP_JSON).decode()}, "cursor"),
])
async def test_bad_query_parameters_are_400_naming_the_field(
        client: TestClient[Any, Any], params: dict[str, str], field: str) -> None:
    for path in ("/v1/requests", "/v1/cdrs", "/v1/calls"):
        resp = await client.get(path, params=params, headers=bearer(ACME_TOKEN))
        body = await resp.json()
        assert resp.status == 400, body
        assert body["error"]["id"] == "invalid-field" and body["error"]["field"] == field


async def test_cdrs_are_listed_with_money_as_strings(client: TestClient[Any, Any]) -> None:
    assert (await post_event(client, cdr("call-h1")))[0] == 200
    body = await (await client.get("/v1/cdrs", headers=bearer(BENTO_TOKEN))).json()
    assert len(body["items"]) == 1
    item = body["items"][0]
    assert item["carrier_cost"] == {"amount": "0", "currency": "USD"}
    assert item["direct_cost"] is None and item["answered_at"] is None
    assert item["duration_s"] == "0.000" and item["disposition"] == "busy"
    acme = await (await client.get("/v1/cdrs", headers=bearer(ACME_TOKEN))).json()
    assert all(i["call_id"] != "call-h1" for i in acme["items"])


async def test_cdrs_of_legs_to_sip_endpoints_are_stored_and_listed(
        client: TestClient[Any, Any]) -> None:
    sip = {"merchant_id": "acme", "edge_call_id": "edge-cb-sip", "carrier": "edge-trunk",
           "carrier_cost": None}
    advisor = cdr("call-sip-1", leg="advisor", destination="alice", destination_kind="sip",
                  **sip)
    # the operator's leg as sent before CDRs named the kind (a dead letter requeued)
    operator = cdr("call-sip-2", leg="operator", destination="PJSIP/operator@edge-trunk",
                   **sip)
    assert [(await post_event(client, e))[0] for e in (advisor, operator)] == [200, 200]
    body = await (await client.get("/v1/cdrs", headers=bearer(ACME_TOKEN))).json()
    assert {(i["call_id"], i["destination"], i["destination_kind"]) for i in body["items"]
            if i["edge_call_id"] == "edge-cb-sip"} == {
        ("call-sip-1", "alice", "sip"), ("call-sip-2", "PJSIP/operator@edge-trunk", "sip")}


async def test_calls_show_a_closed_call_and_a_dropped_call_back_with_why(
        client: TestClient[Any, Any], pool: asyncpg.Pool) -> None:
    store = CallStore(pool)
    at = datetime(2026, 12, 30, 1, 0, tzinfo=UTC)
    await store.record_call(RecordCall(
        "edge-closed-1", "closed-1", "acme", E164("819012345678"), E164("81120123456"),
        Outcome.CLOSED, "special day: 年末年始; opens 2027-01-04T09:00:00+09:00"), at)
    await store.store_request(StoreRequest(
        "edge-dropped-1", "dropped-1", "acme", E164("819012345679"), E164("81120123456"),
        AnnounceMode.EARLY_MEDIA, "cheaper"), at)
    status = {"kind": "callback_status", "callback_id": "cb-dropped-1",
              "edge_call_id": "edge-dropped-1", "merchant_id": "acme", "status": "failed",
              "reason": "outside_hours", "attempts": 0, "at": "2026-12-30T09:00:00Z"}
    assert (await post_event(client, status))[0] == 200
    body = await (await client.get("/v1/calls", headers=bearer(ACME_TOKEN))).json()
    calls = {c["edge_call_id"]: c for c in body["items"]}
    closed, dropped = calls["edge-closed-1"], calls["edge-dropped-1"]
    assert (closed["state"], closed["outcome"], closed["caller"]) == (
        "closed", "outside_hours", "+819012345678")
    assert closed["detail"] == "special day: 年末年始; opens 2027-01-04T09:00:00+09:00"
    assert closed["received_at"] == "2026-12-30T01:00:00.000Z" and closed["callback_id"] is None
    assert (dropped["state"], dropped["callback_status"], dropped["callback_reason"]) == (
        "stored", "failed", "outside_hours")
    bento = await (await client.get("/v1/calls", headers=bearer(BENTO_TOKEN))).json()
    assert all(c["edge_call_id"] not in calls for c in bento["items"])


async def test_healthz_reports_the_database(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/healthz")
    body = await resp.json()
    assert resp.status == 200 and body["database"] == "up"
    assert body["status"] == "degraded"  # no ARI in this test app


async def test_a_call_back_s_reports_cost_the_edge_one_statement_alone_or_a_batch(
        pool: asyncpg.Pool, pg_url: str, aiohttp_client: ClientFactory) -> None:
    """What the edge's database does for the reports of declined call-backs (a CDR and
    the status each): one statement (the messages claimed, the tenants checked, the
    reports written with what they update, the answers kept), one transaction, for a
    report alone or for a batch of them (four: one commit, not four)."""
    store = CallStore(pool)
    for n in range(4):
        await store.store_request(StoreRequest(
            f"edge-cb-n{n}", f"n{n}", "acme", E164("819012345678"), E164("81120123456"),
            AnnounceMode.EARLY_MEDIA, "cheaper"), datetime.now(UTC))
    async with counted_pool(pg_url) as (counted, statements):
        app = create_http_app(merchants=MERCHANTS,
                              verifier=Verifier({PEER_KEY.key_id: PEER_KEY.public()}))
        app[POOL_KEY] = counted
        client = await aiohttp_client(app)

        def reports(n: int) -> list[dict[str, Any]]:
            return [cdr(f"call-n{n}", callback_id=f"cb-n{n}", edge_call_id=f"edge-cb-n{n}",
                        merchant_id="acme"),
                    callback_status(f"cb-n{n}", status="failed")]

        for event in reports(0):                    # the statements learn their types
            assert (await post_event(client, event))[0] == 200
        statements.clear()
        for event in reports(1):
            assert (await post_event(client, event))[0] == 200
        assert len(statements.queries) == 2, str(statements)
        assert statements.transactions == 2
        statements.clear()
        path = "/v1/link/events/batch"
        body = json.dumps({"messages": [{"message_id": str(uuid.uuid4()), "body": event}
                                        for event in reports(2) + reports(3)]}).encode()
        resp = await client.post(path, data=body, headers=signed(body, path=path))
        assert resp.status == 200
        assert [r["status"] for r in (await resp.json())["results"]] == [200] * 4
        assert len(statements.queries) == statements.transactions == 1, str(statements)
    assert await pool.fetchval("SELECT count(*) FROM edge_calls WHERE callback_status = "
                               "'failed' AND edge_call_id LIKE 'edge-cb-n_'") == 4
    assert await pool.fetchval("SELECT count(*) FROM cdrs WHERE call_id LIKE 'call-n_'") == 4


async def test_a_batch_does_not_deadlock_with_a_writer_taking_its_rows_in_reverse(
        pool: asyncpg.Pool, client: TestClient[Any, Any]) -> None:
    """Another writer holds the second call's row and then asks for the first: the batch
    stored the first report in a transaction of its own and committed it, so the writer
    gets it, and the second report is stored once the writer is through."""
    store = CallStore(pool)
    for n in (1, 2):
        await store.store_request(StoreRequest(
            f"edge-cb-d{n}", f"d{n}", "acme", E164("819012345678"), E164("81120123456"),
            AnnounceMode.EARLY_MEDIA, "cheaper"), datetime.now(UTC))
    path = "/v1/link/events/batch"
    body = json.dumps({"messages": [
        {"message_id": str(uuid.uuid4()), "body": callback_status(f"cb-d{n}", status="failed")}
        for n in (1, 2)]}).encode()
    async with pool.acquire() as writer, writer.transaction():
        await writer.execute("SET LOCAL deadlock_timeout = '20s'")
        await writer.execute("UPDATE edge_calls SET detail = 'held' "
                             "WHERE edge_call_id = 'edge-cb-d2'")
        batch = asyncio.create_task(client.post(path, data=body,
                                                headers=signed(body, path=path)))
        await _waiting_on_a_lock(pool, "callback_status")
        await writer.execute("UPDATE edge_calls SET detail = 'held' "
                             "WHERE edge_call_id = 'edge-cb-d1'")
    resp = await asyncio.wait_for(batch, 30)
    assert resp.status == 200
    assert [r["status"] for r in (await resp.json())["results"]] == [200, 200]
    assert await pool.fetchval("SELECT count(*) FROM edge_calls WHERE callback_status = "
                               "'failed' AND edge_call_id LIKE 'edge-cb-d_'") == 2


async def _waiting_on_a_lock(pool: asyncpg.Pool, query_part: str, count: int = 1) -> int:
    """How many statements like ``query_part`` wait on a lock, once ``count`` do."""
    for _ in range(200):
        waiting: int = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE '%' || $1 || '%'", query_part)
        if waiting >= count:
            return waiting
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} statements like {query_part!r} waited on a lock")


async def test_an_inbound_call_stores_its_request_while_the_link_s_share_is_full(
        pool: asyncpg.Pool, pg_url: str, aiohttp_client: ClientFactory) -> None:
    """Reports held up in the database (a writer holds their call's row) fill the link's
    share of a pool of 4 (2 of them): the reports after them wait for the share, not for
    the pool, and an inbound call stores its request at once, from the 2 kept for it.
    The waits show in ``cbgw_edge_link_db_wait_seconds``."""
    store = CallStore(pool)
    await store.store_request(StoreRequest(
        "edge-cb-s0", "s0", "acme", E164("819012345678"), E164("81120123456"),
        AnnounceMode.EARLY_MEDIA, "cheaper"), datetime.now(UTC))
    small = await create_pool(pg_url, min_size=1, max_size=4)
    try:
        app = create_http_app(merchants=MERCHANTS, link_connections=2,
                              verifier=Verifier({PEER_KEY.key_id: PEER_KEY.public()}))
        app[POOL_KEY] = small
        client = await aiohttp_client(app)
        waits = total("cbgw_edge_link_db_wait_seconds_count")
        async with pool.acquire() as writer, writer.transaction():
            await writer.execute("UPDATE edge_calls SET detail = 'held' "
                                 "WHERE edge_call_id = 'edge-cb-s0'")
            reports = [asyncio.create_task(post_event(client, callback_status(
                "cb-s0", status="dialing", attempts=n, at=f"2026-11-22T01:02:0{n}Z")))
                for n in range(6)]
            assert await _waiting_on_a_lock(pool, "callback_status", count=2) == 2
            await asyncio.sleep(0.2)    # time for the four others to reach the database
            assert await _waiting_on_a_lock(pool, "callback_status", count=2) == 2
            assert app[LINK_SHARE_KEY].in_use == 2
            await asyncio.wait_for(CallStore(small).store_request(StoreRequest(
                "edge-cb-s1", "s1", "acme", E164("819012345678"), E164("81120123456"),
                AnnounceMode.EARLY_MEDIA, "cheaper"), datetime.now(UTC)), 5)
        assert [(await r)[0] for r in reports] == [200] * 6
    finally:
        await small.close()
    assert await pool.fetchval("SELECT state FROM edge_calls "
                               "WHERE edge_call_id = 'edge-cb-s1'") == "stored"
    assert total("cbgw_edge_link_db_wait_seconds_count") - waits == 6
    assert total("cbgw_edge_link_db_wait_seconds_sum") > 0
