"""The advisors store and its live adapter on a real PostgreSQL: the directory, presence
changes as event rows published by NOTIFY, the after-call timer, automatic break, and
concurrent assignments that never exceed an advisor's maximum or the merchant's lines."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from advisors.assignment import Assignment, LinesBusy, OfferTo, Phase, Queue
from advisors.errors import Duplicate, NotFound
from advisors.events import EventHub, since
from advisors.live import Presences
from advisors.metrics import ADVISORS_BY_STATE
from advisors.model import (
    AfterCallMode,
    Desk,
    PstnContact,
    Rules,
    SipContact,
    State,
    Via,
    WhenLinesBusy,
)
from advisors.presence import ConsultationEnded, GoOnline, SetBreak
from advisors.schemas import parse_advisor, parse_customer, parse_group
from advisors.store import AdvisorStore
from shared.http import InvalidField
from shared.metrics_http import POOL_GETTER_KEY
from shared.phone import E164
from shared.site import background
from tests.integration import advisors_db

pytestmark = pytest.mark.integration
pool, clean = advisors_db.fixtures()
T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def advisor(code: str, **extra: Any) -> dict[str, Any]:
    return {"display_name": f"星野 {code}", "code": code, "price_per_minute_yen": 300,
            "contact": {"kind": "pstn", "number": "090-1234-" + code}, **extra}


async def seat(store: AdvisorStore, merchant: str, code: str, **extra: Any) -> int:
    created, _ = await store.create_advisor(merchant, parse_advisor(advisor(code, **extra),
                                                                    create=True))
    return created.id


async def test_directory_create_change_list_and_merchant_isolation(
        clean: asyncpg.Pool) -> None:
    store = AdvisorStore(clean)
    a, p = await store.create_advisor("acme", parse_advisor(advisor(
        "0001", name_prompt="advisors/hoshino", max_concurrent=2), create=True))
    assert (a.display_name, a.code, a.max_concurrent, p.state) == (
        "星野 0001", "0001", 2, State.OFFLINE)
    assert a.contact == PstnContact(E164("819012340001"))
    group = await store.create_group("acme", parse_group({"name": "恋愛", "members": [a.id]},
                                                         create=True))
    assert group.members == (a.id,)
    a2, _ = await store.update_advisor("acme", a.id, parse_advisor(
        {"contact": {"kind": "sip", "user": "hoshino"}, "price_per_minute_yen": 400},
        create=False))
    assert a2.contact == SipContact("hoshino") and a2.price_per_minute_yen == 400
    assert a2.groups == (group.id,)
    customer = await store.create_customer("acme", parse_customer(
        {"account": "u-1", "numbers": ["09011112222", "+81311112222"]}, create=True))
    assert await store.customer_by_number("acme", E164("819011112222")) == customer
    assert [x.id for x, _ in await store.advisors("acme")] == [a.id]
    # another merchant sees none of it and may reuse the code
    assert await store.advisors("other") == []
    with pytest.raises(NotFound):
        await store.advisor("other", a.id)
    with pytest.raises(InvalidField) as bad:
        await store.create_group("other", parse_group({"name": "x", "members": [a.id]},
                                                      create=True))
    assert bad.value.fields["field"] == "members"
    await seat(store, "other", "0001")


async def test_duplicates_name_their_field(clean: asyncpg.Pool) -> None:
    store = AdvisorStore(clean)
    await seat(store, "acme", "0001")
    with pytest.raises(Duplicate) as dup:
        await seat(store, "acme", "0001")
    assert dup.value.fields["field"] == "code" and dup.value.status == 409
    await store.create_customer("acme", parse_customer({"account": "a", "numbers": ["0901"
                                                        "1112222"]}, create=True))
    with pytest.raises(Duplicate) as dup:
        await store.create_customer("acme", parse_customer(
            {"account": "b", "numbers": ["+819011112222"]}, create=True))
    assert dup.value.fields["field"] == "numbers"
    assert len(await store.customers("acme")) == 1   # the failed one left nothing behind


async def test_presence_changes_are_event_rows_published_to_subscribers(
        clean: asyncpg.Pool, pg_url: str) -> None:
    store, live = AdvisorStore(clean), Presences(clean)
    advisor_id = await seat(store, "acme", "0001")
    hub = EventHub(pg_url)
    async with background(hub.run(), "hub"):
        await asyncio.wait_for(hub.listening.wait(), 10)
        with hub.subscribe("acme") as events, hub.subscribe("other") as elsewhere:
            await live.apply("acme", advisor_id, GoOnline(T0, Via.API))
            published = await asyncio.wait_for(events.get(), 5)
            assert elsewhere.empty()
    assert published is not None
    got = published.event
    assert json.loads(published.text) == got
    assert (got["advisor_id"], got["event"], got["via"], got["before"], got["after"]) == (
        advisor_id, "online", "api", "offline", "standby")
    rows = await since(clean, "acme", 0)
    assert rows == [got] and rows[0]["at"] == T0.isoformat()
    # a change that changes nothing is no row
    await live.apply("acme", advisor_id, GoOnline(T0, Via.PHONE))
    assert len(await since(clean, "acme", 0)) == 1
    with pytest.raises(NotFound):
        await live.apply("other", advisor_id, SetBreak(T0, Via.API))


async def test_a_lost_listen_connection_closes_subscribers_and_listens_again(
        clean: asyncpg.Pool, pg_url: str) -> None:
    """Subscribers are closed (they replay by last id) and the hub listens again."""
    store, live = AdvisorStore(clean), Presences(clean)
    advisor_id = await seat(store, "acme", "0001")
    hub = EventHub(pg_url, reconnect_s=0.1)
    async with background(hub.run(), "hub"):
        await asyncio.wait_for(hub.listening.wait(), 10)
        with hub.subscribe("acme") as before:
            killed = await clean.fetchval(
                """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                   WHERE datname = current_database() AND query LIKE 'LISTEN%advisor_events%'""")
            assert killed == 1
            assert await asyncio.wait_for(before.get(), 5) is None
        await asyncio.wait_for(hub.listening.wait(), 10)
        with hub.subscribe("acme") as after:
            await live.apply("acme", advisor_id, GoOnline(T0, Via.API))
            published = await asyncio.wait_for(after.get(), 5)
            assert published is not None and published.event["event"] == "online"


async def test_after_call_timer_and_automatic_break(clean: asyncpg.Pool) -> None:
    store, clock = AdvisorStore(clean), Clock()
    live = Presences(clean, clock)
    await store.set_rules("acme", Rules(after_call=AfterCallMode.TIMER, wrap_up_s=10,
                                        misses_before_break=2))
    advisor_id = await seat(store, "acme", "0001")
    await live.apply("acme", advisor_id, GoOnline(T0, Via.API))
    members = await live.members("acme", code="0001")
    a, cmds = await live.assign("acme", Assignment("c1", members))
    assert cmds == [OfferTo(advisor_id, "c1")]
    a, _ = await live.answered("acme", a)
    assert a.phase is Phase.CONNECTED
    await live.apply("acme", advisor_id, ConsultationEnded(T0, "c1"))
    assert (await store.advisor("acme", advisor_id))[1].state is State.WRAP_UP
    clock.now = T0 + timedelta(seconds=9)
    assert await live.expire_wrap_ups() == 0
    clock.now = T0 + timedelta(seconds=10)
    assert await live.expire_wrap_ups() == 1
    assert (await store.advisor("acme", advisor_id))[1].state is State.STANDBY
    # two misses in a row: on break with the reason, and the customer back in the queue
    for cid in ("c2", "c3"):
        a, _ = await live.assign("acme", Assignment(cid, members))
        a, cmds = await live.ring_missed("acme", a)
        assert a.phase is Phase.QUEUED and isinstance(cmds[0], Queue)
    _, p = await store.advisor("acme", advisor_id)
    assert p.desk is Desk.BREAK and p.reason == "missed 2 calls in a row"
    events = [(e["event"], e["after"]) for e in await since(clean, "acme", 0)]
    assert events[-1] == ("ring_missed", "break")


def metrics_app(pool: asyncpg.Pool) -> web.Application:
    app = web.Application()
    app[POOL_GETTER_KEY] = lambda _: pool
    return app


async def concurrent_assignments(live: Presences, members: frozenset[int], n: int
                                 ) -> list[Any]:
    results = await asyncio.gather(*(live.assign("acme", Assignment(f"c{i}", members))
                                     for i in range(n)))
    return [c for _, cmds in results for c in cmds]


async def test_concurrent_assignments_never_exceed_maxima_or_lines(
        clean: asyncpg.Pool) -> None:
    store, live = AdvisorStore(clean), Presences(clean)
    await store.set_rules("acme", Rules(lines=100))
    ids = [await seat(store, "acme", f"000{i}", max_concurrent=m)
           for i, m in enumerate((1, 2, 1))]
    for advisor_id in ids:
        await live.apply("acme", advisor_id, GoOnline(T0, Via.API))
    cmds = await concurrent_assignments(live, frozenset(ids), 12)
    offers = [c for c in cmds if isinstance(c, OfferTo)]
    assert len(offers) == 4 and sum(isinstance(c, Queue) for c in cmds) == 8
    loads = {a.id: p.load for a, p in await store.advisors("acme")}
    assert loads == {ids[0]: 1, ids[1]: 2, ids[2]: 1}
    await live.answered("acme", Assignment("c0", frozenset(ids), Phase.OFFERING,
                                           next(o.advisor_id for o in offers
                                                if o.consultation_id == "c0")))
    metrics = {m.name: {tuple(x.labels.values()): x.value for x in m.samples}
               for m in await ADVISORS_BY_STATE.read(metrics_app(clean))}
    assert metrics["cbgw_advisors"][("acme", "talking")] == 1
    assert metrics["cbgw_advisors"][("acme", "ringing")] == 2
    assert metrics["cbgw_advisors"][("acme", "standby")] == 0
    assert metrics["cbgw_advisor_consultations"][("acme",)] == 4
    # the merchant's lines: 2 lines, 5 free advisors, 8 customers at once
    await clean.execute("TRUNCATE advisor_presence, advisors CASCADE")
    await store.set_rules("acme", Rules(lines=2))
    ids = [await seat(store, "acme", f"100{i}") for i in range(5)]
    for advisor_id in ids:
        await live.apply("acme", advisor_id, GoOnline(T0, Via.API))
    cmds = await concurrent_assignments(live, frozenset(ids), 8)
    assert sum(isinstance(c, OfferTo) for c in cmds) == 2
    assert sum(isinstance(c, LinesBusy) for c in cmds) == 6
    assert sum(p.load for _, p in await store.advisors("acme")) == 2


async def test_an_assignment_counts_but_does_not_lock_the_advisors_outside_the_group(
        clean: asyncpg.Pool) -> None:
    """The merchant's lines count every advisor's consultations; a presence change of an
    advisor outside the customer's group in progress does not hold the assignment up."""
    store, live = AdvisorStore(clean), Presences(clean)
    await store.set_rules("acme", Rules(lines=2))
    inside, outside = (await seat(store, "acme", "0001"), await seat(store, "acme", "0002"))
    for advisor_id in (inside, outside):
        await live.apply("acme", advisor_id, GoOnline(T0, Via.API))
    _, cmds = await live.assign("acme", Assignment("elsewhere", frozenset({outside})))
    assert cmds == [OfferTo(outside, "elsewhere")]
    async with clean.acquire() as conn, conn.transaction():
        await conn.execute("SELECT 1 FROM advisor_presence WHERE advisor_id = $1 FOR UPDATE",
                           outside)
        assigned = live.assign("acme", Assignment("c1", frozenset({inside})))
        a, cmds = await asyncio.wait_for(assigned, 5)
    assert cmds == [OfferTo(inside, "c1")]
    # both lines in use: one by the advisor outside the group
    _, cmds = await live.assign("acme", Assignment("c2", frozenset({inside})))
    assert cmds == [LinesBusy(2)]
    await live.cancelled("acme", a)
    _, cmds = await live.assign("acme", Assignment("c3", frozenset({inside})))
    assert cmds == [OfferTo(inside, "c3")]


async def test_the_queue_is_first_come_first_served_and_tells_each_their_place(
        clean: asyncpg.Pool) -> None:
    """One line in use, the merchant queues customers on busy lines: each new customer is
    queued behind those before them and told their place; when the line frees the first
    one queued gets the advisor even if a later one tries first; a customer not tried
    for a while (a dead process's) no longer counts."""
    clock = Clock()
    store, live = AdvisorStore(clean), Presences(clean, clock)
    await store.set_rules("acme", Rules(lines=1, lines_busy=WhenLinesBusy.QUEUE))
    advisor_id = await seat(store, "acme", "0001")
    await live.apply("acme", advisor_id, GoOnline(T0, Via.API))
    members = frozenset({advisor_id})
    talking, cmds = await live.assign("acme", Assignment("c0", members))
    assert cmds == [OfferTo(advisor_id, "c0")]
    waiting = {}
    for n, cid in enumerate(("c1", "c2", "c3"), start=1):
        clock.now = T0 + timedelta(seconds=n)
        waiting[cid], cmds = await live.assign("acme", Assignment(cid, members))
        assert cmds == [Queue("all 1 lines busy" if n == 1 else f"{n - 1} waiting longer", n)]
    clock.now = T0 + timedelta(seconds=4)
    _, cmds = await live.assign("acme", waiting["c2"])          # tried again: still 2nd
    assert [c.position for c in cmds if isinstance(c, Queue)] == [2]
    await live.cancelled("acme", talking)                      # the line frees
    _, cmds = await live.assign("acme", waiting["c3"])          # c3 tries first: waits
    assert cmds == [Queue("2 waiting longer", 3)]
    waiting["c1"], cmds = await live.assign("acme", waiting["c1"])
    assert cmds == [OfferTo(advisor_id, "c1")]
    _, cmds = await live.assign("acme", waiting["c3"])          # c1 left the queue
    assert [c.position for c in cmds if isinstance(c, Queue)] == [2]
    assert [r["consultation_id"] for r in await clean.fetch(
        "SELECT consultation_id FROM advisor_queue ORDER BY queued_at")] == ["c2", "c3"]
    clock.now = T0 + timedelta(seconds=60)                      # c2's process died
    _, cmds = await live.assign("acme", waiting["c3"])
    assert [c.position for c in cmds if isinstance(c, Queue)] == [1]
    # the guidance instead of the queue when the merchant says so
    await store.set_rules("acme", Rules(lines=1))
    _, cmds = await live.assign("acme", Assignment("c4", members))
    assert cmds == [LinesBusy(1)]


async def test_customers_of_two_groups_waiting_for_a_line_count_each_other(
        clean: asyncpg.Pool) -> None:
    """The merchant's one line in use by a third advisor, each group's advisor in
    standby: the customers of both groups wait for the line, so the second one queued
    (of the other group) is told place 2, and when the line frees it goes to the first
    one queued even if the second tries first; the second is then first."""
    clock = Clock()
    store, live = AdvisorStore(clean), Presences(clean, clock)
    await store.set_rules("acme", Rules(lines=1, lines_busy=WhenLinesBusy.QUEUE))
    first, second, third = [await seat(store, "acme", code)
                            for code in ("0001", "0002", "0003")]
    for advisor_id in (first, second, third):
        await live.apply("acme", advisor_id, GoOnline(T0, Via.API))
    talking, cmds = await live.assign("acme", Assignment("c0", frozenset({third})))
    assert cmds == [OfferTo(third, "c0")]
    clock.now = T0 + timedelta(seconds=1)
    a, cmds = await live.assign("acme", Assignment("c1", frozenset({first})))
    assert cmds == [Queue("all 1 lines busy", 1)]
    clock.now = T0 + timedelta(seconds=2)
    b, cmds = await live.assign("acme", Assignment("c2", frozenset({second})))
    assert cmds == [Queue("1 waiting longer", 2)]
    await live.cancelled("acme", talking)                      # the line frees
    b, cmds = await live.assign("acme", b)                      # c2 tries first: waits
    assert cmds == [Queue("1 waiting longer", 2)]
    a, cmds = await live.assign("acme", a)
    assert cmds == [OfferTo(first, "c1")]
    await live.cancelled("acme", a)                             # and frees it again
    _, cmds = await live.assign("acme", b)
    assert cmds == [OfferTo(second, "c2")]
