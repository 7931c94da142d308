"""The guard as the callback site uses it: one object, called at these points.

=================  ===========================================  =====================
where              what                                         refusal stage
=================  ===========================================  =====================
intake             policy + lists, lock, velocity, brake —       ``intake``: the request
(``store.intake_   inside the batch's one intake statement      row is stored
batch``)           (``callback_intake``, migration 1020), under ``refused`` + reason
                   per-number advisory locks
before each round  lists + policy again, lock, brake, on facts   ``dial``: job finished
(``worker``)       read by the job's claim                       ``failed`` + reason
route choice       caps read: drop capped trunks (not for a      ``dial``: job waits
                   CPS cap that paces)
(``worker``)                                                     ``caps.retry_s``
each carrier leg   another party's number: lists, policy,       ``dial``: next route,
(``persist_leg``)  lock; caps: a slot in each capped scope's    else job waits (caps)
                   counter row, in the statement that stores
                   the leg; trips latched kinds
consult transfer   lists, policy, lock of the number            ``transfer``: 403
(``consult_        (before the request is notified)
control``)
round end          confirmed? lock / block list / brake alert,   —
(``finish``)       in the transaction that finishes the round
each CDR           daily spend; trips the spend cap             —
(``record_cdr``)
=================  ===========================================  =====================

Every refusal is logged (``callback.guard``), counted
(``cbgw_guard_refusals_total{stage,reason}``) and stored (``guard_refusals``).
"""

from __future__ import annotations

import logging
import time
import zoneinfo
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Protocol

import asyncpg

from callback_server.guard import brake, caps, velocity
from callback_server.guard import store as sql
from callback_server.guard.alerts import Alert, Alerter
from callback_server.guard.reasons import GuardRefused, Refusal, Verdict
from callback_server.guard.settings import GuardSettings
from callback_server.metrics import UNKNOWN_MERCHANT
from callback_server.metrics import callback as metrics
from shared.destination import Listing, Policy
from shared.money import Money, MoneyError
from shared.phone import E164, InvalidNumber

log = logging.getLogger("callback.guard")

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Converter(Protocol):
    def convert(self, money: Money, dst: str) -> Money: ...


class HasCarrier(Protocol):
    @property
    def carrier_id(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Admission:
    """A leg's caps: the scopes whose channel slot it took and the counter shard of each
    and when it was admitted (kept on its row), or why it was refused, or (``pace_s``)
    how long it waits for a CPS cap's window before it is claimed again (nothing taken,
    nothing recorded)."""

    scopes: tuple[str, ...]
    refused: GuardRefused | None
    shards: tuple[int, ...] = ()
    at: datetime | None = None
    pace_s: float | None = None


@dataclass(frozen=True, slots=True)
class LegAdmission:
    """A leg's admission as CTEs of the statement that stores it (:meth:`Guard.leg_admission`):
    the leg's scopes, the CTEs and their arguments."""

    scopes: tuple[str, ...]
    ctes: str
    args: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class ClaimFacts:
    """What a round's screening and route choice decide on, read by the job's claim
    (``guard_number_facts`` as of ``now``, see :meth:`Guard.intake_window`, and
    ``guard_cap_usage``): the number's facts, the anomaly brake's count, and the caps'
    usage (every scope that has any)."""

    now: datetime
    facts: sql.NumberFacts
    brake: int
    caps: sql.CapSnapshot


#: the SQLSTATE of :meth:`Guard.round_decided_after`'s column when the rules act
VELOCITY_ACTS = "CBW02"


@dataclass(frozen=True, slots=True)
class RoundEnd:
    """A round's end as the guard records it: whether the customer's phone rang, whether
    a person confirmed (:meth:`Guard.record_round`)."""

    callback_id: str
    attempt_no: int
    number: E164
    merchant_id: str
    rang: bool
    confirmed: bool

    def counted(self, attempts: int) -> bool:
        """Whether the job, ending with ``attempts`` rounds counted, counts this one: a
        round whose legs were all refused at admission (or never dialled) is queued again
        under the same number and is no round for the guard."""
        return attempts >= self.attempt_no

    @property
    def decided_after(self) -> bool:
        """Whether the velocity rules decide on the round once recorded (it rang and no
        one confirmed): :meth:`Guard.round_recorded` may write in the record's
        transaction; otherwise it writes nothing."""
        return self.rang and not self.confirmed


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """A round's end as one query (:meth:`Guard.round_record`): its clock, the query and
    its arguments."""

    end: RoundEnd
    now: datetime
    query: str
    args: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class SpendPart:
    """A CDR's spend as CTEs of the statement that stores it (:meth:`Guard.spend`): the
    CTEs, their arguments, and the column that tells :meth:`Guard.spend_counted` what
    they did."""

    ctes: str
    args: tuple[object, ...]
    column: str = sql.SPEND_CROSSED


@dataclass(frozen=True, slots=True)
class Screening:
    verdict: Verdict | None
    known: bool


class IntakeScreen:
    """The intake decisions of one batch: policy + lists, lock, velocity, brake, per
    request, on facts loaded once (:meth:`Guard.intake_screen`). Requests are judged in
    order; :meth:`accepted` counts one against its number, so the next request for the
    same number in the batch is judged as if the first were already stored.

    The intake decides in its statement (``callback_intake``, migration 1020); this is
    the same rule in Python, held equal to the statement's by
    tests/integration/test_callback_intake_rule.py."""

    def __init__(self, guard: Guard, now: datetime, facts: dict[str, sql.NumberFacts],
                 brake_count: int, load_s: float) -> None:
        self._guard = guard
        self.now = now              # the guard's clock for the whole batch
        self._facts = facts
        self._brake_count = brake_count
        self._load_s = load_s

    def screen(self, number: E164) -> Screening:
        started = time.perf_counter()
        guard, facts = self._guard, self._facts[str(number)]
        listing = Listing(blocked=facts.blocked, allowed=facts.allowed,
                          block_reason=facts.block_reason)
        verdict = guard.policy.evaluate(number, listing) \
            or velocity.check_intake(facts.history, self.now, guard.settings.velocity)
        if verdict is None and not facts.history.known:
            verdict = brake.check(False, self._brake_count, guard.settings.brake)
        metrics().guard_decision.observe(time.perf_counter() - started + self._load_s)
        return Screening(verdict, facts.history.known)

    def accepted(self, number: E164) -> None:
        key = str(number)
        self._facts[key] = self._facts[key].accepted(self.now)


class Guard:
    def __init__(self, pool: asyncpg.Pool, settings: GuardSettings, *,
                 alerter: Alerter | None = None,
                 clock: Clock = utcnow, fx: Converter | None = None) -> None:
        self.pool = pool
        self.settings = settings
        self.alerter = alerter or Alerter(settings.alerts, self._record_alert)
        if self.alerter.record is None:
            self.alerter.record = self._record_alert
        self.clock = clock
        self.fx = fx
        self.policy = Policy(settings.policy)
        self._tz = zoneinfo.ZoneInfo(settings.caps.timezone)

    def today(self, now: datetime | None = None) -> date:
        return (now or self.clock()).astimezone(self._tz).date()

    # --- intake -------------------------------------------------------------------------

    def intake_window(self) -> tuple[datetime, datetime | None]:
        """(now, start of the brake's window): what ``guard_number_facts`` needs to load
        the facts of an intake batch (``callback_intake``, migration 1020) or of
        the jobs a claim takes (:class:`ClaimFacts`); it counts up to
        :attr:`BrakeSettings.limit`. The window's start is None with the brake off
        (``[guard.brake] enabled = false``): nothing counted."""
        now = self.clock()
        b = self.settings.brake
        return now, sql.brake_since(now, b.window_s) if b.enabled else None

    def intake_screen(self, now: datetime, facts: Iterable[Any], load_s: float) -> IntakeScreen:
        """Decide an intake batch's requests on ``facts`` (``guard_facts`` rows, loaded
        under the numbers' locks as of ``now``, in ``load_s`` seconds)."""
        loaded = {row["number"]: row for row in facts}
        brake_count = int(next(iter(loaded.values()))["brake"]) if loaded else 0
        return IntakeScreen(self, now, {n: sql.facts_of(r) for n, r in loaded.items()},
                            brake_count, load_s / max(1, len(loaded)))

    def accepted(self, count: int) -> None:
        """``count`` requests were accepted and counted (``guard_note_accepted``)."""
        metrics().guard_accepted.inc(count)

    async def refused(self, conn: asyncpg.Connection, verdict: Verdict, *, stage: str,
                      number: str | None, merchant_id: str | None,
                      callback_id: str | None = None, edge_call_id: str | None = None,
                      message_id: str | None = None) -> None:
        """Store, count and log one refusal (in the caller's transaction)."""
        await sql.record_refusal(conn, stage=stage, verdict=verdict, number=number,
                                 merchant_id=merchant_id, callback_id=callback_id,
                                 edge_call_id=edge_call_id, message_id=message_id,
                                 now=self.clock())
        self.refusal_noted(verdict, stage=stage, number=number, merchant_id=merchant_id,
                           callback_id=callback_id or edge_call_id)

    def refusal_noted(self, verdict: Verdict, *, stage: str, number: str | None,
                      merchant_id: str | None, callback_id: str | None) -> None:
        """Count and log one refusal a statement stored (the intake's ``callback_intake``),
        as :meth:`refused` does."""
        metrics().guard_refusals.labels(stage, str(verdict.reason),
                                         merchant_id or UNKNOWN_MERCHANT).inc()
        log.warning("refused (%s) %s for %s/%s: %s", stage, number, merchant_id,
                    callback_id or "-", verdict)

    # --- before a round -------------------------------------------------------------------

    def claim_facts(self, now: datetime, row: Any, caps: Sequence[Any]) -> ClaimFacts:
        """The facts of a claimed job's number (a ``guard_facts`` row, loaded by the claim
        as of ``now`` from :meth:`intake_window`) and the caps' usage (``guard_cap_use``
        rows of every scope that has any, of :meth:`today`)."""
        return ClaimFacts(now, sql.facts_of(row), int(row["brake"]), sql.snapshot_of(caps))

    async def screen_round(self, callback_id: str, number: E164, merchant_id: str,
                           claimed: ClaimFacts) -> Verdict | None:
        """Lists, policy, lock and brake again, before every round, on the facts its
        claim read (records a refusal)."""
        started = time.perf_counter()
        verdict = self._undialable_on(number, claimed.facts, claimed.now)
        if verdict is None and not claimed.facts.history.known:
            verdict = brake.check(False, claimed.brake, self.settings.brake)
        metrics().guard_decision.observe(time.perf_counter() - started)
        if verdict is not None:
            async with self.pool.acquire() as conn, conn.transaction():
                await self.refused(conn, verdict, stage="dial", number=str(number),
                                   merchant_id=merchant_id, callback_id=callback_id)
        return verdict

    async def screen_click(self, number: E164, merchant_id: str) -> Screening:
        """A web click-to-call before it is stored: as a call-back request at intake
        (lists, policy, lock, velocity, brake; a refusal recorded at stage
        ``click_to_call``). Accepted, it counts like one once stored
        (``guard_note_accepted``, in the store's transaction)."""
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            verdict, facts = await self._undialable(conn, number, now)
            if verdict is None:
                verdict = velocity.check_intake(facts.history, now, self.settings.velocity)
            if verdict is None and not facts.history.known and self.settings.brake.enabled:
                count = await sql.unconfirmed_new_numbers(conn, now,
                                                          self.settings.brake.window_s,
                                                          self.settings.brake.limit)
                verdict = brake.check(False, count, self.settings.brake)
            if verdict is not None:
                await self.refused(conn, verdict, stage="click_to_call", number=str(number),
                                   merchant_id=merchant_id)
        return Screening(verdict, facts.history.known)

    async def screen_transfer(self, number: E164, merchant_id: str, callback_id: str
                              ) -> Verdict | None:
        """An operator's consult transfer to ``number``, before it is asked of the call:
        lists, policy and lock, as a call-back's number before a round (a refusal is
        recorded at stage ``transfer`` and alerted). Its leg is screened again, with the
        caps, at the originate (:meth:`screen_leg`, :meth:`leg_admission`)."""
        async with self.pool.acquire() as conn, conn.transaction():
            verdict, _ = await self._undialable(conn, number, self.clock())
            if verdict is not None:
                await self._dial_refused(conn, verdict, stage="transfer", number=str(number),
                                         merchant_id=merchant_id, callback_id=callback_id)
        return verdict

    async def _undialable(self, conn: asyncpg.Connection, number: E164, now: datetime
                          ) -> tuple[Verdict | None, sql.NumberFacts]:
        """Why ``number`` may not be dialled (lists, policy, lock), with its facts."""
        facts = await sql.number_facts(conn, str(number), now)
        return self._undialable_on(number, facts, now), facts

    def _undialable_on(self, number: E164, facts: sql.NumberFacts, now: datetime
                       ) -> Verdict | None:
        """Why ``number`` may not be dialled (lists, policy, lock) on its ``facts``."""
        listing = Listing(blocked=facts.blocked, allowed=facts.allowed,
                          block_reason=facts.block_reason)
        return self.policy.evaluate(number, listing) \
            or velocity.check_locked(facts.history.locked_until, now)

    async def _dial_refused(self, conn: asyncpg.Connection, verdict: Verdict, *, stage: str,
                            number: str, merchant_id: str, callback_id: str) -> None:
        """A leg to a number other than the customer's refused: recorded and alerted."""
        await self.refused(conn, verdict, stage=stage, number=number,
                           merchant_id=merchant_id, callback_id=callback_id)
        self.alerter.alert(Alert("destination_refused", f"{merchant_id}/{number}",
                                 f"{merchant_id} asked to dial {number} ({stage}, "
                                 f"{callback_id}): {verdict}", self.clock(),
                                 {"number": number, "merchant_id": merchant_id,
                                  "callback_id": callback_id, "stage": stage,
                                  "reason": str(verdict.reason)}))

    async def usable_routes(self, routes: Sequence[HasCarrier], callback_id: str,
                            merchant_id: str, claimed: ClaimFacts
                            ) -> tuple[list[int], Verdict | None]:
        """Indexes of routes whose trunk (and the site, and the merchant) is under every
        cap, on the usage the job's claim read; if none is, the refusal (recorded). Each
        leg's admission checks its own scopes again (:meth:`leg_admission`)."""
        keep: list[int] = []
        first: Verdict | None = None
        for i, route in enumerate(routes):
            hit = self._cap_hit(claimed.caps, caps.scopes_of(route.carrier_id, merchant_id))
            if hit is None:
                keep.append(i)
            elif first is None:
                first = hit[2]
        if keep or first is None:
            return keep, None
        async with self.pool.acquire() as conn, conn.transaction():
            await self.refused(conn, first, stage="dial", number=None,
                               merchant_id=merchant_id, callback_id=callback_id)
        return keep, first

    def _cap_hit(self, snap: sql.CapSnapshot, scopes: Sequence[str]
                 ) -> tuple[str, str, Verdict] | None:
        """(scope, kind, verdict) of the first cap reached in ``scopes`` (a leg's)."""
        for scope in scopes:
            for kind in caps.KINDS:
                if (scope, kind) in snap.trips:
                    verdict = Verdict(caps.reason_for(scope, kind),
                                      f"{scope} {kind} cap tripped; an operator must reset it")
                    return scope, kind, verdict
            usage = caps.Usage(channels=snap.channels.get(scope, 0), cps=snap.cps.get(scope, 0),
                               spend=snap.spend.get(scope, Decimal(0)))
            found = caps.check(scope, self.settings.caps.limits(scope), usage,
                               pace_cps=self.settings.caps.paces)
            if found is not None:
                return scope, found[0], found[1]
        return None

    def leg_admission(self, carrier_id: str, merchant_id: str, first: int) -> LegAdmission:
        """A leg's admission, for the statement that stores the leg (just before its
        originate) to carry: trips and spend, then a channel and a CPS slot in each
        capped scope (per-scope sharded counter rows, no lock shared by every leg), all
        in that one statement, so the caps are checked and taken with the leg's row and
        no transaction waits between them (``guard.store.admission_ctes``, its parameters
        from ``$first`` on). Its row goes to :meth:`admitted`; a leg to another party than
        the customer is screened first (:meth:`screen_leg`)."""
        scopes = caps.scopes_of(carrier_id, merchant_id)
        limits = [self.settings.caps.limits(scope) for scope in scopes]
        return LegAdmission(scopes, sql.admission_ctes(first), sql.admission_args(
            scopes, limits, paces=self.settings.caps.paces, day=self.today(),
            shards=caps.SHARDS))

    async def admitted(self, admission: LegAdmission, row: Any, callback_id: str,
                       merchant_id: str, *, waited_s: float = 0.0) -> Admission:
        """What the statement that carried ``admission`` did (its ``admitted`` columns in
        ``row``; the leg's lease held): the slots it took (they go on the leg row, given
        back when it ends), or the cap that refuses the leg (recorded, alerted, a latched
        kind tripped), or for a reached CPS cap that paces how long to wait (``pace_s``:
        the caller asks again, telling ``waited_s`` in all so far)."""
        if row["ok"]:
            if waited_s > 0:
                metrics().guard_paced.labels(merchant_id).inc()
                metrics().guard_pace_wait.labels(merchant_id).observe(waited_s)
            return Admission(tuple(row["cap_scopes"]), None, tuple(row["cap_shards"]),
                             row["admitted_at"])
        if row["reached_scope"] is None:        # the gate: a scope tripped or at a cap
            hit = self._cap_hit(sql.snapshot_of(row["usage"]), admission.scopes)
            assert hit is not None, f"no cap reached in {row['usage']}"
        else:
            scope, kind = row["reached_scope"], row["reached_kind"]
            wait = caps.pace(self.settings.caps, kind, waited_s, row["free_in"])
            if wait is not None:
                return Admission((), None, pace_s=wait)
            in_use = int(row["in_use"] or 0)
            verdict = caps.reached(scope, kind, self.settings.caps.limits(scope),
                                   caps.Usage(channels=in_use, cps=in_use))
            assert verdict is not None, dict(row)
            hit = scope, kind, verdict
        scope, kind, verdict = hit
        async with self.pool.acquire() as conn:
            await self._cap_reached(conn, scope, kind, verdict)
            await self.refused(conn, verdict, stage="dial", number=None,
                               merchant_id=merchant_id, callback_id=callback_id)
        return Admission((), GuardRefused(verdict, self.settings.caps.retry_s))

    async def screen_leg(self, number: str, callback_id: str, merchant_id: str
                         ) -> GuardRefused | None:
        """A leg to another party than the customer (an advisor, a transfer), before it is
        stored: its ``number`` refused by the lists, the policy or a lock (recorded at
        stage ``dial``, alerted), or None; the customer's was screened before the
        round."""
        async with self.pool.acquire() as conn:
            try:
                verdict, _ = await self._undialable(conn, E164.parse(number), self.clock())
            except InvalidNumber as exc:
                verdict = Verdict(Refusal.DESTINATION_MALFORMED, str(exc))
            if verdict is None:
                return None
            await self._dial_refused(conn, verdict, stage="dial", number=number,
                                     merchant_id=merchant_id, callback_id=callback_id)
        return GuardRefused(verdict)

    async def _cap_reached(self, conn: asyncpg.Connection, scope: str, kind: str,
                           verdict: Verdict) -> None:
        now = self.clock()
        latched = kind in self.settings.caps.latch
        tripped = latched and await sql.trip(conn, scope, kind, verdict, now)
        self._cap_announced(scope, kind, verdict, now, tripped=tripped)

    def _cap_announced(self, scope: str, kind: str, verdict: Verdict, now: datetime, *,
                       tripped: bool) -> None:
        """A cap reached: alerted when it does not latch; when it latches, counted and
        alerted only by the statement that tripped it (``tripped``)."""
        details = {"scope": scope, "kind": kind, "reason": str(verdict.reason)}
        if kind not in self.settings.caps.latch:
            self.alerter.alert(Alert("cap_reached", f"{scope}/{kind}", f"cap reached: {verdict}",
                                     now, details))
        elif tripped:
            metrics().guard_cap_trips.labels(scope, kind).inc()
            self.alerter.alert(Alert("cap_tripped", f"{scope}/{kind}",
                                     f"cap tripped, originations refused until an operator "
                                     f"resets it: {verdict}", now, details))

    # --- after a round and per CDR ------------------------------------------------------

    async def record_round(self, conn: asyncpg.Connection, end: RoundEnd) -> None:
        """In the caller's transaction (the round's finish): the round recorded under its
        number's lock, a confirmation counted; a round that rang unconfirmed may lock the
        number, put it on the block list for review, or engage the anomaly brake."""
        record = self.round_record(end, 1)
        row = await conn.fetchrow(record.query, *record.args)
        await self.round_recorded(conn, record, sql.round_facts_of(row))

    def round_record(self, end: RoundEnd, first: int) -> RoundRecord:
        """:meth:`record_round`'s statement, for one of the finish's statements to carry
        (its parameters from ``$first`` on); its facts then go to :meth:`round_recorded`
        in the same transaction."""
        now = self.clock()
        s = self.settings.velocity
        return RoundRecord(end, now, sql.round_ended_query(first), sql.round_ended_args(
            callback_id=end.callback_id, attempt_no=end.attempt_no, number=str(end.number),
            merchant_id=end.merchant_id, rang=end.rang, confirmed=end.confirmed, now=now,
            lock_window_s=s.lock_window_s, block_window_s=s.block_window_s,
            brake=self.settings.brake))

    def round_decided_after(self, record: RoundRecord, first: int
                            ) -> tuple[str, tuple[object, ...]]:
        """For a round's finish committed as one statement carrying ``record`` (its CTE
        ``round``), when the velocity rules decide on the round
        (:attr:`RoundEnd.decided_after`): a column of that statement that undoes it
        (SQLSTATE :data:`VELOCITY_ACTS`, migration 1000) when they act, i.e. when
        :meth:`round_recorded` would write; and its parameters, from ``$first`` on."""
        s = self.settings.velocity
        acts = velocity.acts_sql("round.recent_unconfirmed", "round.window_unconfirmed",
                                 "round.number_locked_until", f"${first}::timestamptz",
                                 f"${first + 1}::int", f"${first + 2}::int")
        return (f"guard_round_decided_after(coalesce(round.recorded AND {acts}, false)) "
                "AS round_alone", (record.now, s.lock_after, s.block_after))

    async def round_recorded(self, conn: asyncpg.Connection, record: RoundRecord,
                             got: sql.RoundFacts) -> None:
        """:meth:`record_round`'s decisions on what its statement wrote and read."""
        end, now, s = record.end, record.now, self.settings.velocity
        text = str(end.number)
        if not got.recorded or not end.rang and not end.confirmed:
            return
        if end.confirmed:
            log.debug("%s confirmed the call-back %s", text, end.callback_id)
            return
        action = velocity.after_unconfirmed(
            got.recent, got.window, got.locked_until is not None and got.locked_until > now,
            now, s)
        if action.lock_until is not None:
            await sql.lock(conn, text, action.lock_until, now)
            metrics().guard_locks.labels("lock").inc()
            log.warning("locked %s until %s: %d unconfirmed call-backs", text,
                        action.lock_until.isoformat(), got.recent)
        if action.block and await sql.add_entry(
                conn, number=text, list_name="block", source="auto", by="guard", now=now,
                reason=f"{got.window} unconfirmed call-backs in {s.block_window_s // 86400} "
                       "days: review", expires_at=None, replace=False):
            metrics().guard_locks.labels("block").inc()
            self.alerter.alert(Alert("number_blocked", text,
                                     f"{text} put on the block list for review: "
                                     f"{got.window} unconfirmed call-backs", now,
                                     {"number": text, "unconfirmed": got.window}))
        if not got.known and brake.engaged(got.new_unconfirmed, self.settings.brake):
            # the count is bounded at threshold + 1: the alert says "more than" the threshold
            self.alerter.alert(Alert(
                "brake_engaged", "new_numbers",
                f"anomaly brake: {brake.described(self.settings.brake)}; "
                "call-backs to new numbers paused",
                now, {"more_than": self.settings.brake.threshold,
                      "threshold": self.settings.brake.threshold}))

    def spend(self, carrier_id: str, merchant_id: str, cost: Money, first: int,
              gate: str) -> SpendPart | None:
        """A CDR's carrier cost added to its scopes' spend (each in a shard row no other
        CDR holds: concurrent CDRs do not wait for each other) and a spend cap it took
        over tripped, as CTEs for the statement that stores the CDR to carry (after its
        CTE ``gate``, a row when the CDR is new; parameters from ``$first`` on;
        ``guard.store.spend_ctes``): committed with that statement, no spend row lock is
        held across a round trip. None when the cost cannot count (logged). Its column
        (:data:`SpendPart.column`) goes to :meth:`spend_counted`. Two CDRs committing at
        once see each other's cost only once committed, so a crossing they make together
        is tripped by the next leg's admission (``leg_admission`` reads the committed
        spend)."""
        cfg = self.settings.caps
        try:
            amount = cost if cost.currency == cfg.currency or self.fx is None \
                else self.fx.convert(cost, cfg.currency)
        except MoneyError as exc:
            log.error("spend of %s on %s not counted against the caps: %s", cost, carrier_id,
                      exc)
            return None
        if amount.currency != cfg.currency:
            log.error("spend of %s on %s not counted: caps are in %s and no FX rate is set",
                      cost, carrier_id, cfg.currency)
            return None
        scopes = caps.scopes_of(carrier_id, merchant_id)
        args = sql.spend_args(
            self.today(), scopes, cfg.currency, amount.amount,
            [cfg.limits(scope) for scope in scopes],
            [str(caps.reason_for(scope, "spend_daily")) for scope in scopes],
            latch="spend_daily" in cfg.latch, now=self.clock(), shards=caps.SHARDS)
        return SpendPart(sql.spend_ctes(first, gate), args)

    def spend_counted(self, crossed: Sequence[Any]) -> None:
        """After the statement that carried :meth:`spend` (its ``spend_crossed``): the
        spend caps the cost took over alerted, a trip it stored counted."""
        now = self.clock()
        for one in crossed:
            scope = one["scope"]
            verdict = Verdict(caps.reason_for(scope, "spend_daily"), one["detail"])
            self._cap_announced(scope, "spend_daily", verdict, now, tripped=one["tripped"])

    async def add_spend(self, conn: asyncpg.Connection, carrier_id: str, merchant_id: str,
                        cost: Money) -> None:
        """:meth:`spend` as a statement of its own on ``conn`` (in the caller's
        transaction, if one is open)."""
        part = self.spend(carrier_id, merchant_id, cost, 1, "(SELECT) gate")
        if part is None:
            return
        row = await conn.fetchrow(f"WITH {part.ctes} SELECT {part.column}", *part.args)
        self.spend_counted(row["spend_crossed"])

    # --- operator actions -------------------------------------------------------------

    async def reset_caps(self, scope: str | None, kind: str | None, by: str) -> int:
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            count = await sql.reset_caps(conn, scope, kind, by, now, self.today(now))
        log.warning("caps reset by %s: scope=%s kind=%s (%d trips)", by, scope or "all",
                    kind or "all", count)
        return count

    async def status(self) -> dict[str, Any]:
        now = self.clock()
        async with self.pool.acquire() as conn:
            trips = await sql.active_trips(conn)
            snap = await sql.cap_snapshot(conn, self.today(now))
            # an operator's look: the full count (None with the brake off: not counted)
            new_unconfirmed = await sql.unconfirmed_new_numbers(
                conn, now, self.settings.brake.window_s, None) \
                if self.settings.brake.enabled else None
            locked = await sql.locked_numbers(conn, now)
        return {"trips": trips, "channels": snap.channels, "cps": snap.cps,
                "spend_today": {k: str(v) for k, v in snap.spend.items()},
                "spend_currency": self.settings.caps.currency,
                "brake": {"enabled": self.settings.brake.enabled,
                          "unconfirmed_new_numbers": new_unconfirmed,
                          "threshold": self.settings.brake.threshold,
                          "engaged": new_unconfirmed is not None
                          and brake.engaged(new_unconfirmed, self.settings.brake)},
                "locked_numbers": locked}

    async def _record_alert(self, alert: Alert) -> bool:
        async with self.pool.acquire() as conn:
            return await sql.record_alert(conn, at=alert.at, kind=alert.kind, key=alert.key,
                                          message=alert.message, details=dict(alert.details),
                                          repeat_s=self.settings.alerts.repeat_s)
