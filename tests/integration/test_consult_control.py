"""An operator's forced end over HTTP and PostgreSQL NOTIFY: the request is checked in the
database (the merchant's call-back, being dialled, the consultation not recorded yet) and
reaches the process listening on the control channel; real PostgreSQL, real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import advisors
from advisors import record_store
from advisors.record_store import ConsultationRecords
from callback_server import consult
from callback_server.consult_control import (
    CONTROL_CHANNEL,
    Action,
    Control,
    deliver_controls,
    install,
)
from callback_server.guard.service import Guard
from callback_server.guard.settings import GuardSettings
from shared.db import listening, migrate_url, package_migrations
from shared.http import TOKENS_KEY, MerchantTokens, error_middleware
from tests.integration import callback_db
from tests.integration.test_callback_http import MERCHANTS, TOKEN
from tests.unit.test_advisors_records import answered, unanswered

pytestmark = pytest.mark.integration
pool, clean = callback_db.fixtures(MERCHANTS)

AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = datetime(2026, 12, 5, 2, 0, tzinfo=UTC)



class Round:
    def __init__(self, consultation_id: str) -> None:
        self.consultation_id = consultation_id
        self.events: list[consult.Operator] = []
        self.got = asyncio.Event()

    def operator(self, consultation_id: str, event: consult.Operator) -> bool:
        if consultation_id != self.consultation_id:
            return False
        self.events.append(event)
        self.got.set()
        return True


@pytest.fixture
async def client(clean: asyncpg.Pool, pg_url: str) -> AsyncIterator[Any]:
    await migrate_url(pg_url, [package_migrations("advisors", advisors.__file__),
                               record_store.MIGRATIONS])
    await clean.execute("TRUNCATE consultations, advisors, consult_live CASCADE")
    for merchant, code in (("acme", "0001"), ("bento", "0002")):
        await clean.execute(
            "INSERT INTO advisors (merchant_id, display_name, code, contact_kind, contact,"
            " price_per_minute_yen) VALUES ($1, $2, $3, 'sip', $2, 100)",
            merchant, f"adv-{merchant}", code)
    for i, (merchant, status) in enumerate((("acme", "dialing"), ("acme", "completed"),
                                            ("bento", "dialing"))):
        await clean.execute(
            "INSERT INTO callback_requests (callback_id, edge_call_id, merchant_id, caller,"
            " received_at, message_id, max_attempts, next_attempt_at, status)"
            " VALUES ($1, $2, $3, '+819012345678', $4, $5, 3, $4, $6)",
            f"cb-{i}", f"edge-{i}", merchant, NOW, f"m-{i}", status)
    app = web.Application(middlewares=[error_middleware])
    app[TOKENS_KEY] = MerchantTokens([(m.id, m.api_token_sha256) for m in MERCHANTS
                                      if m.api_token_sha256])
    guard = Guard(clean, GuardSettings())
    install(app, lambda _: clean, lambda _: guard)
    async with TestClient(TestServer(app)) as c:
        yield c
    await guard.alerter.close()


async def _live(pool: asyncpg.Pool, consultation_id: str, *, talking: bool = True) -> None:
    """The consultation's ``consult_live`` row as its runner keeps it (answered: talking;
    not: an advisor-first click-to-call whose customer is still dialled)."""
    callback_id = consultation_id.rsplit("-c", 1)[0]
    record = (answered if talking else unanswered)(consultation_id=consultation_id,
                                                   callback_id=callback_id)
    await pool.execute(
        "INSERT INTO consult_live (consultation_id, callback_id, merchant_id,"
        " customer_channel, advisor_channel, bridge_id, advisor_id, presence_id, snapshot)"
        " VALUES ($1, $2, 'acme', 'cust', 'adv', 'br', 12, $1, $3)",
        consultation_id, callback_id, record.to_json())


@pytest.mark.parametrize(("action", "event"), [("end", consult.ForceEnd),
                                               ("hold", consult.HoldCustomer),
                                               ("unhold", consult.ResumeCustomer)])
async def test_a_control_reaches_the_process_running_the_call(
        client: Any, clean: asyncpg.Pool, pg_url: str, action: str, event: type) -> None:
    await _live(clean, "cb-0-c1")
    here, elsewhere = Round("cb-0-c1"), Round("cb-1-c1")
    async with listening(pg_url, CONTROL_CHANNEL) as notes:
        delivering = asyncio.create_task(deliver_controls(notes, {"cb-0": here,
                                                                  "cb-1": elsewhere}))
        try:
            resp = await client.post(f"/v1/consultations/cb-0-c1/{action}", headers=AUTH)
            assert resp.status == 202, await resp.text()
            assert await resp.json() == {"consultation_id": "cb-0-c1", "action": action,
                                         "state": "requested"}
            await asyncio.wait_for(here.got.wait(), 5)
        finally:
            delivering.cancel()
    assert [type(e) for e in here.events] == [event] and elsewhere.events == []


async def test_a_consultation_not_running_is_409_and_another_merchants_404(
        client: Any, clean: asyncpg.Pool) -> None:
    resp = await client.post("/v1/consultations/cb-1-c1/end", headers=AUTH)   # completed
    assert resp.status == 409
    assert (await resp.json())["error"]["id"] == "consultation-not-running"
    await ConsultationRecords(clean).save(answered(consultation_id="cb-0-c2",
                                                   callback_id="cb-0"))
    resp = await client.post("/v1/consultations/cb-0-c2/end", headers=AUTH)   # recorded
    assert resp.status == 409
    for cid in ("cb-2-c1", "cb-9-c1"):                                        # bento's, none
        resp = await client.post(f"/v1/consultations/{cid}/end", headers=AUTH)
        assert resp.status == 404 and (await resp.json())["error"]["id"] == "not-found"
    resp = await client.post("/v1/consultations/cb-0/end", headers=AUTH)
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "consultation_id"
    resp = await client.post("/v1/consultations/cb-0-c1/end")
    assert resp.status == 401


async def test_a_hold_before_anyone_talks_is_409_and_never_sent(
        client: Any, clean: asyncpg.Pool, pg_url: str) -> None:
    """Still assigning, ringing or queued (no ``consult_live`` row), or an advisor-first
    click-to-call whose customer has not answered (a row without an answer): hold is
    refused 409 ``consultation-not-talking`` and nothing reaches the call; an end still
    goes (it stops the search)."""
    here = Round("cb-0-c1")
    async with listening(pg_url, CONTROL_CHANNEL) as notes:
        delivering = asyncio.create_task(deliver_controls(notes, {"cb-0": here}))
        try:
            for talking in (None, False):
                if talking is not None:
                    await _live(clean, "cb-0-c1", talking=talking)
                resp = await client.post("/v1/consultations/cb-0-c1/hold", headers=AUTH)
                assert resp.status == 409, await resp.text()
                assert (await resp.json())["error"] == {
                    "id": "consultation-not-talking", "consultation_id": "cb-0-c1",
                    "message": "consultation cb-0-c1 has nobody talking to hold yet "
                               "(still ringing or queued)"}
            await asyncio.sleep(0.3)
            assert here.events == []
            resp = await client.post("/v1/consultations/cb-0-c1/end", headers=AUTH)
            assert resp.status == 202
            await asyncio.wait_for(here.got.wait(), 5)
        finally:
            delivering.cancel()
    assert [type(e) for e in here.events] == [consult.ForceEnd]


def test_control_payloads_round_trip_and_garbage_is_ignored() -> None:
    control = Control("3f2a-77.x-c12", Action.END)
    assert Control.parse(control.payload()) == control and control.callback_id == "3f2a-77.x"
    for junk in ("", "[]", '{"consultation_id": "x", "action": "end"}',
                 '{"consultation_id": "cb-c1", "action": "explode"}', '{"action": "end"}'):
        assert Control.parse(junk) is None, junk


async def _delivered(client: Any, pg_url: str, path: str, body: Any) -> list[consult.Operator]:
    here = Round("cb-0-c1")
    async with listening(pg_url, CONTROL_CHANNEL) as notes:
        delivering = asyncio.create_task(deliver_controls(notes, {"cb-0": here}))
        try:
            resp = await client.post(f"/v1/consultations/cb-0-c1/{path}", headers=AUTH,
                                     json=body)
            assert resp.status == 202, await resp.text()
            assert (await resp.json())["state"] == "requested"
            await asyncio.wait_for(here.got.wait(), 5)
        finally:
            delivering.cancel()
    return here.events


async def test_transfer_controls_reach_the_process_running_the_call(
        client: Any, clean: asyncpg.Pool, pg_url: str) -> None:
    advisor = await clean.fetchval("SELECT id FROM advisors WHERE merchant_id = 'acme'")
    events = await _delivered(client, pg_url, "transfer", {"advisor_id": advisor})
    assert [(type(e), e.to_advisor_id, e.to_number) for e in events
            if isinstance(e, consult.StartTransfer)] == [(consult.StartTransfer, advisor, None)]
    events = await _delivered(client, pg_url, "transfer", {"number": "+81311112222"})
    assert [(e.to_advisor_id, e.to_number) for e in events
            if isinstance(e, consult.StartTransfer)] == [(None, "+81311112222")]
    assert [type(e) for e in await _delivered(client, pg_url, "transfer/complete", None)] \
        == [consult.CompleteTransfer]
    assert [type(e) for e in await _delivered(client, pg_url, "transfer/cancel", None)] \
        == [consult.CancelTransfer]


async def test_a_transfer_to_nobody_or_another_merchants_advisor_is_refused(
        client: Any, clean: asyncpg.Pool) -> None:
    theirs = await clean.fetchval("SELECT id FROM advisors WHERE merchant_id = 'bento'")
    resp = await client.post("/v1/consultations/cb-0-c1/transfer", headers=AUTH,
                             json={"advisor_id": theirs})
    assert resp.status == 404 and (await resp.json())["error"]["id"] == "not-found"
    for body, field in (({}, "advisor_id"), ({"advisor_id": 1, "number": "+81311112222"},
                                             "advisor_id"),
                        ({"advisor_id": "1"}, "advisor_id"), ({"number": "0311112222"},
                                                              "number"),
                        ({"number": "+81311112222", "x": 1}, "x")):
        resp = await client.post("/v1/consultations/cb-0-c1/transfer", headers=AUTH,
                                 json=body)
        assert resp.status == 400, body
        assert (await resp.json())["error"]["field"] == field, body
    resp = await client.post("/v1/consultations/cb-1-c1/transfer", headers=AUTH,
                             json={"number": "+81311112222"})
    assert resp.status == 409


def test_transfer_payloads_round_trip() -> None:
    for control in (Control("cb-0-c1", Action.TRANSFER, to_advisor_id=7),
                    Control("cb-0-c1", Action.TRANSFER, to_number="+81311112222"),
                    Control("cb-0-c1", Action.TRANSFER_COMPLETE)):
        assert Control.parse(control.payload()) == control
    assert Control.parse('{"consultation_id": "cb-0-c1", "action": "transfer",'
                         ' "to_advisor_id": "7"}') is None


@pytest.mark.parametrize(("number", "reason"), [
    ("+81990123456", "destination_premium"),      # 0990: premium rate
    ("+88213012345", "destination_foreign"),      # an international premium range (IRSF)
    ("+81570012345", "destination_uan"),
    ("+819011112222", "number_blocked"),          # on the block list
])
async def test_a_transfer_to_a_number_the_guard_refuses_is_403_and_never_asked_of_the_call(
        client: Any, clean: asyncpg.Pool, pg_url: str, number: str, reason: str) -> None:
    """The toll-fraud guard screens a consult transfer's number at the request (lists,
    policy, lock): 403 with its reason, recorded, alerted, and no control is sent."""
    await clean.execute("INSERT INTO guard_lists (number, list, reason, source, created_by,"
                        " created_at) VALUES ('+819011112222', 'block', 'fraud', 'operator',"
                        " 'noc', now())")
    here = Round("cb-0-c1")
    async with listening(pg_url, CONTROL_CHANNEL) as notes:
        delivering = asyncio.create_task(deliver_controls(notes, {"cb-0": here}))
        try:
            resp = await client.post("/v1/consultations/cb-0-c1/transfer", headers=AUTH,
                                     json={"number": number})
            assert resp.status == 403, await resp.text()
            error = (await resp.json())["error"]
            assert (error["id"], error["field"], error["reason"]) == \
                ("number-refused", "number", reason)
            await asyncio.sleep(0.3)
        finally:
            delivering.cancel()
    assert here.events == []
    refusal = await clean.fetchrow("SELECT stage, reason, number, merchant_id, callback_id"
                                   " FROM guard_refusals")
    assert dict(refusal) == {"stage": "transfer", "reason": reason, "number": number,
                             "merchant_id": "acme", "callback_id": "cb-0"}
    alert = await _alert(clean, "destination_refused")
    assert alert["key"] == f"acme/{number}" and alert["details"]["reason"] == reason


async def _alert(pool: asyncpg.Pool, kind: str) -> asyncpg.Record:
    """The guard's alert of ``kind`` (recorded by its sender, in the background)."""
    for _ in range(100):
        row = await pool.fetchrow("SELECT * FROM guard_alerts WHERE kind = $1", kind)
        if row is not None:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {kind} alert")
