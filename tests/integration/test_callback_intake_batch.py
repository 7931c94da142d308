"""Group-committed call-back intake (callback_server.intake) on the real PostgreSQL: many
requests per transaction, with the guard, and the same answers as one at a time."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest

from callback_server.guard.service import Guard
from callback_server.guard.settings import GuardSettings
from callback_server.intake import CallbackIntake
from callback_server.schemas import IntakeRequest
from callback_server.store import CallbackStore
from callback_server.testing import merchant
from shared.db import listening
from shared.intake_batch import IntakeBroken
from shared.phone import E164
from tests.integration import callback_db

pytestmark = pytest.mark.integration

ACME = merchant("acme")
T0 = datetime(2026, 11, 22, 1, 0, tzinfo=UTC)


pool, clean = callback_db.fixtures([ACME])


@pytest.fixture
async def intake(clean: asyncpg.Pool) -> AsyncIterator[CallbackIntake]:
    pool = clean
    batcher = CallbackIntake(CallbackStore(pool, owner="t", guard=Guard(pool, GuardSettings())))
    yield batcher
    await batcher.close()


def request(edge_call_id: str, caller: str) -> IntakeRequest:
    return IntakeRequest(edge_call_id, "acme", E164(caller), "+81120123456", T0, T0,
                         "early_media")


async def stored_answers(pool: asyncpg.Pool) -> dict[str, dict[str, object]]:
    rows = await pool.fetch("SELECT message_id, response_status, response_body::text AS b"
                            " FROM inbound_messages")
    assert all(r["response_status"] == 202 for r in rows)
    return {r["message_id"]: json.loads(r["b"]) for r in rows}


async def test_concurrent_requests_share_transactions_and_each_is_stored_once(
        intake: CallbackIntake, pool: asyncpg.Pool) -> None:
    mids = [str(uuid.uuid4()) for _ in range(300)]
    answers = await asyncio.gather(*(
        intake.submit(mid, request(f"bulk-{i}", f"8190{10_000_000 + i}"), ACME)
        for i, mid in enumerate(mids)))
    assert all(status == 202 and body["status"] == "queued" for status, body in answers)
    assert len({body["callback_id"] for _, body in answers}) == 300
    assert intake.batches < 300 and intake.messages == 300
    rows = await pool.fetch("SELECT callback_id, edge_call_id, message_id FROM callback_requests")
    by_mid = {r["message_id"]: r["callback_id"] for r in rows}
    sent = dict(zip(mids, [body for _, body in answers], strict=True))
    assert by_mid == {mid: body["callback_id"] for mid, body in sent.items()}
    assert await stored_answers(pool) == sent
    assert await pool.fetchval("SELECT count(*) FROM guard_callbacks") == 300
    assert await pool.fetchval("SELECT count(*) FROM guard_numbers") == 300


async def test_each_commit_logs_one_info_line_with_counts_and_no_caller_numbers(
        intake: CallbackIntake, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await asyncio.gather(*(intake.submit(f"m-log-{i}", request(f"log-{i}", f"8190{20_000_000 + i}"),
                                         ACME) for i in range(40)))
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    commits = [line for line in lines if line.startswith("stored ")]
    assert len(commits) == intake.batches < 40
    assert sum(int(line.split()[1]) for line in commits) == 40
    assert all(line.endswith(f"{{'queued': {line.split()[1]}}}") for line in commits)
    assert not any("+8190" in line for line in lines)  # numbers stay out of the INFO log


async def test_requests_for_one_number_in_one_batch_are_judged_in_order(
        intake: CallbackIntake, pool: asyncpg.Pool) -> None:
    answers = await asyncio.gather(*(
        intake.submit(f"s-{i}", request(f"same-{i}", "819011112222"), ACME)
        for i in range(3)))
    assert intake.batches == 1
    assert [body["status"] for _, body in answers] == ["queued", "refused", "refused"]
    # as if the first were stored before the second was screened: one pending per number
    assert [body.get("reason") for _, body in answers[1:]] == ["velocity_concurrent"] * 2
    assert await pool.fetchval("SELECT count(*) FROM guard_refusals") == 2
    assert await pool.fetchval("SELECT count(*) FROM guard_callbacks") == 1
    event = await pool.fetchval("SELECT count(*) FROM outbox WHERE kind = 'callback_status'")
    assert event == 2  # the edge hears of each refusal


async def test_two_messages_for_one_edge_call_in_one_batch_make_one_call_back(
        intake: CallbackIntake, pool: asyncpg.Pool) -> None:
    first, second = await asyncio.gather(
        intake.submit("m-1", request("edge-1", "819022223333"), ACME),
        intake.submit("m-2", request("edge-1", "819022223333"), ACME))
    assert intake.batches == 1
    assert first == second and first[1]["status"] == "queued"
    assert await pool.fetchval("SELECT count(*) FROM callback_requests") == 1
    assert await pool.fetchval("SELECT count(*) FROM guard_refusals") == 0
    assert await stored_answers(pool) == {"m-1": first[1], "m-2": first[1]}


async def test_a_message_repeated_to_two_servers_gets_its_first_answer(
        intake: CallbackIntake, pool: asyncpg.Pool) -> None:
    other = CallbackIntake(CallbackStore(pool, owner="t2", guard=Guard(pool, GuardSettings())))
    try:
        req = request("edge-r", "819033334444")
        together = await asyncio.gather(intake.submit("r-1", req, ACME),
                                        other.submit("r-1", req, ACME),
                                        intake.submit("r-1", req, ACME))
        later = await other.submit("r-1", req, ACME)
    finally:
        await other.close()
    assert together == [later] * 3 and later[1]["status"] == "queued"
    assert await pool.fetchval("SELECT count(*) FROM callback_requests") == 1
    assert await pool.fetchval("SELECT count(*) FROM inbound_messages") == 1


async def test_one_bad_request_fails_alone_and_the_rest_of_its_batch_is_stored(
        intake: CallbackIntake, pool: asyncpg.Pool) -> None:
    unknown = merchant("not-synced")  # no merchants row: the batch's INSERT fails (FK)
    results = await asyncio.gather(*(
        intake.submit(f"b-{i}", request(f"bad-{i}", f"8180{10_000_000 + i}"),
                      unknown if i == 2 else ACME)
        for i in range(5)), return_exceptions=True)
    assert isinstance(results[2], IntakeBroken) and results[2].status == 500
    good = [r for i, r in enumerate(results) if i != 2]
    assert all(not isinstance(r, BaseException) and r[1]["status"] == "queued" for r in good)
    assert intake.fallbacks == 1
    ids = {r[0] for r in await pool.fetch("SELECT edge_call_id FROM callback_requests")}
    assert ids == {"bad-0", "bad-1", "bad-3", "bad-4"}
    # nothing of the failed one was kept: its retry is a first delivery
    assert "b-2" not in await stored_answers(pool)
    assert await pool.fetchval("SELECT count(*) FROM guard_callbacks") == 4


async def test_without_the_guard_a_racing_edge_call_gets_the_stored_call_back(
        intake: CallbackIntake, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture) -> None:
    """No number locks: two servers store one edge call at once under two message ids;
    the one that loses the UNIQUE race answers (and remembers) the winner's call-back."""
    caplog.set_level(logging.INFO, "callback.store")
    one, two = (CallbackIntake(CallbackStore(pool, owner=o)) for o in ("a", "b"))
    req = request("edge-race", "819044445555")
    try:
        async with pool.acquire() as blocker, blocker.transaction():
            # reads pass, writes wait: both look for the edge call, find none, then queue up
            await blocker.execute("LOCK TABLE callback_requests IN EXCLUSIVE MODE")
            tasks = [asyncio.create_task(one.submit("race-1", req, ACME)),
                     asyncio.create_task(two.submit("race-2", req, ACME))]
            await asyncio.sleep(0.3)
            assert not any(t.done() for t in tasks)
        first, second = await asyncio.gather(*tasks)
    finally:
        await one.close()
        await two.close()
    assert first == second and first[1]["status"] == "queued"
    assert await pool.fetchval("SELECT count(*) FROM callback_requests") == 1
    assert await stored_answers(pool) == {"race-1": first[1], "race-2": first[1]}
    assert "edge calls edge-race already had call-backs" in caplog.text  # the race was lost


async def test_without_the_guard_a_message_stored_meanwhile_is_answered_as_a_repeat(
        intake: CallbackIntake, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture) -> None:
    """No number locks: a message id another server is storing is not visible when the
    batch reads; the batch's write then finds it, stores nothing of its own (rolled
    back), and the message is answered again alone, as a repeat with the first answer."""
    caplog.set_level(logging.INFO)
    store = CallbackStore(pool, owner="a")
    batcher = CallbackIntake(store)
    first = {"callback_id": "cb-theirs", "status": "queued"}
    try:
        async with pool.acquire() as other, other.transaction():
            await other.execute(
                "INSERT INTO inbound_messages (message_id, kind, response_status, response_body)"
                " VALUES ('m-both', 'callback_request', 202, $1)", first)
            tasks = [asyncio.create_task(batcher.submit(mid, request(edge, number), ACME))
                     for mid, edge, number in (("m-both", "edge-b1", "819055556666"),
                                               ("m-other", "edge-b2", "819055557777"))]
            await asyncio.sleep(0.3)
            assert not any(t.done() for t in tasks)  # waiting on the uncommitted message id
        mine, other_answer = await asyncio.gather(*tasks)
    finally:
        await batcher.close()
    assert mine == (202, first)
    assert other_answer[1]["status"] == "queued"
    assert await pool.fetchval("SELECT array_agg(edge_call_id) FROM callback_requests") == \
        ["edge-b2"]
    assert "message ids stored meanwhile: m-both" in caplog.text


async def test_a_batch_wakes_the_workers_once_with_its_earliest_due_time(
        intake: CallbackIntake, pool: asyncpg.Pool, pg_url: str) -> None:
    slow = replace(ACME, pre_callback_delay_s=Decimal("30"))
    now = datetime.now(UTC)
    reqs = [IntakeRequest(f"due-{i}", "acme", E164(f"8190{30_000_000 + i}"), None, now, now,
                          None) for i in range(4)]
    async with listening(pg_url, "callback_jobs") as queue:
        answers = await asyncio.gather(*(
            intake.submit(f"n-{i}", req, ACME if i == 2 else slow) for i, req in enumerate(reqs)))
        payload = await asyncio.wait_for(queue.get(), 5)
        await asyncio.sleep(0.3)
        assert queue.empty()  # one notification for the batch's one INSERT
    assert intake.batches == 1
    callback_id, due = payload.split()
    assert callback_id == answers[2][1]["callback_id"]  # the one due now, not in 30 s
    assert abs(float(due) - now.timestamp()) < 5
