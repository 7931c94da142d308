"""Billing a consultation, the database side: admission before any advisor is rung, the
prepaid meter's ``Reserve``/``Extend``/``Settle`` on the ledger, the postpaid charge after.

:class:`ConsultBilling` is the :class:`BillingPort` of
:class:`~callback_server.consult_runner.ConsultRunner`. The customer's billing account is
the ``account`` of the merchant's customer with the called number (``advisors.customers``),
else the number itself (E.164 digits: a caller nobody entered has no balance and no card,
so admission refuses them). A merchant in ``[billing] postpaid_merchants`` charges the
card on file after the consultation (:class:`billing.postpaid.Postpaid`, keyed by the
consultation id); every other merchant is prepaid. A postpaid consultation a killed
server left talking is charged by the restart's reconciler (:meth:`ConsultBilling.recharge`)
from its saved record, with the account and terms its runner kept (:class:`ChargeTo`): the
same charge, keyed by the same consultation id, so it is made once whoever makes it.

Admission and the first reservation are group-committed (:class:`shared.intake_batch.
Batcher`): the calls that arrive together are one admission statement per batch
(billing's :func:`~billing.admission.admission_sql` over the asks' accounts by number),
admission decided in Python (:func:`billing.admission.decide`). A prepaid ask that names
its consultation (the consult runner's) is admitted and held in that same statement
(:func:`~billing.admission.admit_and_hold_sql`: the meter's first slice, the ledger's rule
of ``billing_reserve_holds`` on the facts read once under the accounts' locks), so its
``reserve`` of that slice answers from the plan with no round trip: one round trip a
batch for both (billing's function ``billing_admit_and_hold``, called with the accounts
this package's query finds by the numbers: :func:`billing.admission.admit_and_hold_call`).
Other reservations are one statement (:func:`billing.ledger.reserve_all`) per batch.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import asyncpg

from billing.admission import (
    Admission,
    Admissions,
    admission_sql,
    admit_and_hold_call,
    asks_sql,
)
from billing.admission import Ask as AdmitAsk
from billing.ledger import Ledger, Refusal, Reservation, ReserveAsk, Settlement, reserve_all
from billing.metrics import billing as billing_metrics
from billing.rating import Terms
from billing.settings import BillingSettings
from billing.standing import Charge
from callback_server import consult_meter
from shared.intake_batch import Batcher
from shared.money import FxTable
from shared.phone import E164

if TYPE_CHECKING:
    from billing.postpaid import NoticeSink, Postpaid

log = logging.getLogger("callback.consult.billing")

#: who the ledger's and the charges' movements name
BY = "consultation"
RESCUE = "rescue"

#: the call-back's live reservations whose consultation record was saved, with its talk
_RECORDED_LIVE = """
    SELECT r.id, c.talk_s FROM billing_reservations r
    JOIN billing_accounts a ON a.id = r.account_id
    JOIN consultations c ON c.consultation_id = r.consultation_id
                        AND c.merchant_id = a.merchant_id
    LEFT JOIN billing_settlements s ON s.reservation_id = r.id
    WHERE a.merchant_id = $1 AND c.callback_id = $2 AND s.reservation_id IS NULL
    ORDER BY r.id"""


#: the customer's account of a called number (``advisors.customers``, else the number)
_CUSTOMER_OF_NUMBER = """
    LEFT JOIN customer_numbers cn ON cn.merchant_id = k.merchant_id AND cn.number = k.number
    LEFT JOIN customers cu ON cu.merchant_id = cn.merchant_id AND cu.id = cn.customer_id"""


def _asks_by_number() -> str:
    """The asks of an admission batch (merchant, called number, group, postpaid) with the
    customer's account, for :func:`billing.admission.admission_sql`."""
    return asks_sql(False, key="number", account="coalesce(cu.account, k.number)",
                    joins=_CUSTOMER_OF_NUMBER)


#: the customers' accounts of a batch's called numbers ($1 merchants, $2 numbers), in the
#: asks' order, for :func:`billing.admission.admit_and_hold_call`
_ACCOUNTS_BY_NUMBER = f"""ARRAY(SELECT coalesce(cu.account, k.number)
        FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k (merchant_id, number, n)
        {_CUSTOMER_OF_NUMBER.strip()}
        ORDER BY k.n)"""

_ADMIT = admission_sql(_asks_by_number())
_ADMIT_AND_HOLD = admit_and_hold_call(_ACCOUNTS_BY_NUMBER)


async def warm_connection(conn: asyncpg.Connection) -> None:
    """Leave a new pooled connection as one that has served admissions: the admission and
    its holds' statement (the batches' call of ``billing_admit_and_hold``) and the
    admission-only one sent once each with no asks, so that asyncpg has them prepared and
    the PostgreSQL session has compiled the functions and planned the statements the call
    reaches. A connection's first batch of 100 took 22 ms so against 10 ms (8 its next),
    the dry calls 12 ms (:func:`shared.db.create_pool`'s ``warm``; the callback site's
    pool). Holds nothing, writes nothing. A database not migrated yet (the site's pool
    opens before its migrations run) is left alone."""
    try:
        await conn.fetch(_ADMIT_AND_HOLD, *[[]] * 8)
        await conn.fetch(_ADMIT, *[[]] * 4)
    except (asyncpg.UndefinedFunctionError, asyncpg.UndefinedTableError) as exc:
        log.debug("connection not warmed: %s (not migrated yet)", exc)


@functools.cache
def _first_slice_s() -> int | None:
    """The meter's first slice (:func:`callback_server.consult_meter.new_meter`'s; the same
    for every consultation), built once rather than a meter for every ask."""
    return consult_meter.new_meter("").first_slice_s()


#: a consultation's saved talk seconds
_RECORDED_TALK = """
    SELECT talk_s FROM consultations WHERE merchant_id = $1 AND consultation_id = $2"""


@dataclass(frozen=True, slots=True)
class ChargeTo:
    """Whom a postpaid consultation is charged to afterwards, and how it is rated."""

    account: str
    terms: Terms


@dataclass(frozen=True, slots=True)
class Plan:
    """What billing stands behind for one consultation: the account, the terms it is
    rated with, prepaid or postpaid, and the admission's answer."""

    account: str
    terms: Terms
    postpaid: bool
    admission: Admission
    #: prepaid, admitted with its consultation named: the first hold the admission's
    #: statement made (or refused) for that consultation and slice, which ``reserve``
    #: answers with (None: none made, ``reserve`` asks the ledger)
    held: Reservation | Refusal | None = field(default=None, compare=False)
    held_for: tuple[str, int | None] | None = field(default=None, compare=False)

    def at_price(self, price_per_minute_yen: int) -> Plan:
        """The plan rated at another price (the member of a group who answered)."""
        return replace(self, terms=replace(self.terms,
                                           price_per_minute_yen=price_per_minute_yen))

    @property
    def charge_to(self) -> ChargeTo | None:
        """The charge after the consultation (None: prepaid)."""
        return ChargeTo(self.account, self.terms) if self.postpaid else None


class BillingPort(Protocol):
    async def admit(self, merchant_id: str, number: E164, price_per_minute_yen: int,
                    group_id: int | None = None, consultation_id: str | None = None
                    ) -> Plan: ...
    async def reserve(self, merchant_id: str, plan: Plan, consultation_id: str,
                      at_most_s: int | None) -> Reservation | Refusal: ...
    async def extend(self, merchant_id: str, reservation_id: int, at_most_s: int | None
                     ) -> Reservation: ...
    async def reprice(self, merchant_id: str, reservation_id: int, price_per_minute_yen: int,
                      advisor_id: int | None) -> Reservation: ...
    async def settle(self, merchant_id: str, reservation_id: int, talk_s: int) -> Settlement: ...
    async def charge(self, merchant_id: str, to: ChargeTo, consultation_id: str, talk_s: int
                     ) -> Charge | None: ...
    async def recharge(self, merchant_id: str, to: ChargeTo, consultation_id: str
                       ) -> Charge | None: ...
    async def rescue(self, merchant_id: str, callback_id: str) -> list[Settlement]: ...


@dataclass
class _Admitting(Batcher[AdmitAsk, Plan]):
    """Admission of the asks that arrive together (each naming the called number): one
    statement a batch, then :func:`billing.admission.decide` for each
    (:meth:`billing.admission.Admissions.answer_all`; an ask whose terms the rating
    refuses fails alone)."""

    admissions: Admissions = field(kw_only=True)

    async def write(self, conn: asyncpg.Connection, batch: Sequence[tuple[str, AdmitAsk]]
                    ) -> Mapping[str, Plan | Exception]:
        asks = [ask for _, ask in batch]
        answers = await self.admissions.answer_all(conn, asks, _ADMIT, _ADMIT_AND_HOLD)
        return {key: a if isinstance(a, Exception)
                else Plan(a.account, a.terms, a.postpaid, a.admission, a.hold,
                          None if a.hold is None or ask.consultation_id is None
                          else (ask.consultation_id, ask.at_most_s))
                for (key, ask), a in zip(batch, answers, strict=True)}


@dataclass
class _Reserving(Batcher[ReserveAsk, Reservation | Refusal]):
    """The first holds of the consultations that connect together: one statement a batch,
    its own transaction (:func:`billing.ledger.reserve_all`), answered after its commit."""

    async def write(self, conn: asyncpg.Connection, batch: Sequence[tuple[str, ReserveAsk]]
                    ) -> Mapping[str, Reservation | Refusal | Exception]:
        got = await reserve_all(conn, [ask for _, ask in batch])
        return dict(zip((key for key, _ in batch), got, strict=True))


class ConsultBilling:
    """Admission and the first reservation are group-committed: the calls that arrive
    together share one statement (admission) and one statement (reservations) a batch
    of up to ``max_batch``, each batch on a connection taken from ``pool`` for it (at
    most ``max_in_flight`` batches of each at once), so 200 consultations asking at once
    cost a handful of round trips instead of a queue for the pool's connections. Batches
    of up to 256: a burst of 200 is one call, which costs the database less CPU than two
    calls of 100 and does not depend on the kernel running two calls on two cores at once
    (bench/README, "one pass and one batch"). A second batch is in flight while the first
    runs, so a steady trickle of asks never waits behind a whole batch."""

    def __init__(self, pool: asyncpg.Pool, settings: BillingSettings, *,
                 fx: FxTable | None = None, notices: NoticeSink | None = None,
                 max_batch: int = 256, max_in_flight: int = 2) -> None:
        self.pool = pool
        self.postpaid_merchants = settings.postpaid_merchants
        self.admissions = Admissions(pool, postpaid_merchants=settings.postpaid_merchants,
                                     max_unpaid_charges=settings.max_unpaid_charges)
        self.ledger = Ledger(pool, fx=fx)
        self.admitting = _Admitting(pool, "admission", max_batch, max_in_flight,
                                    hold=False, admissions=self.admissions)
        self.reserving = _Reserving(pool, "reservation", max_batch, max_in_flight,
                                    hold=False)
        self._asks = itertools.count()
        self.postpaid: Postpaid | None = None
        if settings.stripe is not None and settings.postpaid_merchants:
            from billing.postpaid import Postpaid  # needs stripe (the billing extra)
            self.postpaid = Postpaid(pool, settings.stripe.client(),
                                     retry_after_s=settings.retry_after_s, fx=fx,
                                     notices=notices)

    async def admit(self, merchant_id: str, number: E164, price_per_minute_yen: int,
                    group_id: int | None = None, consultation_id: str | None = None
                    ) -> Plan:
        """The account, the terms (the merchant's policy; through a group, with the
        group's fields) and admission's answer, read with the asks that arrive with it
        (one statement a batch). With ``consultation_id``, a prepaid consultation that is
        admitted also holds the meter's first slice in that statement (``Plan.held``),
        which :meth:`reserve` of that consultation and slice then answers with."""
        first = None if consultation_id is None else _first_slice_s()
        plan = await self.admitting.deliver(
            str(next(self._asks)), AdmitAsk(merchant_id, str(number), price_per_minute_yen,
                                            group_id, consultation_id=consultation_id,
                                            at_most_s=first))
        if not plan.admission.allowed:
            billing_metrics().refusals.labels(merchant_id, plan.admission.reason).inc()
        return plan

    async def reserve(self, merchant_id: str, plan: Plan, consultation_id: str,
                      at_most_s: int | None) -> Reservation | Refusal:
        """:meth:`billing.ledger.Ledger.reserve`, with the reservations that arrive with
        it (one statement a batch; answered after its commit). The same consultation
        asked again while its first ask is in flight shares that one's answer. The hold
        the admission made for this consultation and slice (``plan.held``) is the answer
        without asking the ledger again."""
        if plan.held is not None and plan.held_for == (consultation_id, at_most_s):
            got: Reservation | Refusal = plan.held
            if isinstance(got, Refusal):
                billing_metrics().refusals.labels(merchant_id, got.reason).inc()
            return got
        key = "\x00".join((merchant_id, plan.account, consultation_id))
        got = await self.reserving.deliver(key, ReserveAsk(
            merchant_id, plan.account, consultation_id, plan.terms, at_most_s))
        if isinstance(got, Refusal):    # another call's hold took it since the admission
            billing_metrics().refusals.labels(merchant_id, got.reason).inc()
        return got

    async def extend(self, merchant_id: str, reservation_id: int, at_most_s: int | None
                     ) -> Reservation:
        return await self.ledger.extend(merchant_id, reservation_id, at_most_s=at_most_s)

    async def reprice(self, merchant_id: str, reservation_id: int, price_per_minute_yen: int,
                      advisor_id: int | None) -> Reservation:
        return await self.ledger.reprice(merchant_id, reservation_id, price_per_minute_yen,
                                         advisor_id=advisor_id)

    async def settle(self, merchant_id: str, reservation_id: int, talk_s: int) -> Settlement:
        return await self.ledger.settle(merchant_id, reservation_id, talk_s)

    async def rescue(self, merchant_id: str, callback_id: str) -> list[Settlement]:
        """Settle the call-back's reservations a dead process left live after saving
        their consultation's record, with the record's talk seconds (by ``rescue``)."""
        rows = await self.pool.fetch(_RECORDED_LIVE, merchant_id, callback_id)
        return [await self.ledger.settle(merchant_id, r["id"], r["talk_s"], by=RESCUE,
                                         reason="from the consultation record")
                for r in rows]

    async def charge(self, merchant_id: str, to: ChargeTo, consultation_id: str, talk_s: int,
                     *, by: str = BY) -> Charge | None:
        """The postpaid charge; None when it costs nothing or Stripe's answer is not known
        (the charge stays recorded and ``Postpaid.reconcile`` finishes it)."""
        assert self.postpaid is not None, "a postpaid merchant needs [billing.stripe]"
        from billing.stripe_payments import Pending
        try:
            return await self.postpaid.charge(merchant_id, to.account, consultation_id,
                                              talk_s, to.terms, by=by)
        except Pending as exc:
            log.warning("consultation %s: charge pending: %s", consultation_id, exc)
            return None

    async def recharge(self, merchant_id: str, to: ChargeTo, consultation_id: str
                       ) -> Charge | None:
        """The postpaid charge of a consultation a dead server left, from its saved
        record's talk seconds (by ``rescue``); None when it has no record yet, costs
        nothing or Stripe's answer is not known. A charge already made is returned as it
        is (one per account and consultation)."""
        talk_s = await self.pool.fetchval(_RECORDED_TALK, merchant_id, consultation_id)
        if talk_s is None:
            return None
        return await self.charge(merchant_id, to, consultation_id, talk_s, by=RESCUE)
