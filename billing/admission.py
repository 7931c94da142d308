"""May this customer start a consultation with this advisor, and for how long?

The question the consultation wiring asks before ringing an advisor: the merchant, the
customer's account, the advisor's price per minute and the longest talk wanted. The
answer (:class:`Admission`) is allowed or not, the most talk seconds billing stands
behind, and a reason id for the IVR to say:

* prepaid: the available balance (other live consultations' holds already taken out, as
  the ledger keeps it) at the price under the merchant's policy: below the first billed
  unit (the minimum charge) ``balance-too-low``; else the seconds it pays for;
* postpaid: a card on file (else ``no-card``), no charge in dunning (``in-dunning``),
  fewer unpaid charges than the limit (``unpaid-limit``); the talk is the policy's
  longest consultation.

:func:`decide` is the pure decision over :class:`Facts`; :class:`Admissions` reads the
facts from PostgreSQL (the policy, the ledger's books, :func:`billing.standing.standing`).
Admitting holds nothing: a prepaid consultation still reserves (:meth:`billing.ledger.
Ledger.reserve`) when it connects, which is what guards concurrent consultations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from billing import policy
from billing.ledger import available_yen
from billing.rating import Terms, seconds_affordable
from billing.settings import MAX_UNPAID_CHARGES
from billing.standing import Standing, standing

ALLOWED = "ok"
#: the refusals, for the IVR to say
REASONS = ("balance-too-low", "no-card", "in-dunning", "unpaid-limit")


@dataclass(frozen=True, slots=True)
class Facts:
    postpaid: bool
    #: prepaid: the available balance (never below zero here)
    available_yen: int
    #: postpaid: the card on file, unpaid charges, dunning
    standing: Standing


@dataclass(frozen=True, slots=True)
class Admission:
    allowed: bool
    #: the most talk seconds billing stands behind (0 when refused)
    max_talk_s: int
    #: ``ok`` or one of :data:`REASONS`
    reason: str
    #: prepaid: what is available and what the first billed unit costs
    available_yen: int = 0
    needed_yen: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "max_talk_s": self.max_talk_s,
                "reason": self.reason, "available_yen": self.available_yen,
                "needed_yen": self.needed_yen}


def decide(facts: Facts, terms: Terms, wanted_s: int, *,
           max_unpaid_charges: int = MAX_UNPAID_CHARGES) -> Admission:
    """The answer for a consultation of up to ``wanted_s`` seconds under ``terms``."""
    wanted_s = max(wanted_s, 0)
    if facts.postpaid:
        refusal = ("no-card" if not facts.standing.has_card
                   else "in-dunning" if facts.standing.in_dunning
                   else "unpaid-limit" if facts.standing.unpaid >= max_unpaid_charges
                   else None)
        if refusal is not None:
            return Admission(False, 0, refusal)
        return Admission(True, min(terms.max_talk_s, wanted_s), ALLOWED)
    available = max(facts.available_yen, 0)
    needed = terms.first_unit_yen()
    if available < needed:
        return Admission(False, 0, "balance-too-low", available, needed)
    return Admission(True, min(seconds_affordable(available, terms), wanted_s), ALLOWED,
                     available, needed)


class Admissions:
    """:func:`decide` over the facts in the database. ``postpaid_merchants``: the merchants
    whose customers pay after the consultation (the others are prepaid)."""

    def __init__(self, pool: asyncpg.Pool, *, postpaid_merchants: frozenset[str] = frozenset(),
                 max_unpaid_charges: int = MAX_UNPAID_CHARGES) -> None:
        self.pool = pool
        self.postpaid_merchants = postpaid_merchants
        self.max_unpaid_charges = max_unpaid_charges

    async def facts(self, merchant_id: str, account: str,
                    db: asyncpg.Pool | asyncpg.Connection | None = None) -> Facts:
        """Read on ``db`` (default: the pool)."""
        db = db or self.pool
        if merchant_id in self.postpaid_merchants:
            return Facts(True, 0, await standing(db, merchant_id, account))
        return Facts(False, await available_yen(db, merchant_id, account),
                     Standing(False, 0, False))

    async def ask(self, merchant_id: str, account: str, price_per_minute_yen: int,
                  wanted_s: int, group_id: int | None = None) -> Admission:
        """May ``account`` start a consultation at this price of up to ``wanted_s`` (through
        ``group_id``: under the group's policy)?"""
        terms = await policy.terms_for(self.pool, merchant_id, price_per_minute_yen, group_id)
        return await self.ask_under(merchant_id, account, terms, wanted_s)

    async def ask_under(self, merchant_id: str, account: str, terms: Terms, wanted_s: int,
                        db: asyncpg.Pool | asyncpg.Connection | None = None) -> Admission:
        """:meth:`ask` under terms the caller has read already (the facts read on ``db``,
        default: the pool)."""
        return decide(await self.facts(merchant_id, account, db), terms, wanted_s,
                      max_unpaid_charges=self.max_unpaid_charges)
