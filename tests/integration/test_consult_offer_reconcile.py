"""A consultation a killed server left ringing an advisor, or with its customer queued,
ended by the restart's reconciler (``ConsultReconciler``; Asterisk faked in process, its
legs gone with the server) against a real PostgreSQL: the presence and the queue
(``advisors.live.Presences`` through ``AdvisorDesk``), the record, the prepaid ledger.
The ring is withdrawn (standby again, no miss), the customer taken out of the queue, a
record with no talk written and the reservation released, once, even when a restart's
reconcile and another worker's rescue end it at the same time."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

import callback_server
from advisors import assignment as am
from advisors import presence as pm
from advisors.live import Presences
from advisors.model import PstnContact, State, Via
from advisors.record_store import ConsultationRecords
from advisors.records import ConsultationRecord, EndReason, RingOutcome
from advisors.schemas import AdvisorInput, CustomerInput
from advisors.store import AdvisorStore
from billing import records
from billing.ledger import Balance, Ledger, Reservation
from billing.settings import BillingSettings
from callback_server import consult
from callback_server.advisor_desk import AdvisorDesk
from callback_server.consult import Begin, Op
from callback_server.consult_billing import ConsultBilling
from callback_server.consult_live import ConsultReconciler, LiveConsultations
from callback_server.consult_recovery import live
from callback_server.legrecord import LegRecords
from callback_server.reconcile import LegSettler
from callback_server.routing import Routing
from callback_server.store import CallbackStore
from callback_server.testing import FakeAri, FixedRater
from shared.db import package_migrations
from shared.phone import E164
from tests.integration import advisors_db, billing_db
from tests.unit.test_callback_consult import CID, Call, at, make_desk
from tests.unit.test_callback_consult_recovery import snapshot

pytestmark = pytest.mark.integration

pool, clean = advisors_db.fixtures(billing_db.migrations(), records.MIGRATIONS,
                                   package_migrations("callback", callback_server.__file__))

NUMBER = E164("819012345678")        # the customer of the unit tests' records


@pytest.fixture
async def db(clean: asyncpg.Pool) -> asyncpg.Pool:
    """Advisors 1 and 2 of acme in standby (ids as the pure tests' desk numbers them),
    the customer member-42 at ``NUMBER`` with 500 yen."""
    await billing_db.truncate(clean, "consult_live", "billing_policies", "billing_records",
                              "billing_customer_legs", "billing_records_awaiting", "outbox")
    await clean.execute("TRUNCATE advisors RESTART IDENTITY CASCADE")
    store = AdvisorStore(clean)
    for n in (1, 2):
        created, _ = await store.create_advisor("acme", AdvisorInput(
            display_name=f"advisor {n}", code=f"{n:04d}",
            contact=PstnContact(E164(f"8131234000{n}")), price_per_minute_yen=100))
        assert created.id == n
        await Presences(clean).apply("acme", n, pm.GoOnline(at(-60), Via.API))
    await store.create_customer("acme", CustomerInput(account="member-42", name="Sato",
                                                      numbers=(NUMBER,)))
    await Ledger(clean).deposit("acme", "member-42", 500, "op", "bank transfer")
    return clean


def reconciler(db: asyncpg.Pool, owner: str) -> ConsultReconciler:
    """A server's reconciler (its own lock: another process's)."""
    ari = FakeAri()                  # Asterisk lost the legs with the server
    callbacks = CallbackStore(db, owner=owner)
    return ConsultReconciler(
        LiveConsultations(db), client=ari, store=callbacks,  # type: ignore[arg-type]
        settler=LegSettler(callbacks, FixedRater(), LegRecords(ari), {}),  # type: ignore[arg-type]
        records=ConsultationRecords(db), desk=AdvisorDesk(db, Routing(None, ())),
        billing=ConsultBilling(db, BillingSettings()))


async def reserved(db: asyncpg.Pool) -> Reservation:
    """The prepaid hold made before the advisor is rung."""
    billing = ConsultBilling(db, BillingSettings())
    plan = await billing.admit("acme", NUMBER, 100)
    held = await billing.reserve("acme", plan, CID, None)
    assert isinstance(held, Reservation)
    return held


async def recorded(db: asyncpg.Pool) -> ConsultationRecord:
    wire = await ConsultationRecords(db).get("acme", CID)
    assert wire is not None
    return ConsultationRecord.from_json(wire, ignore=("recorded_at",))


async def state_of(db: asyncpg.Pool, advisor: int) -> tuple[State, int]:
    _, presence = await AdvisorStore(db).advisor("acme", advisor)
    return presence.state, presence.misses


async def test_an_advisor_left_ringing_is_withdrawn_and_recorded_once(db: asyncpg.Pool) -> None:
    desk = AdvisorDesk(db, Routing(None, ()))
    # the dead server's offer: advisor 1 (idle longest) rung, the customer's balance held
    after, cmds = await desk.assignment("acme", Op.ASSIGN,
                                        am.Assignment(CID, frozenset({1, 2})))
    assert cmds == [am.OfferTo(1, CID)] and after.phase is am.Phase.OFFERING
    assert await state_of(db, 1) == (State.RINGING, 0)
    await reserved(db)
    assert await Ledger(db).balance("acme", "member-42") == Balance(0, 500)
    call = Call(make_desk(), members=frozenset({1, 2}))
    call.send(Begin(call.at(0)))
    leg = call.ringing()
    kept = live(call.state)
    assert kept is not None and kept.offering and kept.advisor_id == 1
    await LiveConsultations(db).keep("cb-1", kept, snapshot(kept.over))

    # the restart's reconcile and another worker's rescue of the job, at once
    ended = await asyncio.gather(reconciler(db, "w2").reconcile(),
                                 reconciler(db, "w3").reconcile(callback_id="cb-1"))
    assert sum(ended) >= 1
    assert await LiveConsultations(db).lost(None) == []
    assert await state_of(db, 1) == (State.STANDBY, 0)       # no miss counted
    events = await db.fetch("SELECT before, after FROM advisor_events "
                            "WHERE advisor_id = 1 ORDER BY id")
    assert [tuple(e) for e in events][-2:] == [("standby", "ringing"),
                                               ("ringing", "standby")]   # ended once
    (record,) = await db.fetch("SELECT * FROM consultations")
    assert (record["consultation_id"], record["talk_s"], record["answered_at"],
            record["end_reason"], record["advisor_id"]) == (CID, 0, None, "failed", 1)
    saved = await recorded(db)
    assert [(r.call_id, r.outcome) for r in saved.rings] == [(leg, RingOutcome.WITHDRAWN)]
    assert saved.rings[0].ended_at is not None
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE kind = 'consultation'") == 1
    # the hold released, nothing charged
    assert await Ledger(db).balance("acme", "member-42") == Balance(500, 0)
    assert await db.fetchval("SELECT count(*) FROM billing_settlements") == 1
    assert await db.fetchval("SELECT total_yen FROM billing_settlements") == 0
    # the advisor takes the next customer
    _, cmds = await desk.assignment("acme", Op.ASSIGN,
                                    am.Assignment("cb-9-c1", frozenset({1})))
    assert cmds == [am.OfferTo(1, "cb-9-c1")]


async def test_an_offer_made_after_the_row_was_kept_is_withdrawn_too(db: asyncpg.Pool) -> None:
    """Killed after the assignment offered the call, before the runner kept the ring:
    the row has nobody rung; the advisor rung under its id is found and withdrawn."""
    await reserved(db)
    call = Call(make_desk(), members=frozenset({1, 2}))
    state, _ = consult.transition(call.state, Begin(call.at(0)))
    kept = live(state)
    assert kept is not None and kept.advisor_id is None
    await LiveConsultations(db).keep("cb-1", kept, snapshot(kept.over))
    desk = AdvisorDesk(db, Routing(None, ()))
    _, cmds = await desk.assignment("acme", Op.ASSIGN, am.Assignment(CID, frozenset({1, 2})))
    assert cmds == [am.OfferTo(1, CID)]
    assert await desk.ringing("acme", CID) == [1]

    assert await reconciler(db, "w2").reconcile() == 1
    assert await state_of(db, 1) == (State.STANDBY, 0)
    assert await desk.ringing("acme", CID) == []
    record = await recorded(db)
    assert (record.talk_s, record.end_reason, record.rings) == (0, EndReason.FAILED, ())
    assert await Ledger(db).balance("acme", "member-42") == Balance(500, 0)


async def test_a_customer_left_queued_leaves_the_queue_with_a_record(db: asyncpg.Pool) -> None:
    desk = AdvisorDesk(db, Routing(None, ()))
    await Presences(db).apply("acme", 1, pm.SetBreak(at(-30), Via.API, "lunch"))
    _, cmds = await desk.assignment("acme", Op.ASSIGN, am.Assignment(CID, frozenset({1})))
    assert [type(c) for c in cmds] == [am.Queue]
    assert await db.fetchval("SELECT count(*) FROM advisor_queue") == 1
    pure = make_desk(advisors=1)
    pure.apply(1, pm.SetBreak(at(-30), Via.API, "lunch"))
    call = Call(pure, members=frozenset({1}), queue_s=60)
    call.send(Begin(call.at(0)))
    kept = live(call.state)
    assert kept is not None and kept.offering and kept.advisor_id is None
    await LiveConsultations(db).keep("cb-1", kept, snapshot(kept.over))

    assert await reconciler(db, "w2").reconcile() == 1
    assert await db.fetchval("SELECT count(*) FROM advisor_queue") == 0
    assert await state_of(db, 1) == (State.BREAK, 0)          # untouched
    record = await recorded(db)
    assert (record.talk_s, record.answered_at, record.end_reason, record.rings,
            record.advisor_id) == (0, None, EndReason.FAILED, (), None)
    assert await LiveConsultations(db).lost(None) == []
