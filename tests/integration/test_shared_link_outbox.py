"""The outbox relay under trouble: receiver down then up, lost acks, two relays, dead letters.

Effects are counted in a table without a unique constraint (see
:mod:`tests.faults.linklab`), so a message applied twice would be seen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest
from aiohttp import web

from shared.link_policy import HealthSettings, KindPolicy, LinkMode, LinkPolicy
from shared.outbox import (
    _CLAIM_SETTLING,
    SETTLE_WITHIN_S,
    Outbox,
    OutboxAlert,
    OutboxRelay,
    outbox_stats,
)
from tests import prom
from tests.faults.linklab import (
    BATCHES_KEY,
    REQUESTS_KEY,
    effect_counts,
    empty_link_pool,
    free_port,
    link_client,
    receiver_app,
    serve,
    verifier,
)
from tests.faults.proxy import DelayProxy
from tests.harness.json_log import json_log
from tests.integration.statements import counted_pool

NO_PROBES = LinkPolicy(health=HealthSettings(interval_s=0))
TEST_PATH = "/v1/link/test"


@pytest.fixture
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with empty_link_pool(pg_url, max_size=20) as p:
        yield p


async def _enqueue(pool: asyncpg.Pool, count: int, start: int = 0) -> list[str]:
    async with pool.acquire() as conn, conn.transaction():
        return [await Outbox.enqueue(conn, kind="test", path="/v1/link/test",
                                     payload={"n": start + i}) for i in range(count)]


async def _drained(pool: asyncpg.Pool, within_s: float) -> float:
    started = time.monotonic()
    while await pool.fetchval("SELECT count(*) FROM outbox WHERE delivered_at IS NULL "
                              "AND dead_at IS NULL"):
        assert time.monotonic() - started < within_s, "outbox did not drain"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_receiver_down_then_up_loses_nothing_and_alerts_meanwhile(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path) -> None:
    port = free_port()
    alerts: list[OutboxAlert] = []
    client = link_client(pki_dir, [("r", f"https://127.0.0.1:{port}")], policy=NO_PROBES)
    relay = OutboxRelay(pool, pg_url, client, owner="down-up", sweep_s=0.2, max_backoff_s=1,
                        alert_after_s=1, alert_every_s=0.5, on_alert=alerts.append)
    task = asyncio.create_task(relay.run())
    try:
        await _enqueue(pool, 200)
        # receiver down: nothing delivered, every message retried with backoff, an alert
        # once the oldest is older than alert_after_s (polled: a loaded VM is slower)
        started = time.monotonic()
        while (time.monotonic() - started < 2.0 or not alerts
               or await pool.fetchval("SELECT min(attempts) FROM outbox") < 2):
            assert time.monotonic() - started < 20, "not retried or no alert while down"
            await asyncio.sleep(0.1)
        stats = await relay.stats()
        assert stats.pending == 200 and stats.oldest_pending_s is not None
        assert stats.oldest_pending_s > 1.0
        assert alerts and alerts[-1].reason == "pending-too-old"
        assert "200 messages pending" in alerts[-1].message
        assert await pool.fetchval("SELECT min(attempts) FROM outbox") >= 2
        runner = await serve(receiver_app(pool, verifier(pki_dir)), pki_dir, port)
        try:
            drain_s = await _drained(pool, 10.0)
        finally:
            await runner.cleanup()
        distinct, duplicated = await effect_counts(pool)
        assert (distinct, duplicated) == (200, 0)
        assert (await relay.stats()).pending == 0
        assert await relay.check_alert(force=True) is None
        print(f"\nreceiver down 2 s with 200 messages: drained {drain_s:.2f} s after it came up")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()


@pytest.mark.parametrize("batched", [False, True], ids=["alone", "batches"])
async def test_lost_acknowledgements_cause_retries_but_no_duplicate_effects(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path, batched: bool) -> None:
    """The proxy cuts connections repeatedly; some requests were applied but never answered
    (single messages, or batches of up to 16 whose answer is lost as a whole)."""
    app = receiver_app(pool, verifier(pki_dir), answer_delay_s=0.2)
    port = free_port()
    runner = await serve(app, pki_dir, port)
    proxy = await DelayProxy(("127.0.0.1", 0), ("127.0.0.1", port), delay_s=0.03).start()
    client = link_client(pki_dir, [("r", f"https://127.0.0.1:{proxy.port}")], policy=NO_PROBES,
                         timeout_s=2.0)
    relay = OutboxRelay(pool, pg_url, client, owner="cuts", sweep_s=0.2, max_backoff_s=1,
                        batch_paths=[TEST_PATH] if batched else (), batch_messages=16)
    task = asyncio.create_task(relay.run())
    try:
        await _enqueue(pool, 300)
        deadline = time.monotonic() + 10
        requests = app[REQUESTS_KEY]
        cuts, seen = 0, 0
        while cuts < 5 and time.monotonic() < deadline:
            # cut while requests are applied but not yet answered (answer_delay_s)
            if sum(requests.values()) > seen:
                await asyncio.sleep(0.05)
                seen = sum(requests.values())
                cuts += proxy.cut() > 0
            await asyncio.sleep(0.02)
        await _drained(pool, 20.0)
        distinct, duplicated = await effect_counts(pool)
        repeated = sum(1 for c in requests.values() if c > 1)
        print(f"\n300 messages, {cuts} cuts: {sum(requests.values())} verified POSTs, "
              f"{repeated} messages received more than once, {duplicated} applied twice")
        assert (distinct, duplicated) == (300, 0)
        assert repeated > 0  # acknowledgements really were lost
        assert (sum(app[BATCHES_KEY].values()) > 0) == batched
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
        await proxy.close()
        await runner.cleanup()


async def test_two_relays_on_one_database_deliver_each_message_once(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path) -> None:
    app = receiver_app(pool, verifier(pki_dir))
    port = free_port()
    runner = await serve(app, pki_dir, port)
    url = f"https://127.0.0.1:{port}"
    clients = [link_client(pki_dir, [("r", url)], policy=NO_PROBES) for _ in range(2)]
    relays = [OutboxRelay(pool, pg_url, c, owner=f"relay-{i}", sweep_s=0.2, batch=16)
              for i, c in enumerate(clients)]
    tasks = [asyncio.create_task(r.run()) for r in relays]
    try:
        for start in range(0, 600, 100):  # arriving over time, as in production
            await _enqueue(pool, 100, start)
            await asyncio.sleep(0.05)
        await _drained(pool, 20.0)
        distinct, duplicated = await effect_counts(pool)
        requests = app[REQUESTS_KEY]
        shares = [r.delivered for r in relays]
        print(f"\ntwo relays delivered {shares}; max POSTs per message "
              f"{max(requests.values())}")
        assert (distinct, duplicated) == (600, 0)
        assert sum(shares) == 600  # each message claimed and delivered by exactly one relay
        assert max(requests.values()) == 1  # SKIP LOCKED: never sent by both
        assert all(share > 0 for share in shares)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            await c.close()
        await runner.cleanup()


async def test_refused_message_is_dead_lettered_visible_and_revivable(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path) -> None:
    port = free_port()
    runner = await serve(receiver_app(pool, verifier(pki_dir)), pki_dir, port)
    client = link_client(pki_dir, [("r", f"https://127.0.0.1:{port}")], policy=NO_PROBES)
    alerts: list[OutboxAlert] = []
    relay = OutboxRelay(pool, pg_url, client, owner="dead", sweep_s=0.2,
                        on_alert=alerts.append)
    try:
        async with pool.acquire() as conn, conn.transaction():
            bad = await Outbox.enqueue(conn, kind="test", path="/v1/link/test",
                                       payload={"n": -1})
            good = await Outbox.enqueue(conn, kind="test", path="/v1/link/test",
                                        payload={"n": 1})
        await relay.pass_once()
        stats = await relay.stats()
        assert (stats.pending, stats.dead) == (0, 1)
        alert = await relay.check_alert(force=True)
        assert alert is not None and alert.reason == "dead-letters" and alerts[-1] == alert
        async with pool.acquire() as conn:
            dead = await Outbox.dead_letters(conn)
            assert [d.message_id for d in dead] == [bad]
            assert dead[0].status == 422 and dead[0].response["error"]["id"] == "invalid-field"
            assert await Outbox.revive(conn, bad)
            assert not await Outbox.revive(conn, good)  # delivered, not dead
        assert (await relay.stats()).pending == 1
        await relay.pass_once()
        assert (await relay.stats()).dead == 1  # refused again: still visible
    finally:
        await client.close()
        await runner.cleanup()


@asynccontextmanager
async def batching_relay(pool: asyncpg.Pool, pg_url: str, pki_dir: Path, *, batches: bool,
                         policy: LinkPolicy = NO_PROBES
                         ) -> AsyncIterator[tuple[web.Application, OutboxRelay]]:
    """A receiver (with the batch route or without) and a relay batching ``TEST_PATH`` by 16."""
    app = receiver_app(pool, verifier(pki_dir), batches=batches)
    port = free_port()
    runner = await serve(app, pki_dir, port)
    client = link_client(pki_dir, [("r", f"https://127.0.0.1:{port}")], policy=policy)
    try:
        yield app, OutboxRelay(pool, pg_url, client, owner="batches", sweep_s=0.2,
                               batch_paths=[TEST_PATH], batch_messages=16)
    finally:
        await client.close()
        await runner.cleanup()


async def test_a_backlog_goes_in_batches_and_each_message_is_settled_on_its_own(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path) -> None:
    async with batching_relay(pool, pg_url, pki_dir, batches=True) as (app, relay):
        async with pool.acquire() as conn, conn.transaction():
            good = [await Outbox.enqueue(conn, kind="test", path=TEST_PATH, payload={"n": i})
                    for i in range(98)]
            bad = [await Outbox.enqueue(conn, kind="test", path=TEST_PATH,
                                        payload={"n": -i - 1}) for i in range(2)]
            other = await Outbox.enqueue(conn, kind="test", path="/v1/link/other",
                                         payload={"n": 1000})  # no batch route: alone
        while await relay.pass_once():
            pass
        sizes = app[BATCHES_KEY]
        assert sum(size * count for size, count in sizes.items()) == 100
        assert max(sizes) == 16 and relay.batches_sent == sum(sizes.values())
        assert await effect_counts(pool) == (99, 0)
        assert relay.delivered == 99 and relay.delivered_by_route == {"r": 99}
        rows = await pool.fetch("SELECT message_id::text AS id, response_status, response_body, "
                                "last_route, dead_at IS NOT NULL AS dead, attempts FROM outbox")
        by_id = {r["id"]: r for r in rows}
        assert {by_id[m]["response_status"] for m in good + [other]} == {202}
        assert by_id[good[5]]["response_body"] == {"accepted": 5}
        assert {by_id[m]["last_route"] for m in good} == {"r"}
        assert all(by_id[m]["dead"] and by_id[m]["response_status"] == 422 for m in bad)
        assert {r["attempts"] for r in rows} == {1}


async def test_a_peer_without_the_batch_route_gets_every_message_alone(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path) -> None:
    async with batching_relay(pool, pg_url, pki_dir, batches=False) as (app, relay):
        await _enqueue(pool, 40)
        while await relay.pass_once():
            pass
        assert await effect_counts(pool) == (40, 0)
        assert relay.batches_sent == 0 and relay.delivered == 40
        assert (await relay.stats()).dead == 0
        assert sum(app[REQUESTS_KEY].values()) == 40


async def _enqueue_kinds(pool: asyncpg.Pool, kinds: list[str]) -> list[str]:
    """A message of each of ``kinds`` to ``TEST_PATH``, in that order."""
    async with pool.acquire() as conn, conn.transaction():
        return [await Outbox.enqueue(conn, kind=kind, path=TEST_PATH, payload={"n": i})
                for i, kind in enumerate(kinds)]


async def test_a_pass_s_messages_go_in_one_request_whatever_their_kinds(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path) -> None:
    """Kinds with the same link policy (here all: the default) share a pass's batch: one
    signed request for 12 messages of 4 kinds, each settled on its own."""
    kinds = ["cdr", "callback_status", "request_info", "billing"] * 3
    async with batching_relay(pool, pg_url, pki_dir, batches=True) as (app, relay):
        mids = await _enqueue_kinds(pool, kinds)
        assert await relay.pass_once() == 12
        assert app[BATCHES_KEY] == {12: 1} and relay.batches_sent == 1
        assert await effect_counts(pool) == (12, 0)
        rows = await pool.fetch("SELECT message_id::text AS id, kind, response_body FROM outbox "
                                "WHERE delivered_at IS NOT NULL")
        assert {r["id"]: r["kind"] for r in rows} == dict(zip(mids, kinds, strict=True))
        assert {r["response_body"]["accepted"] for r in rows} == set(range(12))


async def test_kinds_that_travel_differently_go_in_a_request_each(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path) -> None:
    """A kind sent on ``both`` routes does not ride in the batch of the kinds sent
    ``primary_backup``: two requests for the pass, one a policy."""
    policy = LinkPolicy(kinds={"cdr": KindPolicy(LinkMode.BOTH)},
                        health=HealthSettings(interval_s=0))
    kinds = ["cdr", "callback_status", "request_info", "cdr", "callback_status"]
    async with batching_relay(pool, pg_url, pki_dir, batches=True, policy=policy) \
            as (app, relay):
        await _enqueue_kinds(pool, kinds)
        assert await relay.pass_once() == 5
        assert app[BATCHES_KEY] == {2: 1, 3: 1} and relay.batches_sent == 2
        assert await effect_counts(pool) == (5, 0)


async def test_a_peer_without_the_batch_route_gets_a_mixed_pass_one_by_one(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path) -> None:
    """A peer of the previous version (no batch route: 404) gets each message of a mixed
    pass on its own, once, and the relay sends it no batch for a while."""
    kinds = ["cdr", "callback_status", "request_info"] * 4
    async with batching_relay(pool, pg_url, pki_dir, batches=False) as (app, relay):
        await _enqueue_kinds(pool, kinds)
        assert await relay.pass_once() == 12
        assert await effect_counts(pool) == (12, 0)
        assert relay.batches_sent == 0 and relay.delivered == 12
        assert sorted(app[REQUESTS_KEY].values()) == [1] * 12
        await _enqueue_kinds(pool, kinds[:3])
        assert await relay.pass_once() == 3     # alone at once: no batch tried again
        assert sum(app[REQUESTS_KEY].values()) == 15 and relay.delivered == 15
        assert (await relay.stats()).dead == 0


@pytest.mark.parametrize("passes", [1, 4])
async def test_a_backlog_over_a_slow_link_keeps_several_claims_in_flight(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path, passes: int) -> None:
    """Each claim's answers take a round trip (0.3 s here); with ``passes_in_flight`` > 1
    the next claims go out meanwhile, never more than that many, each message once."""
    app = receiver_app(pool, verifier(pki_dir), answer_delay_s=0.3)
    in_flight = {"now": 0, "most": 0}

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        in_flight["now"] += 1
        in_flight["most"] = max(in_flight["most"], in_flight["now"])
        try:
            return cast(web.StreamResponse, await handler(request))
        finally:
            in_flight["now"] -= 1

    app.middlewares.insert(0, count)
    port = free_port()
    runner = await serve(app, pki_dir, port)
    client = link_client(pki_dir, [("r", f"https://127.0.0.1:{port}")], policy=NO_PROBES)
    # a claim of 16 goes out as 2 batch requests of 8
    relay = OutboxRelay(pool, pg_url, client, owner=f"window-{passes}", sweep_s=0.2, batch=16,
                        batch_paths=[TEST_PATH], batch_messages=8, passes_in_flight=passes)
    task = asyncio.create_task(relay.run())
    try:
        await _enqueue(pool, 256)
        drain_s = await _drained(pool, 30.0)
        assert await effect_counts(pool) == (256, 0)
        assert max(app[REQUESTS_KEY].values()) == 1  # no message sent twice
        assert relay.batches_sent == 32
        if passes == 1:
            assert in_flight["most"] == 2  # one claim's requests, then its answers
        else:
            assert 2 < in_flight["most"] <= 2 * passes
        print(f"\n{passes} claim(s) in flight: at most {in_flight['most']} requests at once, "
              f"256 messages in {drain_s:.1f} s")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
        await runner.cleanup()


class _LosesTheDatabaseOnce(OutboxRelay):
    """A relay whose second claim finds the database gone (as in a PostgreSQL restart)."""

    claims = 0

    async def _claim(self) -> list[asyncpg.Record]:
        self.claims += 1
        if self.claims == 2:
            raise asyncpg.InterfaceError("connection lost (injected)")
        return await super()._claim()


async def test_a_pass_under_way_when_the_database_is_lost_wakes_the_new_loop(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path) -> None:
    """The relay reconnects while a pass is still waiting for its answer (503 after 2 s).
    When it ends, the loop that replaced the lost one wakes and retries the message when
    its backoff (≈ 1 s) is up, not when the 30 s sweep comes round."""
    app = receiver_app(pool, verifier(pki_dir))
    posts = 0

    @web.middleware
    async def first_slow_then_unavailable(request: web.Request, handler: Any
                                          ) -> web.StreamResponse:
        nonlocal posts
        posts += 1
        if posts == 1:
            await asyncio.sleep(2.0)
            return web.json_response({"error": {"id": "unavailable", "message": "later"}},
                                     status=503)
        return cast(web.StreamResponse, await handler(request))

    app.middlewares.insert(0, first_slow_then_unavailable)
    port = free_port()
    runner = await serve(app, pki_dir, port)
    client = link_client(pki_dir, [("r", f"https://127.0.0.1:{port}")], policy=NO_PROBES)
    relay = _LosesTheDatabaseOnce(pool, pg_url, client, owner="reconnects", sweep_s=30.0)
    task = asyncio.create_task(relay.run())
    try:
        await _enqueue(pool, 1)
        started = time.monotonic()
        while posts == 0:  # the first claim's pass is under way
            assert time.monotonic() - started < 10, "the relay never sent the message"
            await asyncio.sleep(0.02)
        await pool.execute("SELECT pg_notify('outbox', 'wake')")  # the next claim fails
        drain_s = await _drained(pool, 10.0)
        assert relay.claims > 2 and posts == 2
        assert await effect_counts(pool) == (1, 0)
        assert 2.5 < drain_s < 10.0  # the 503 after 2 s, a backoff of ≈ 1 s; not 30 s
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
        await runner.cleanup()


async def test_a_busy_peer_s_retry_after_is_honoured_by_the_whole_relay(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path) -> None:
    """The peer sheds load: 503 with Retry-After 3. The message is not sent again, and no
    other message is sent either, before the 3 s are up; then both go, once each."""
    app = receiver_app(pool, verifier(pki_dir))
    posted: list[float] = []

    @web.middleware
    async def busy_once(request: web.Request, handler: Any) -> web.StreamResponse:
        posted.append(time.monotonic())
        if len(posted) == 1:
            return web.json_response({"error": {"id": "overloaded", "message": "later"}},
                                     status=503, headers={"Retry-After": "3"})
        return cast(web.StreamResponse, await handler(request))

    app.middlewares.insert(0, busy_once)
    port = free_port()
    runner = await serve(app, pki_dir, port)
    client = link_client(pki_dir, [("r", f"https://127.0.0.1:{port}")], policy=NO_PROBES)
    relay = OutboxRelay(pool, pg_url, client, owner="busy", sweep_s=0.2, max_backoff_s=60)
    busy_before = prom.sample("cbgw_link_requests_total", route="r", result="busy")
    task = asyncio.create_task(relay.run())
    try:
        await _enqueue(pool, 1)
        started = time.monotonic()
        while not posted:
            assert time.monotonic() - started < 10, "the relay never sent the message"
            await asyncio.sleep(0.02)
        await _enqueue(pool, 1, start=1)            # due now, but the peer asked to wait
        await _drained(pool, 20.0)
        assert len(posted) == 3 and min(posted[1:]) - posted[0] >= 2.9, posted
        assert await effect_counts(pool) == (2, 0)
        assert prom.sample("cbgw_link_requests_total", route="r",
                           result="busy") - busy_before == 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
        await runner.cleanup()


async def test_purge_delivered_keeps_a_day(pool: asyncpg.Pool) -> None:
    ids = await _enqueue(pool, 3)
    await pool.execute("UPDATE outbox SET delivered_at = now() - interval '2 days' "
                       "WHERE message_id = $1::uuid", ids[0])
    await pool.execute("UPDATE outbox SET delivered_at = now() - interval '23 hours' "
                       "WHERE message_id = $1::uuid", ids[1])
    async with pool.acquire() as conn:
        assert await Outbox.purge_delivered(conn, keep_s=0) == 1
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 2


async def test_lines_about_a_message_name_it_its_merchant_and_its_call(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path) -> None:
    """The relay's lines about one message (a failed delivery, a refusal) carry its id as
    the request id, its merchant and its payload's ``edge_call_id``, not in the text."""
    port = free_port()
    client = link_client(pki_dir, [("r", f"https://127.0.0.1:{port}")], policy=NO_PROBES)
    relay = OutboxRelay(pool, pg_url, client, owner="logs", sweep_s=0.2)
    runner = None
    try:
        with json_log("shared.outbox", logging.WARNING) as logged:
            async with pool.acquire() as conn, conn.transaction():
                mid = await Outbox.enqueue(
                    conn, kind="test", path=TEST_PATH, merchant_id="acme",
                    payload={"n": -1, "edge_call_id": "edge-1700000000.9"})
            await relay.pass_once()                       # nobody listens yet: retried
            runner = await serve(receiver_app(pool, verifier(pki_dir)), pki_dir, port)
            await pool.execute("UPDATE outbox SET next_attempt_at = now()")
            await relay.pass_once()                       # refused as invalid: dead
            assert (await relay.stats()).dead == 1
    finally:
        await client.close()
        if runner is not None:
            await runner.cleanup()
    lines = logged()
    about = {line["level"]: line for line in lines if "message" in line["message"]}
    assert set(about) == {"WARNING", "ERROR"}, lines
    for line in about.values():
        assert (line["request_id"], line["merchant"], line["call_id"]) == \
            (mid, "acme", "edge-1700000000.9")
        assert mid not in line["message"]


async def test_a_message_delivered_alone_costs_the_sender_two_statements(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path) -> None:
    """What the relay asks of its database for each message of a quiet link: the claim
    (which also says when the next one is due) and the delivered mark; a pass that
    delivered everything does not wake the loop to claim nothing and ask again."""
    port = free_port()
    runner = await serve(receiver_app(pool, verifier(pki_dir)), pki_dir, port)
    client = link_client(pki_dir, [("r", f"https://127.0.0.1:{port}")], policy=NO_PROBES)
    async with counted_pool(pg_url) as (counted, statements):
        relay = OutboxRelay(counted, pg_url, client, owner="quiet", sweep_s=30.0)
        task = asyncio.create_task(relay.run())
        try:
            await _enqueue(pool, 1)             # the statements learn their types
            await _drained(pool, 10.0)
            await asyncio.sleep(0.3)
            statements.clear()
            for n in range(1, 4):
                await _enqueue(pool, 1, n)
                await _drained(pool, 10.0)
                await asyncio.sleep(0.3)        # what the loop does after the pass
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.close()
            await runner.cleanup()
    assert relay.delivered == 4
    assert len(statements.queries) == 3 * 2, str(statements)
    assert statements.transactions == 3 * 2


async def test_a_busy_link_s_delivered_marks_ride_on_the_next_claim(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path) -> None:
    """Messages written one after another, each as soon as the peer applied the one before
    (well within ``SETTLE_WITHIN_S``): each claim also marks the message acknowledged
    before it delivered, in its one statement, so the relay asks its database about once a
    message instead of twice; the last mark goes alone once ``SETTLE_WITHIN_S`` is up.
    Every message is applied once and ends marked delivered with the peer's answer."""
    port = free_port()
    runner = await serve(receiver_app(pool, verifier(pki_dir)), pki_dir, port)
    client = link_client(pki_dir, [("r", f"https://127.0.0.1:{port}")], policy=NO_PROBES)
    async with counted_pool(pg_url) as (counted, statements):
        relay = OutboxRelay(counted, pg_url, client, owner="busy", sweep_s=30.0)
        task = asyncio.create_task(relay.run())
        try:
            await _enqueue(pool, 1)             # the statements learn their types
            await _drained(pool, 10.0)
            await asyncio.sleep(SETTLE_WITHIN_S + 0.1)
            statements.clear()
            for n in range(1, 6):
                await _enqueue(pool, 1, n)
                started = time.monotonic()
                while (await effect_counts(pool))[0] < n + 1:
                    assert time.monotonic() - started < 10.0, "not applied"
                    await asyncio.sleep(0.01)
            await _drained(pool, 10.0)
            await asyncio.sleep(0.3)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.close()
            await runner.cleanup()
    assert relay.delivered == 6
    assert await effect_counts(pool) == (6, 0)
    with_claims = [q for q in statements.queries if "settled AS" in q]
    assert len(with_claims) >= 3, str(statements)       # most marks rode on a claim
    assert len(statements.queries) <= 5 + 2, str(statements)   # not 2 a message
    assert statements.transactions == len(statements.queries)
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE delivered_at IS NULL "
                               "OR response_status IS NULL OR last_route <> 'r' "
                               "OR lease_owner IS NOT NULL") == 0


async def test_the_outbox_s_figures_are_one_statement(pool: asyncpg.Pool, pg_url: str) -> None:
    """Every scrape of /metrics asks for them."""
    await _enqueue(pool, 2)
    async with pool.acquire() as conn:
        await Outbox.enqueue(conn, kind="test", path=TEST_PATH, payload={"n": 9}, held=True)
    async with counted_pool(pg_url) as (counted, statements):
        stats = await outbox_stats(counted)
    assert (stats.pending, stats.held, stats.dead, stats.oldest_pending_kind) == (2, 1, 0, "test")
    assert stats.oldest_pending_s is not None and stats.oldest_pending_s >= 0
    assert len(statements.queries) == 1, str(statements)


async def test_a_claim_that_could_not_go_is_put_back_in_one_statement_a_batch(
        pool: asyncpg.Pool, pg_url: str, pki_dir: Path) -> None:
    """The peer down: a claim of 40 (three batch requests of up to 16) is put back with one
    statement a batch request, each message with its backoff and error, not one a
    message (which took as many connections at once as the pool had)."""
    client = link_client(pki_dir, [("r", f"https://127.0.0.1:{free_port()}")],
                         policy=NO_PROBES)
    await _enqueue(pool, 40)
    try:
        async with counted_pool(pg_url) as (counted, statements):
            relay = OutboxRelay(counted, pg_url, client, owner="put-back",
                                batch_paths=[TEST_PATH], batch_messages=16)
            assert await relay.pass_once() == 40
        put_back = [q for q in statements.queries if "next_attempt_at = now() +" in q]
        assert len(put_back) == 3, str(statements)
        rows = await pool.fetch("SELECT next_attempt_at > now() AS later, last_error, "
                                "lease_owner, attempts, delivered_at FROM outbox")
        assert len(rows) == 40
        assert all(r["later"] and r["last_error"] and r["lease_owner"] is None
                   and r["attempts"] == 1 and r["delivered_at"] is None for r in rows)
    finally:
        await client.close()


async def test_the_claim_with_delivered_marks_runs_its_generic_plan_after_five(
        pool: asyncpg.Pool, pg_url: str) -> None:
    """The relay's claim that also writes the delivered marks, on a new connection: its
    arrays are read through sub-selects, so after the plan cache's five custom plans it
    runs its generic plan instead of being planned again for every claim (an array
    parameter's length, seen by the custom plans, made each of them look cheaper, once
    the outbox holds the delivered messages of a while)."""
    await pool.execute("INSERT INTO outbox (message_id, kind, path, body, delivered_at) "
                       "SELECT gen_random_uuid(), 'test', $1, '\\x00', now() "
                       "FROM generate_series(1, 2000)", TEST_PATH)
    await pool.execute("ANALYZE outbox")
    await _enqueue(pool, 1)
    async with counted_pool(pg_url) as (fresh, _), fresh.acquire() as conn:
        marks: list[Any] = []
        for _ in range(8):
            rows = await conn.fetch(_CLAIM_SETTLING, "plans", 30, 64, *(marks or [[]] * 4))
            claimed = [r["message_id"] for r in rows if r["message_id"] is not None]
            marks = [claimed, [200] * len(claimed), [{"status": "stored"}] * len(claimed),
                     ["r"] * len(claimed)]
            await _enqueue(pool, 1)
        plans = await conn.fetchrow(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE 'WITH settled AS%'")
    assert plans is not None and tuple(plans) == (3, 5), dict(plans or {})
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE delivered_at IS NOT NULL "
                               "AND response_status = 200 AND last_route = 'r'") == 7
    await pool.execute("DELETE FROM outbox")
