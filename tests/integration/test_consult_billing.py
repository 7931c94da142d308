"""Consultations billed through the call-back round (CallRunner + ConsultRunner, Asterisk
faked in process) against a real PostgreSQL (the ledger, the policy, the customers) and,
for postpaid, a real localstripe: a refused customer hears the guidance and no advisor is
offered the call; a prepaid consultation reserves before the advisor rings, warns both
legs, cuts the customer off with a message, then settles the record's talk seconds; a
postpaid one is charged once after its record, keyed by the consultation id."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest
import stripe

from advisors.model import Rules, SipContact, State, Via
from advisors.presence import GoOnline
from advisors.record_store import ConsultationRecords
from advisors.records import ConsultationRecord, EndReason
from advisors.schemas import AdvisorInput, CustomerInput, GroupInput, OwnPrice
from advisors.store import AdvisorStore
from billing import policy, records
from billing.consultation_charges import consultation_charges
from billing.ledger import Balance, Ledger, Refusal, Reservation
from billing.rating import Terms
from billing.records import Leg
from billing.settings import BillingSettings, StripeSettings
from callback_server.advisor_desk import AdvisorDesk, Chosen
from callback_server.call_ports import CallContext
from callback_server.call_runner import CallRunner
from callback_server.consult_billing import ConsultBilling
from callback_server.dialer_messages import Finish, Job, RetryPolicy, Route, TimerFired
from callback_server.ivr_flow import load_named
from callback_server.routing import Routing
from callback_server.testing import FakeAri, FixedRater, MemoryDesk, MemoryStore
from shared import ari
from shared.db import create_pool
from shared.http import InvalidField
from shared.money import Money
from shared.phone import E164
from tests.integration import advisors_db, billing_db
from tests.integration.localstripe import client_for, localstripe_fixture
from tests.integration.test_billing_postpaid import registered
from tests.prom import grew, scraped
from tests.unit.test_advisors_records import answered

pytestmark = pytest.mark.integration
localstripe = localstripe_fixture()

CUSTOMER = Route("carrier-b", "PJSIP/819012345678@carrier-b")
ADVISOR_1 = (Route("carrier-a", "PJSIP/81312340001@carrier-a"),)
ADVISOR_2 = (Route("carrier-a", "PJSIP/81312340002@carrier-a"),)


def group_desk() -> MemoryDesk:
    """Two advisors in the group "all" without a price of its own: advisor 1 at 100 yen
    a minute (idle longest: offered first), advisor 2 at 300 (the dearest)."""
    return MemoryDesk(2, Rules(ring_timeout_s=20), {1: ADVISOR_1, 2: ADVISOR_2},
                      prices={1: 100, 2: 300})
NUMBER = E164("819012345678")
PREPAID = BillingSettings()


pool, clean = advisors_db.fixtures(billing_db.migrations(), records.MIGRATIONS)


@pytest.fixture
async def db(clean: asyncpg.Pool) -> asyncpg.Pool:
    """Emptied, with the customer member-42 at ``NUMBER``."""
    pool = clean
    await billing_db.truncate(pool, "billing_policies", "billing_group_policies",
                              "billing_records", "billing_customer_legs",
                              "billing_records_awaiting", "outbox")
    await AdvisorStore(pool).create_customer(
        "acme", CustomerInput(account="member-42", name="Sato", numbers=(NUMBER,)))
    return pool


class Call:
    """A round on the consult flow: advisor 2 costs 100 yen a minute."""

    def __init__(self, pool: asyncpg.Pool, settings: BillingSettings = PREPAID,
                 desk: MemoryDesk | None = None) -> None:
        self.ari = FakeAri()
        self.desk = desk or MemoryDesk(3, Rules(ring_timeout_s=20), {2: ADVISOR_2},
                                       prices={2: 100})
        self.billing = ConsultBilling(pool, settings)
        flow = replace(load_named("consult"), start="main", confirm_callback=None)
        job = Job(callback_id="cb-7", merchant_id="acme", destination=NUMBER,
                  caller_id=E164("81120123456"), ring_timeout_s=30,
                  policy=RetryPolicy(3, (30,)), attempt_no=1, leg_seq=0)
        self.runner = CallRunner(job, CallContext("edge-7", "ntt-freedial", flow),
                                 client=self.ari, router=self.ari.router, store=MemoryStore(),
                                 rater=FixedRater(), desk=self.desk,
                                 consultations=ConsultationRecords(pool), billing=self.billing)
        self.task: asyncio.Task[Finish | None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.runner.run((CUSTOMER,)))
        await self.settle()
        await self.push(ari.StasisStart(ari.Channel(id="cb-7-01")))

    async def push(self, *events: ari.Event) -> None:
        for event in events:
            self.ari.router.dispatch(event)
            await self.settle()

    async def fire(self, timer: str) -> None:
        """The round's timer ``timer`` fires now (as its asyncio timer would, later)."""
        self.runner.inbox.put_nowait(TimerFired(timer, datetime.now(UTC)))
        await self.settle()

    async def anyone(self) -> None:
        """The first free advisor of the group (the flow's 2)."""
        await self.push(ari.ChannelDtmfReceived(ari.Channel(id="cb-7-01"), "2"))

    async def code(self, digits: str) -> None:
        for d in "1" + digits:
            await self.push(ari.ChannelDtmfReceived(ari.Channel(id="cb-7-01"), d))

    @staticmethod
    async def settle() -> None:
        for _ in range(20):       # the database answers between the round's steps
            await asyncio.sleep(0.01)

    def plays(self) -> list[tuple[str, tuple[str, ...]]]:
        return [(cid, media) for cid, media, _, _ in self.ari.named("play")]

    async def done(self) -> None:
        assert self.task is not None
        self.runner.shutdown()
        await asyncio.wait_for(self.task, 5)


async def test_a_balance_too_low_hears_why_and_no_advisor_is_offered_the_call(
        db: asyncpg.Pool) -> None:
    await Ledger(db).deposit("acme", "member-42", 50, "op", "bank transfer")
    call = Call(db)
    before = await billing_db.scrape(db)
    await call.start()
    await call.code("0002")
    assert call.plays()[-1] == ("cb-7-01", ("sound:cbgw/balance-too-low",
                                            "sound:cbgw/advisor-unavailable"))
    assert grew(before, await billing_db.scrape(db), "cbgw_billing_refusals_total",
                merchant="acme", reason="balance-too-low") == 1
    assert len(call.ari.named("originate")) == 1                    # the customer's only
    assert call.desk.seats[2].state is State.STANDBY                # never offered
    assert await db.fetchval("SELECT count(*) FROM billing_reservations") == 0
    await call.done()


async def test_a_prepaid_consultation_is_warned_cut_off_and_settled_from_its_record(
        db: asyncpg.Pool) -> None:
    ledger = Ledger(db)
    await ledger.deposit("acme", "member-42", 200, "op", "bank transfer")  # two minutes
    call = Call(db)
    before = await billing_db.scrape(db)
    await call.start()
    await call.code("0002")
    # reserved before the advisor's INVITE: what the balance pays for
    assert call.ari.named("originate")[-1][1] == "cb-7-02"
    assert await ledger.balance("acme", "member-42") == Balance(0, 200)
    live = await billing_db.scrape(db)
    assert (scraped(live, "cbgw_billing_live_reservations", merchant="acme"),
            scraped(live, "cbgw_billing_held_yen", merchant="acme")) == (1, 200)
    (allowed,) = await db.fetchrow("SELECT allowed_s FROM billing_reservations")
    assert allowed == 120
    await call.push(ari.StasisStart(ari.Channel(id="cb-7-02")))      # the advisor answers
    await call.fire("meter:1")      # the check, a minute before the end: nothing to extend
    warning = ("sound:cbgw/balance-warning",)
    assert ("cb-7-01", warning) in call.plays() and ("cb-7-02", warning) in call.plays()
    await call.fire("meter:2")      # the cut-off: the advisor's leg goes, the message
    assert "cb-7-02" in call.ari.named("hangup")
    assert call.plays()[-1] == ("cb-7-01", ("sound:cbgw/balance-cutoff",))
    assert "cb-7-01" not in call.ari.named("hangup")
    await call.push(ari.StasisEnd(ari.Channel(id="cb-7-02")))
    await call.push(ari.PlaybackFinished(ari.Playback("cb-7-c1-farewell",
                                                      target_uri="channel:cb-7-01")))
    assert "cb-7-01" in call.ari.named("hangup")                    # then the customer
    await call.push(ari.StasisEnd(ari.Channel(id="cb-7-01")))
    await call.settle()
    talk_s, reason = await db.fetchrow("SELECT talk_s, end_reason FROM consultations")
    assert reason == "cut_off"
    settled = await db.fetchrow("SELECT talk_s, total_yen, released_yen "
                                   "FROM billing_settlements")
    assert settled["talk_s"] == talk_s and talk_s < 60
    assert (settled["total_yen"], settled["released_yen"]) == (100, 100)
    assert await ledger.balance("acme", "member-42") == Balance(100, 0)
    after = await billing_db.scrape(db)
    assert grew(before, after, "cbgw_billing_cutoffs_total", merchant="acme") == 1
    assert grew(before, after, "cbgw_billing_consultations_charged_total", merchant="acme",
                paid_by="prepaid") == 1
    assert grew(before, after, "cbgw_billing_charged_yen_total", merchant="acme",
                paid_by="prepaid") == 100
    assert scraped(after, "cbgw_billing_live_reservations", merchant="acme") == 0
    assert call.task is not None
    await asyncio.wait_for(call.task, 5)


async def test_a_top_up_after_the_warning_extends_the_live_consultation(
        db: asyncpg.Pool) -> None:
    """Warned a minute before the end, the customer pays two minutes more: the meter's
    next recheck extends the reservation by a slice (a minute), the old cut-off no longer
    cuts, and the consultation is settled with everything it talked."""
    ledger = Ledger(db)
    await ledger.deposit("acme", "member-42", 200, "op", "bank transfer")  # two minutes
    call = Call(db)
    await call.start()
    await call.code("0002")
    await call.push(ari.StasisStart(ari.Channel(id="cb-7-02")))      # the advisor answers
    await call.fire("meter:1")      # the check: nothing to extend, the warning
    assert ("cb-7-01", ("sound:cbgw/balance-warning",)) in call.plays()
    await ledger.deposit("acme", "member-42", 200, "op", "bank transfer")  # two more
    await call.fire("meter:3")      # the recheck finds it and holds a slice of it
    assert await db.fetchval("SELECT max(allowed_s) FROM billing_reservation_extensions"
                             ) == 180
    assert await ledger.balance("acme", "member-42") == Balance(100, 300)
    await call.fire("meter:2")      # the cut-off the warning set: stale now
    assert "cb-7-02" not in call.ari.named("hangup")
    assert ("cb-7-01", ("sound:cbgw/balance-cutoff",)) not in call.plays()
    await call.push(ari.StasisEnd(ari.Channel(id="cb-7-01")))        # the customer leaves
    await call.push(ari.StasisEnd(ari.Channel(id="cb-7-02")))
    await call.settle()
    talk_s, reason = await db.fetchrow("SELECT talk_s, end_reason FROM consultations")
    settled = await db.fetchrow("SELECT talk_s, total_yen, released_yen "
                                "FROM billing_settlements")
    assert reason != "cut_off" and settled["talk_s"] == talk_s
    assert (settled["total_yen"], settled["released_yen"]) == (100, 200)
    assert await ledger.balance("acme", "member-42") == Balance(300, 0)
    await call.done()


async def test_a_consultation_holds_its_balance_a_slice_at_a_time(db: asyncpg.Pool) -> None:
    """Ten minutes' balance: the consultation first holds the warning's minute and a
    slice (two minutes), then a minute more at each check, leaving the rest to the
    account's other calls; settled, all it did not talk is free again."""
    ledger = Ledger(db)
    await ledger.deposit("acme", "member-42", 1000, "op", "bank transfer")
    call = Call(db)
    await call.start()
    await call.code("0002")
    assert await db.fetchval("SELECT allowed_s FROM billing_reservations") == 120
    assert await ledger.balance("acme", "member-42") == Balance(800, 200)
    await call.push(ari.StasisStart(ari.Channel(id="cb-7-02")))      # the advisor answers
    await call.fire("meter:1")      # the check a minute before the end: a slice more
    assert await db.fetchval("SELECT max(allowed_s) FROM billing_reservation_extensions"
                             ) == 180
    assert await ledger.balance("acme", "member-42") == Balance(700, 300)
    assert ("cb-7-01", ("sound:cbgw/balance-warning",)) not in call.plays()
    await call.push(ari.StasisEnd(ari.Channel(id="cb-7-01")))        # the customer leaves
    await call.push(ari.StasisEnd(ari.Channel(id="cb-7-02")))
    await call.settle()
    assert await ledger.balance("acme", "member-42") == Balance(900, 0)
    await call.done()


async def test_a_consultation_is_priced_by_the_advisor_else_the_groups_own_price(
        db: asyncpg.Pool) -> None:
    """The price billing admits at (the AdvisorDesk's choice): a named advisor's own; a
    group's own price when it has one, else its dearest member's."""
    store = AdvisorStore(db)
    cheap, dear = [(await store.create_advisor("acme", AdvisorInput(
        display_name=name, code=code, contact=SipContact(name), price_per_minute_yen=price)))[0]
        for name, code, price in (("a", "1001", 100), ("b", "1002", 300))]
    group = await store.create_group("acme", GroupInput(name="tarot",
                                                        members=(cheap.id, dear.id)))
    desk = AdvisorDesk(db, Routing(None, ()))

    async def price(**choice: str) -> int:
        chosen = await desk.choose("acme", code=choice.get("code"), group=choice.get("group"))
        assert isinstance(chosen, Chosen), chosen
        return chosen.price_per_minute_yen

    for a in (cheap, dear):
        await desk.presences.apply("acme", a.id, GoOnline(datetime.now(UTC), Via.API))
    assert await price(group="tarot") == 300
    assert await price(code="1001") == 100
    await store.update_group("acme", group.id, GroupInput(price=OwnPrice(200)))
    assert await price(group="tarot") == 200
    assert await price(code="1001") == 100 and await price(code="1002") == 300
    await store.update_group("acme", group.id, GroupInput(price=OwnPrice(None)))
    assert await price(group="tarot") == 300


async def test_an_unanswered_prepaid_consultation_releases_its_reservation(
        db: asyncpg.Pool) -> None:
    ledger = Ledger(db)
    await ledger.deposit("acme", "member-42", 200, "op", "bank transfer")
    call = Call(db)
    await call.start()
    await call.code("0002")
    await call.push(ari.StasisEnd(ari.Channel(id="cb-7-01")))        # the customer leaves
    await call.push(ari.StasisEnd(ari.Channel(id="cb-7-02")))
    await call.settle()
    assert await ledger.balance("acme", "member-42") == Balance(200, 0)
    assert await db.fetchval("SELECT total_yen FROM billing_settlements") == 0


async def test_a_group_consultation_is_reserved_at_the_dearest_and_rated_at_who_answers(
        db: asyncpg.Pool) -> None:
    """Reserved at the dearest member's price (300 yen: the warning's minute and a slice,
    600 yen held), answered by the member at 100 yen: the same hold pays 360 s at their
    price (the cut-off moves), and the consultation is settled and recorded at 100 yen a
    minute, the rest released."""
    ledger = Ledger(db)
    await ledger.deposit("acme", "member-42", 600, "op", "bank transfer")
    call = Call(db, desk=group_desk())
    await call.start()
    await call.anyone()
    assert call.ari.named("originate")[-1][1] == "cb-7-02"           # advisor 1 rung
    reserved = await db.fetchrow("SELECT terms, held_yen, allowed_s FROM billing_reservations")
    assert (reserved["terms"]["price_per_minute_yen"], reserved["held_yen"],
            reserved["allowed_s"]) == (300, 600, 120)
    await call.push(ari.StasisStart(ari.Channel(id="cb-7-02")))      # advisor 1 answers
    priced = await db.fetchrow("SELECT price_per_minute_yen, advisor_id "
                               "FROM billing_reservation_prices")
    assert tuple(priced) == (100, 1)
    assert await db.fetchval("SELECT max(allowed_s) FROM billing_reservation_extensions"
                             ) == 360
    assert await ledger.balance("acme", "member-42") == Balance(0, 600)   # nothing released
    await call.fire("meter:1")      # the check: nothing more to hold, warned before 360 s
    assert ("cb-7-01", ("sound:cbgw/balance-warning",)) in call.plays()
    await call.push(ari.StasisEnd(ari.Channel(id="cb-7-01")))        # the customer leaves
    await call.push(ari.StasisEnd(ari.Channel(id="cb-7-02")))
    await call.settle()
    settled = await db.fetchrow("SELECT talk_s, total_yen, released_yen "
                                "FROM billing_settlements")
    assert (settled["total_yen"], settled["released_yen"]) == (100, 500)
    assert await ledger.balance("acme", "member-42") == Balance(500, 0)
    # the billing record waits for the customer leg's cost (never rated here)
    record = await db.fetchval("SELECT record FROM billing_records_awaiting")
    assert (record["price_per_minute_yen"], record["total_yen"]) == (100, 100)
    await call.done()


async def test_a_group_with_a_price_of_its_own_keeps_it_whoever_answers(
        db: asyncpg.Pool) -> None:
    """The group's own price (AdvisorDesk: no member prices) is reserved and rated
    whoever answers: nothing repriced."""
    ledger = Ledger(db)
    await ledger.deposit("acme", "member-42", 600, "op", "bank transfer")
    desk = group_desk()
    own = Chosen(frozenset({1, 2}), 20, group_id=1, price_per_minute_yen=200)
    assert own.price_of(1) == own.price_of(2) == 200
    priced_by_members = await desk.choose("acme", code=None, group="all")
    assert isinstance(priced_by_members, Chosen)
    assert (priced_by_members.price_of(1), priced_by_members.price_of(2),
            priced_by_members.price_of(None)) == (100, 300, 300)
    desk.prices = {1: 300, 2: 300}          # whoever answers costs what was reserved
    call = Call(db, desk=desk)
    await call.start()
    await call.anyone()
    await call.push(ari.StasisStart(ari.Channel(id="cb-7-02")))
    await call.push(ari.StasisEnd(ari.Channel(id="cb-7-01")))
    await call.push(ari.StasisEnd(ari.Channel(id="cb-7-02")))
    await call.settle()
    assert await db.fetchval("SELECT count(*) FROM billing_reservation_prices") == 0
    assert await db.fetchval("SELECT total_yen FROM billing_settlements") == 300
    await call.done()


async def test_a_group_consultation_is_admitted_reserved_and_rated_under_the_groups_policy(
        db: asyncpg.Pool) -> None:
    """The group (id 1) bills by 10 s with a 30 s maximum beside the merchant's minute:
    its consultation is reserved for the 30 s (the meter checks at once, warns and cuts
    off there) with the group's terms, and rated with them; a named advisor's keeps the
    merchant's."""
    ledger = Ledger(db)
    await ledger.deposit("acme", "member-42", 600, "op", "bank transfer")
    await policy.set_group_policy(db, "acme", policy.group_changed(
        policy.GroupPolicy(1), policy.Policy(), {"unit_s": 10, "max_talk_s": 30, "by": "op"}))
    call = Call(db, desk=group_desk())
    await call.start()
    await call.anyone()
    reserved = await db.fetchrow("SELECT terms, held_yen, allowed_s FROM billing_reservations")
    assert (reserved["terms"]["unit_s"], reserved["terms"]["max_talk_s"],
            reserved["allowed_s"], reserved["held_yen"]) == (10, 30, 30, 150)
    await call.push(ari.StasisStart(ari.Channel(id="cb-7-02")))      # advisor 1, 100 yen
    await call.push(ari.StasisEnd(ari.Channel(id="cb-7-01")))
    await call.push(ari.StasisEnd(ari.Channel(id="cb-7-02")))
    await call.settle()
    settled = await db.fetchrow("SELECT talk_s, billed_s, total_yen FROM billing_settlements")
    assert settled["billed_s"] == max(10, -(-settled["talk_s"] // 10) * 10)   # by 10 s
    assert settled["total_yen"] == settled["billed_s"] * 100 // 60
    await call.done()
    named = ConsultBilling(db, PREPAID)
    plan = await named.admit("acme", NUMBER, 100)
    assert (plan.terms.unit_s, plan.terms.max_talk_s) == (60, 10800)
    through = await named.admit("acme", NUMBER, 100, group_id=1)
    assert (through.terms.unit_s, through.admission.max_talk_s) == (10, 30)


@pytest.fixture
def stripe_client(localstripe: int) -> stripe.StripeClient:
    return client_for(localstripe)


async def postpaid_call(db: asyncpg.Pool, stripe_client: stripe.StripeClient,
                        localstripe: int, desk: MemoryDesk | None = None) -> Call:
    """A round of the postpaid merchant acme, member-42's card on file, started."""
    await registered(db, stripe_client, "member-42")
    settings = BillingSettings(
        stripe=StripeSettings("sk_test_billing", api_base=f"http://127.0.0.1:{localstripe}"),
        postpaid_merchants=frozenset({"acme"}))
    call = Call(db, settings, desk)
    await call.start()
    return call


async def talked_and_charged(call: Call, db: asyncpg.Pool) -> None:
    """The advisor (cb-7-02) answers and ends it; waits for the charge's outcome."""
    await call.push(ari.StasisStart(ari.Channel(id="cb-7-02")))
    await call.push(ari.StasisEnd(ari.Channel(id="cb-7-02")))         # the advisor ends it
    for _ in range(100):
        if await db.fetchval("SELECT count(*) FROM billing_postpaid_outcomes"):
            break
        await asyncio.sleep(0.1)


async def test_a_postpaid_consultation_is_charged_once_after_its_record(
        db: asyncpg.Pool, stripe_client: stripe.StripeClient, localstripe: int) -> None:
    call = await postpaid_call(db, stripe_client, localstripe)
    await call.code("0002")
    assert await db.fetchval("SELECT count(*) FROM billing_reservations") == 0
    await talked_and_charged(call, db)
    charge = await db.fetchrow(
        "SELECT c.consultation_id, c.talk_s, c.total_yen, o.outcome "
        "FROM billing_postpaid_charges c JOIN billing_postpaid_attempts t "
        "ON t.charge_id = c.id JOIN billing_postpaid_outcomes o ON o.attempt_id = t.id")
    record = await db.fetchrow("SELECT consultation_id, talk_s FROM consultations")
    assert (charge["consultation_id"], charge["talk_s"]) == (record["consultation_id"],
                                                             record["talk_s"])
    assert (charge["total_yen"], charge["outcome"]) == (100, "succeeded")
    (beside,) = await consultation_charges(db, "acme", record["consultation_id"])
    assert (beside["kind"], beside["total_yen"], beside["state"]) == ("postpaid", 100, "paid")
    await call.done()


async def test_a_postpaid_group_consultation_is_charged_at_the_answering_members_price(
        db: asyncpg.Pool, stripe_client: stripe.StripeClient, localstripe: int) -> None:
    call = await postpaid_call(db, stripe_client, localstripe, group_desk())
    await call.anyone()
    await talked_and_charged(call, db)                                # advisor 1, 100 yen
    charge = await db.fetchrow("SELECT terms, total_yen FROM billing_postpaid_charges")
    assert (charge["terms"]["price_per_minute_yen"], charge["total_yen"]) == (100, 100)
    await call.done()


async def test_a_rescued_call_backs_recorded_consultation_is_settled_from_its_record(
        db: asyncpg.Pool) -> None:
    """The process died after saving the record and before settling: the rescue settles
    the record's talk seconds once; a consultation without a record stays live."""
    ledger = Ledger(db)
    await ledger.deposit("acme", "member-42", 1000, "op", "bank transfer")
    recorded = answered()                                     # 95 s of talk, cb-0f3a9c
    await ledger.reserve("acme", "member-42", recorded.consultation_id, Terms(100),
                         at_most_s=300)
    await ledger.reserve("acme", "member-42", "cb-0f3a9c-c2", Terms(100))   # no record
    await ConsultationRecords(db).save(recorded)
    billing = ConsultBilling(db, PREPAID)
    (settled,) = await billing.rescue("acme", "cb-0f3a9c")
    assert (settled.charge.talk_s, settled.charge.total_yen) == (95, 200)
    assert await billing.rescue("acme", "cb-0f3a9c") == []
    assert await billing.rescue("other", "cb-0f3a9c") == []
    (live,) = await ledger.live("acme")
    assert live.reservation.consultation_id == "cb-0f3a9c-c2"
    by = await db.fetchval("SELECT by_whom FROM billing_transactions WHERE kind = 'charge'")
    assert by == "rescue"


async def test_a_settlements_billing_record_waits_for_the_customer_legs_cost(
        db: asyncpg.Pool) -> None:
    """Settled before the call-back's customer leg ended: the billing record is kept, not
    sent; the leg's CDR (customer_leg_rated) writes it with that leg's cost, once. A
    second consultation on the same call-back does not count the leg again, and one
    settled after the leg was rated is written at once."""
    ledger = Ledger(db)
    await ledger.deposit("acme", "member-42", 1000, "op", "bank transfer")
    first = answered(leg_costs=answered().leg_costs[1:])       # the advisor legs only
    second = answered(consultation_id="co-7f3b", requested_at=first.ended_at,
                      rings=(), answered_at=None, holds=(), talk_s=0,
                      end_reason=EndReason.CUSTOMER_ABANDONED, leg_costs=())
    for made in (first, second):
        await ConsultationRecords(db).save(made)
    held = await ledger.reserve("acme", "member-42", first.consultation_id, Terms(100))
    assert isinstance(held, Reservation)
    await ledger.settle("acme", held.id, first.talk_s)
    assert await records.consultation_records(db, "acme", first.consultation_id) == []
    sent = ("SELECT count(*) FROM outbox WHERE kind = 'billing_record' "
            "AND convert_from(body, 'UTF8')::jsonb ->> 'consultation_id' = $1")
    assert await db.fetchval(sent, first.consultation_id) == 0
    customer = Leg("cb-0f3a9c-1-customer", "customer", "carrier-b", Money.of("0.2097", "USD"))
    async with db.acquire() as conn, conn.transaction():
        assert await records.customer_leg_rated(conn, customer) == 1
    async with db.acquire() as conn, conn.transaction():
        assert await records.customer_leg_rated(conn, customer) == 0     # once
    (written,) = await records.consultation_records(db, "acme", first.consultation_id)
    assert [(leg["call_id"], leg["role"]) for leg in written["legs"]] == [
        ("co-7f3a-r2", "advisor"), ("co-7f3a-r1", "advisor"),
        ("cb-0f3a9c-1-customer", "customer")]
    # 45 JPY + 0.2097 USD at the default 155 yen: 77.5035, of 200 yen charged
    assert (written["cost_yen"], written["margin_yen"]) == ("77.5035", "122.4965")
    assert await db.fetchval(sent, first.consultation_id) == 1
    later = await ledger.reserve("acme", "member-42", second.consultation_id, Terms(100))
    assert isinstance(later, Reservation)
    await ledger.settle("acme", later.id, 0)
    (other,) = await records.consultation_records(db, "acme", second.consultation_id)
    assert other["legs"] == [] and other["cost_yen"] == "0"
    assert await db.fetchval("SELECT count(*) FROM billing_records_awaiting") == 0


async def test_a_record_whose_customer_leg_never_comes_goes_after_the_wait_once(
        db: asyncpg.Pool) -> None:
    """Settled before the customer leg ended, and that leg's CDR does not come: within
    the wait the record is kept; past it (send_overdue) it is sent, the customer leg
    listed with its cost unknown, and the edge's parser takes it; the CDR stored later
    sends nothing again."""
    ledger = Ledger(db)
    await ledger.deposit("acme", "member-42", 1000, "op", "bank transfer")
    first = answered(leg_costs=answered().leg_costs[1:])       # the advisor legs only
    await ConsultationRecords(db).save(first)
    held = await ledger.reserve("acme", "member-42", first.consultation_id, Terms(100))
    assert isinstance(held, Reservation)
    await ledger.settle("acme", held.id, first.talk_s)
    sent = ("SELECT convert_from(body, 'UTF8')::jsonb AS payload FROM outbox WHERE kind = "
            "'billing_record' AND convert_from(body, 'UTF8')::jsonb ->> 'consultation_id' = $1")
    assert await records.send_overdue(db, 600) == 0             # within the wait: kept
    assert await db.fetch(sent, first.consultation_id) == []
    assert await records.send_overdue(db, 0) == 1
    (written,) = await records.consultation_records(db, "acme", first.consultation_id)
    assert written["legs"][-1] == {"call_id": "cb-0f3a9c-1-customer", "role": "customer",
                                   "carrier_id": None, "cost": None, "cost_yen": None,
                                   "cost_unknown": True}
    assert [leg["role"] for leg in written["legs"]] == ["advisor", "advisor", "customer"]
    (message,) = await db.fetch(sent, first.consultation_id)
    edge = records.BillingRecord.from_json(message["payload"])             # what the edge stores
    assert edge.legs[-1].cost_unknown and edge.cost_yen == Decimal(written["cost_yen"])
    priced = {**message["payload"]["legs"][-1], "cost": {"amount": "1", "currency": "JPY"}}
    with pytest.raises(InvalidField, match="cost_unknown"):      # unknown, yet a cost
        records.BillingRecord.from_json({**message["payload"],
                                         "legs": [*message["payload"]["legs"][:2], priced]})
    customer = Leg("cb-0f3a9c-1-customer", "customer", "carrier-b", Money.of("0.2097", "USD"))
    async with db.acquire() as conn, conn.transaction():
        assert await records.customer_leg_rated(conn, customer) == 0   # the CDR, late
    assert len(await db.fetch(sent, first.consultation_id)) == 1
    assert await records.send_overdue(db, 0) == 0
    assert await db.fetchval("SELECT count(*) FROM billing_records_awaiting") == 0


CONSULTATION_MESSAGES = ("SELECT convert_from(body, 'UTF8')::jsonb AS payload FROM outbox "
                         "WHERE kind = 'consultation' ORDER BY created_at")


async def test_a_consultation_record_waits_for_its_customer_leg_and_counts_its_cost_once(
        db: asyncpg.Pool) -> None:
    """Two consultations on one call-back, saved before its customer leg ended: stored,
    their messages wait; the leg's CDR (customer_leg_rated) sends each once with the leg
    among its leg costs: its cost in the first consultation, zero (its carrier kept) in
    the second. A third saved after the leg was rated goes at once, the leg at zero."""
    saved = ConsultationRecords(db, customer_leg=records.customer_leg)
    first = answered(leg_costs=answered().leg_costs[1:])       # the advisor legs only
    second = answered(consultation_id="co-7f3b", requested_at=first.ended_at,
                      rings=(), answered_at=None, holds=(), talk_s=0,
                      end_reason=EndReason.CUSTOMER_ABANDONED, leg_costs=())
    for made in (second, first):                 # saved in either order: first by time
        assert await saved.save(made)
    assert await db.fetch(CONSULTATION_MESSAGES) == []
    assert (await saved.get("acme", "co-7f3b") or {})["leg_costs"] == []
    customer = Leg("cb-0f3a9c-1-customer", "customer", "carrier-b", Money.of("0.2097", "USD"))
    async with db.acquire() as conn, conn.transaction():
        await records.customer_leg_rated(conn, customer)
    async with db.acquire() as conn, conn.transaction():
        await records.customer_leg_rated(conn, customer)                 # once
    sent = {m["payload"]["consultation_id"]: m["payload"]
            for m in await db.fetch(CONSULTATION_MESSAGES)}
    assert len(await db.fetch(CONSULTATION_MESSAGES)) == 2
    leg = {"call_id": "cb-0f3a9c-1-customer", "role": "customer", "carrier_id": "carrier-b"}
    assert sent[first.consultation_id]["leg_costs"] == [
        *(c.to_json() for c in first.leg_costs),
        {**leg, "cost": {"amount": "0.2097", "currency": "USD"}}]
    assert sent["co-7f3b"]["leg_costs"] == [{**leg, "cost": {"amount": "0",
                                                             "currency": "USD"}}]
    for payload in sent.values():          # what the edge parses, and the API shows
        edge = ConsultationRecord.from_json({k: v for k, v in payload.items() if k != "kind"})
        stored = await saved.get("acme", edge.consultation_id) or {}
        assert stored.pop("recorded_at") and stored == edge.to_json()
    third = replace(second, consultation_id="co-7f3c", requested_at=second.ended_at)
    assert await saved.save(third)
    (*_, late) = await db.fetch(CONSULTATION_MESSAGES)
    assert late["payload"]["leg_costs"] == [{**leg, "cost": {"amount": "0",
                                                             "currency": "USD"}}]
    assert await db.fetchval(
        "SELECT count(*) FROM consultations_awaiting_customer_leg") == 0


async def test_a_consultation_record_whose_customer_leg_never_comes_goes_after_the_wait(
        db: asyncpg.Pool) -> None:
    """Within the wait the record's message is kept; past it (send_overdue) it goes once,
    the customer leg listed with its cost unknown; the CDR stored later sends nothing."""
    saved = ConsultationRecords(db, customer_leg=records.customer_leg)
    first = answered(leg_costs=answered().leg_costs[1:])
    assert await saved.save(first)
    assert await records.send_overdue(db, 600) == 0
    assert await db.fetch(CONSULTATION_MESSAGES) == []
    assert await records.send_overdue(db, 0) == 1
    (message,) = await db.fetch(CONSULTATION_MESSAGES)
    assert message["payload"]["leg_costs"][-1] == {
        "call_id": "cb-0f3a9c-1-customer", "role": "customer", "carrier_id": None,
        "cost": None, "cost_unknown": True}
    edge = ConsultationRecord.from_json({k: v for k, v in message["payload"].items()
                                         if k != "kind"})
    assert edge.leg_costs[-1].cost_unknown
    customer = Leg("cb-0f3a9c-1-customer", "customer", "carrier-b", Money.of("0.2097", "USD"))
    async with db.acquire() as conn, conn.transaction():
        await records.customer_leg_rated(conn, customer)                 # the CDR, late
    assert len(await db.fetch(CONSULTATION_MESSAGES)) == 1
    assert await records.send_overdue(db, 0) == 0
    stored = await saved.get("acme", first.consultation_id) or {}
    assert stored["leg_costs"][-1]["cost_unknown"] is True


async def test_a_settlement_the_ledger_refuses_leaves_the_reservation_and_the_round_ends(
        db: asyncpg.Pool) -> None:
    """An operator settled the reservation during the talk with another talk time: the
    consultation's own settle is refused (409), logged, and the round still finishes."""
    ledger = Ledger(db)
    await ledger.deposit("acme", "member-42", 200, "op", "bank transfer")
    call = Call(db)
    await call.start()
    await call.code("0002")
    await call.push(ari.StasisStart(ari.Channel(id="cb-7-02")))
    (live,) = await ledger.live("acme")
    await ledger.settle("acme", live.reservation.id, 5, by="op", reason="by hand")
    await call.push(ari.StasisEnd(ari.Channel(id="cb-7-02")))        # the advisor ends it
    await call.push(ari.StasisEnd(ari.Channel(id="cb-7-01")))        # the customer leaves
    assert call.task is not None
    await asyncio.wait_for(call.task, 5)
    assert await db.fetchval("SELECT talk_s FROM billing_settlements") == 5


async def test_admission_and_the_first_slice_cost_two_statements_whatever_the_batch(
        db: asyncpg.Pool, pg_url: str) -> None:
    """What every prepaid consultation pays before the first ring (``python -m bench
    billing_reserve``): one admission statement (account, policy and balance) for the
    asks that arrive together, one statement (its own transaction: lock, read, decide,
    hold; ``billing_reserve_holds``) for their reservations. Counted on a one-connection
    pool for one consultation, then for eight at once: the same two."""
    await Ledger(db).deposit("acme", "member-42", 10_000, "op", "bank transfer")
    one = await create_pool(pg_url, min_size=1, max_size=1)
    try:
        billing = ConsultBilling(one, PREPAID)
        statements: list[str] = []
        async with one.acquire() as conn:
            conn.add_query_logger(lambda q: statements.append(q.query))

        async def consult(consultation_id: str) -> Reservation | Refusal:
            plan = await billing.admit("acme", NUMBER, 100)
            return await billing.reserve("acme", plan, consultation_id, 120)

        await consult("cb-7-c0")             # the connection learns the types it reads
        counted = []
        for ids in (["cb-7-c1"], [f"cb-7-c{i}" for i in range(2, 10)]):
            statements.clear()
            reserved = await asyncio.gather(*(consult(c) for c in ids))
            assert all(isinstance(r, Reservation) and r.allowed_s == 120 for r in reserved)
            counted.append([s for s in statements if "pg_advisory_unlock_all" not in s])
    finally:
        await one.close()
    for work in counted:
        assert len(work) == 2, "\n".join(work)
        assert work[1].split() == ["SELECT", "*", "FROM", "billing_reserve_holds($1,", "$2,",
                                   "$3,", "$4,", "$5,", "$6,", "$7,", "$8,", "$9,", "$10,",
                                   "$11,", "$12)"], work
    # each hold is its reservation row, no movement (migration 0021)
    assert await db.fetchval("SELECT sum(held_yen) FROM billing_reservations") == 10 * 200
    assert await db.fetchval("SELECT count(*) FROM billing_transactions "
                             "WHERE kind IN ('hold', 'release')") == 0
