"""The callback store against real PostgreSQL: intake, claims, leases, outbox."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

import callback_server
import shared
from callback_server.dialer_messages import Finish, PersistAttempt, Reason, RecordCdr
from callback_server.ivr import Submit
from callback_server.schemas import IntakeRequest
from callback_server.store import CallbackStore
from callback_server.store.queue_store import LeaseLost
from shared.config import AnnounceMode, Merchant
from shared.db import create_pool, listening, migrate_url, package_migrations
from shared.money import Money
from shared.outbox import fact_message_id, isoformat
from shared.phone import E164

pytestmark = pytest.mark.integration

MERCHANT = Merchant(
    id="acme", name="ACME", numbers=(E164("81120123456"),),
    callback_caller_id=E164("81120123456"), announce_mode=AnnounceMode.EARLY_MEDIA,
    inbound_tariff="ntt-freedial", pre_callback_delay_s=Decimal("0"), max_attempts=3,
    retry_backoff_s=(30, 120, 600), ring_timeout_s=30, ivr_flow="order", operator="operator",
    api_token_sha256=None)


def request(edge_call_id: str, hungup_at: datetime | None = None) -> IntakeRequest:
    now = datetime.now(UTC)
    return IntakeRequest(edge_call_id=edge_call_id, merchant_id="acme",
                         caller=E164("819012345678"), dialed="+81120123456",
                         received_at=now, hungup_at=hungup_at or now,
                         announce_mode="early_media")


@pytest.fixture(scope="module")
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate_url(pg_url, [package_migrations("link", shared.__file__),
                               package_migrations("callback", callback_server.__file__)])
    p = await create_pool(pg_url, min_size=2, max_size=10)
    await CallbackStore(p, owner="setup").sync_merchants([MERCHANT])
    yield p
    await p.close()


@pytest.fixture
async def clean(pool: asyncpg.Pool) -> asyncpg.Pool:
    await pool.execute("TRUNCATE cdrs, request_info, callback_attempts, click_to_call_requests,"
                       " click_web_calls, callback_requests, outbox, inbound_messages")
    return pool


async def test_same_message_id_gets_the_same_answer(clean: asyncpg.Pool) -> None:
    store = CallbackStore(clean, owner="w1")
    first = await store.intake("11111111-1111-4111-8111-111111111111", request("e-1"), MERCHANT)
    again = await store.intake("11111111-1111-4111-8111-111111111111", request("e-1"), MERCHANT)
    assert first == again and first[0] == 202 and first[1]["status"] == "queued"
    assert await clean.fetchval("SELECT count(*) FROM callback_requests") == 1


async def test_same_edge_call_new_message_gives_the_same_callback(clean: asyncpg.Pool) -> None:
    store = CallbackStore(clean, owner="w1")
    first = await store.intake("22222222-2222-4222-8222-222222222222", request("e-2"), MERCHANT)
    other = await store.intake("33333333-3333-4333-8333-333333333333", request("e-2"), MERCHANT)
    assert other[1]["callback_id"] == first[1]["callback_id"]
    assert await clean.fetchval("SELECT count(*) FROM callback_requests") == 1
    assert len(await store.claim(10)) == 1


async def test_concurrent_duplicates_over_both_links_make_one_job(clean: asyncpg.Pool) -> None:
    store = CallbackStore(clean, owner="w1")
    answers = await asyncio.gather(*(
        store.intake(f"44444444-4444-4444-8444-44444444444{i}", request("e-3"), MERCHANT)
        for i in range(6)))
    assert len({a[1]["callback_id"] for a in answers}) == 1
    assert await clean.fetchval("SELECT count(*) FROM callback_requests") == 1


async def test_intake_notifies_callback_jobs_at_commit(clean: asyncpg.Pool, pg_url: str) -> None:
    store = CallbackStore(clean, owner="w1")
    async with listening(pg_url, "callback_jobs") as queue:
        _, body = await store.intake("55555555-5555-4555-8555-555555555555", request("e-4"),
                                     MERCHANT)
        payload = await asyncio.wait_for(queue.get(), 5)
    callback_id, due = payload.split()
    assert callback_id == body["callback_id"]
    assert abs(float(due) - datetime.now(UTC).timestamp()) < 5


async def test_pre_callback_delay_counts_from_hangup_and_is_clamped(clean: asyncpg.Pool) -> None:
    store = CallbackStore(clean, owner="w1")
    slow = replace(MERCHANT, pre_callback_delay_s=Decimal("4"))
    future = datetime.now(UTC) + timedelta(hours=1)      # an edge clock far ahead
    await store.intake("66666666-6666-4666-8666-666666666666", request("e-5", future), slow)
    wait = await clean.fetchval(
        "SELECT extract(epoch FROM next_attempt_at - now()) FROM callback_requests")
    assert 3 < float(wait) <= 4.01
    assert await store.claim(1) == []                    # not due yet: never dialled early


async def test_two_workers_never_claim_the_same_job(clean: asyncpg.Pool) -> None:
    """Two workers drain one queue at once: no job is claimed by both, none is left. On a
    loaded machine one worker can drain all 60 before the other's first claim is answered
    (a round where they never claimed at once), so rounds go on until both claimed in one
    (at most five); every round must hold the rule."""
    intake = CallbackStore(clean, owner="edge")
    a, b = CallbackStore(clean, owner="wa"), CallbackStore(clean, owner="wb")

    async def drain(store: CallbackStore) -> list[str]:
        got: list[str] = []
        while batch := await store.claim(3):
            got += [j.callback_id for j in batch]
            await asyncio.sleep(0)
        return got

    for round_ in range(5):
        for i in range(60):
            await intake.intake(f"77777777-7777-4777-8777-{round_:04d}{i:08d}",
                                request(f"e-c{round_}-{i}"), MERCHANT)
        got_a, got_b = await asyncio.gather(drain(a), drain(b))
        assert not set(got_a) & set(got_b)
        assert len(got_a) + len(got_b) == 60
        if got_a and got_b:
            break
    assert got_a and got_b, "in five rounds one worker always drained the queue alone"
    owners = await clean.fetch("SELECT lease_owner, count(*) FROM callback_requests "
                               "GROUP BY lease_owner")
    assert {r["lease_owner"] for r in owners} == {"wa", "wb"}


async def test_expired_lease_is_rescued_and_the_old_owner_cannot_dial(
        clean: asyncpg.Pool) -> None:
    await CallbackStore(clean, owner="edge").intake(
        "88888888-8888-4888-8888-888888888888", request("e-6"), MERCHANT)
    stalled = CallbackStore(clean, owner="stalled", lease_s=1)
    (job,) = await stalled.claim(1)
    assert not job.rescued
    rescuer = CallbackStore(clean, owner="rescuer")
    assert await rescuer.claim(1) == []                 # lease still valid
    assert await stalled.heartbeat([job.callback_id]) == set()   # none lost
    await asyncio.sleep(1.2)
    (again,) = await rescuer.claim(1)
    assert again.callback_id == job.callback_id and again.rescued
    leg = PersistAttempt(job.callback_id, 1, 1, f"{job.callback_id}-01", "customer",
                         "carrier-a", "PJSIP/819012345678@carrier-a")
    with pytest.raises(LeaseLost):
        await stalled.persist_leg(leg, "acme")
    assert await stalled.heartbeat([job.callback_id]) == {job.callback_id}  # lost
    assert not await stalled.finish(job.callback_id, Finish("completed", Reason.ANSWERED, 1))
    assert await clean.fetchval("SELECT count(*) FROM outbox") == 0   # the edge not told
    await rescuer.persist_leg(leg, "acme")
    with pytest.raises(asyncpg.UniqueViolationError):   # one channel id, one originate
        await rescuer.persist_leg(leg, "acme")
    assert await rescuer.last_leg(job.callback_id) is not None


async def test_retry_requeues_with_backoff_and_notifies(clean: asyncpg.Pool) -> None:
    store = CallbackStore(clean, owner="w1")
    await store.intake("99999999-9999-4999-8999-999999999999", request("e-7"), MERCHANT)
    (job,) = await store.claim(1)
    assert await store.finish(job.callback_id, Finish("retry", Reason.CUSTOMER_BUSY, 1, 30))
    row = await clean.fetchrow("SELECT status, attempts, reason, lease_owner, "
                               "extract(epoch FROM next_attempt_at - now()) AS wait "
                               "FROM callback_requests")
    assert row is not None
    assert (row["status"], row["attempts"], row["reason"], row["lease_owner"]) == (
        "queued", 1, "customer_busy", None)
    assert 28 < float(row["wait"]) <= 30
    assert await clean.fetchval("SELECT count(*) FROM outbox") == 0   # not final: no status


async def test_only_a_job_queued_again_wakes_the_workers(clean: asyncpg.Pool,
                                                         pg_url: str) -> None:
    """The update trigger (migration 1090) notifies ``callback_jobs`` for a job queued
    again (a retry, a job given back), with the intake's payload, and for nothing else:
    a claim and a close notify nothing."""
    store = CallbackStore(clean, owner="w1")
    for i, edge in enumerate(("e-n1", "e-n2", "e-n3")):
        await store.intake(f"9a9a9a9a-9a9a-4a9a-8a9a-{i:012d}", request(edge), MERCHANT)
    async with listening(pg_url, "callback_jobs") as queue:
        retried, released, closed = await store.claim(3)
        await store.finish(closed.callback_id, Finish("failed", Reason.CUSTOMER_BUSY, 1))
        assert queue.empty()            # the claim and the close: no wake-up
        assert await store.finish(retried.callback_id,
                                  Finish("retry", Reason.CUSTOMER_BUSY, 1, 30))
        payload = await asyncio.wait_for(queue.get(), 5)
        await store.release(released.callback_id, 2.0, "asterisk_unreachable")
        again = await asyncio.wait_for(queue.get(), 5)
        await asyncio.sleep(0.2)
        assert queue.empty()
    due = await clean.fetchval("SELECT extract(epoch FROM next_attempt_at) "
                               "FROM callback_requests WHERE callback_id = $1",
                               retried.callback_id)
    assert payload.split()[0] == retried.callback_id
    assert abs(float(payload.split()[1]) - float(due)) < 0.001
    assert again.split()[0] == released.callback_id
    trigger = await clean.fetchval(
        "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'callback_jobs_notify'")
    assert "WHEN ((new.status = 'queued'::text))" in trigger


async def test_a_claim_reads_the_dialled_number(clean: asyncpg.Pool) -> None:
    """The number the customer dialled comes with each claim as a number (the same text
    read once and kept: ``queue_store._number_or_none``), None when it is not one."""
    store = CallbackStore(clean, owner="w1")
    for i in range(2):
        await store.intake(f"9b9b9b9b-9b9b-4b9b-8b9b-{i:012d}", request(f"e-d{i}"), MERCHANT)
    await store.intake("9b9b9b9b-9b9b-4b9b-8b9b-000000000009",
                       replace(request("e-d9"), dialed="abc"),
                       MERCHANT)
    jobs = await store.claim(3)
    assert sorted(str(j.dialed) for j in jobs) == ["+81120123456", "+81120123456", "None"]


async def test_final_outcome_and_its_outbox_message_commit_together(
        clean: asyncpg.Pool) -> None:
    store = CallbackStore(clean, owner="w1")
    await store.intake("aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa", request("e-8"), MERCHANT)
    (job,) = await store.claim(1)
    await store.persist_leg(PersistAttempt(job.callback_id, 1, 1, "ch-8", "customer",
                                           "carrier-b", "PJSIP/x@carrier-b"), "acme")
    t0 = datetime.now(UTC)
    cdr = RecordCdr("ch-8", job.callback_id, "customer", "+819012345678", "carrier-b",
                    t0, t0 + timedelta(seconds=3), t0 + timedelta(seconds=15.48),
                    Decimal("12.480"), 16, "answered")
    assert await store.record_cdr(cdr, edge_call_id="e-8", merchant_id="acme", billed_s=60,
                                  carrier_cost=Money.of("0.1398", "USD"),
                                  direct_cost=Money.of("30", "JPY"))
    assert not await store.record_cdr(cdr, edge_call_id="e-8", merchant_id="acme",
                                      billed_s=60, carrier_cost=None, direct_cost=None)
    await store.record_info(Submit("order", (("item_code", "1234"), ("quantity", "2"))),
                            callback_id=job.callback_id, edge_call_id="e-8",
                            merchant_id="acme", caller=job.caller, collected_at=t0, seq=1)
    assert await store.finish(job.callback_id, Finish("completed", Reason.ANSWERED, 1))
    rows = await clean.fetch("SELECT kind, path, body, message_id, merchant_id, held "
                             "FROM outbox ORDER BY created_at, kind")
    kinds = sorted(r["kind"] for r in rows)
    assert kinds == ["callback_status", "cdr", "request_info"]
    bodies = {r["kind"]: json.loads(bytes(r["body"])) for r in rows}
    assert {r["path"] for r in rows} == {"/v1/link/events"}
    assert bodies["cdr"]["duration_s"] == "12.480"
    assert bodies["cdr"]["carrier_cost"] == {"amount": "0.1398", "currency": "USD"}
    assert bodies["request_info"]["fields"] == {"item_code": "1234", "quantity": "2"}
    finished_at = await clean.fetchval(
        "SELECT finished_at FROM callback_requests WHERE callback_id = $1", job.callback_id)
    assert bodies["callback_status"] == {
        "kind": "callback_status", "callback_id": job.callback_id, "edge_call_id": "e-8",
        "merchant_id": "acme", "status": "completed", "reason": "answered", "attempts": 1,
        "at": isoformat(finished_at)}
    ids = {r["kind"]: (str(r["message_id"]), r["merchant_id"], r["held"]) for r in rows}
    assert ids["callback_status"] == (fact_message_id("callback_status", job.callback_id),
                                      "acme", False)
    assert ids["cdr"] == (fact_message_id("cdr", "ch-8"), "acme", False)
    status = await store.get(job.callback_id)
    assert status is not None and status["status"] == "completed"
    assert status["legs"][0]["channel_id"] == "ch-8"


async def test_fact_and_outbox_roll_back_together(clean: asyncpg.Pool) -> None:
    store = CallbackStore(clean, owner="w1")
    t0 = datetime.now(UTC)
    cdr = RecordCdr("ch-x", "cb-missing", "customer", "+819012345678", "carrier-b",
                    t0, None, t0, Decimal("0.000"), 17, "busy")
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await store.record_cdr(cdr, edge_call_id="e-x", merchant_id="acme", billed_s=0,
                               carrier_cost=None, direct_cost=None)
    assert await clean.fetchval("SELECT count(*) FROM outbox") == 0


async def test_a_flows_transfer_leg_is_persisted_like_the_operators(
        clean: asyncpg.Pool) -> None:
    store = CallbackStore(clean, owner="w1")
    await store.intake("77777777-7777-4777-8777-777777777777", request("e-9"), MERCHANT)
    (job,) = await store.claim(1)
    await store.persist_leg(PersistAttempt(job.callback_id, 1, 2, f"{job.callback_id}-02",
                                           "transfer", "carrier-a",
                                           "PJSIP/+81312345678@carrier-a"), "acme")
    leg = await clean.fetchval("SELECT leg FROM callback_attempts WHERE channel_id = $1",
                               f"{job.callback_id}-02")
    assert leg == "transfer"
