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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import asyncpg

from advisors.store import AdvisorStore
from billing import policy
from billing.admission import Admission, Admissions
from billing.ledger import Ledger, Refusal, Reservation, Settlement
from billing.metrics import billing as billing_metrics
from billing.rating import Terms
from billing.settings import BillingSettings
from billing.standing import Charge
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
                    group_id: int | None = None) -> Plan: ...
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


class ConsultBilling:
    def __init__(self, pool: asyncpg.Pool, settings: BillingSettings, *,
                 fx: FxTable | None = None, notices: NoticeSink | None = None) -> None:
        self.pool = pool
        self.postpaid_merchants = settings.postpaid_merchants
        self.admissions = Admissions(pool, postpaid_merchants=settings.postpaid_merchants,
                                     max_unpaid_charges=settings.max_unpaid_charges)
        self.ledger = Ledger(pool, fx=fx)
        self.customers = AdvisorStore(pool)
        self.postpaid: Postpaid | None = None
        if settings.stripe is not None and settings.postpaid_merchants:
            from billing.postpaid import Postpaid  # needs stripe (the billing extra)
            self.postpaid = Postpaid(pool, settings.stripe.client(),
                                     retry_after_s=settings.retry_after_s, fx=fx,
                                     notices=notices)

    async def admit(self, merchant_id: str, number: E164, price_per_minute_yen: int,
                    group_id: int | None = None) -> Plan:
        """The account, the terms (the merchant's policy; through a group, with the
        group's fields) and admission's answer, read on one pooled connection (each
        connection given back to the pool costs a round trip of its own)."""
        async with self.pool.acquire() as conn:
            account = await self.customers.account_by_number(merchant_id, number, conn)
            account = str(number) if account is None else account
            terms = (await policy.in_force(conn, merchant_id, group_id)).terms(
                price_per_minute_yen)
            admission = await self.admissions.ask_under(merchant_id, account, terms,
                                                        terms.max_talk_s, conn)
        if not admission.allowed:
            billing_metrics().refusals.labels(merchant_id, admission.reason).inc()
        return Plan(account, terms, merchant_id in self.postpaid_merchants, admission)

    async def reserve(self, merchant_id: str, plan: Plan, consultation_id: str,
                      at_most_s: int | None) -> Reservation | Refusal:
        got = await self.ledger.reserve(merchant_id, plan.account, consultation_id,
                                        plan.terms, at_most_s=at_most_s)
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
