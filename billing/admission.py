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
facts from PostgreSQL, for many asks in one statement (:func:`admission_sql`: the
policy in force, the ledger's available book, :func:`billing.standing.standing`'s
counts) and decides each.
Admitting holds nothing: a prepaid consultation still reserves (:meth:`billing.ledger.
Ledger.reserve`) when it connects, which is what guards concurrent consultations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from billing import policy
from billing.ledger import BOOK_BALANCE
from billing.rating import Terms, seconds_affordable
from billing.settings import MAX_UNPAID_CHARGES
from billing.standing import CHARGES, Standing

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


#: the asks as :data:`ADMIT` reads them: merchant, account, group, postpaid ($1..$4), in order
ASKS = """SELECT k.n, k.merchant_id, k.account, k.group_id, k.postpaid
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bool[])
         WITH ORDINALITY AS k (merchant_id, account, group_id, postpaid, n)"""


def admission_sql(asks: str) -> str:
    """The statement that reads what admission decides on for every ask of ``asks`` (a
    query of columns ``n, merchant_id, account, group_id, postpaid``: :data:`ASKS`, or a
    caller's that finds the accounts itself), in ``n`` order: the merchant's newest policy
    and the group's, and the facts: prepaid, the available balance; postpaid, the card on
    file and the unpaid and failed charges."""
    fields = ", ".join(f"'{n}', {{t}}.{n}" for n in policy.FIELDS)
    return f"""
    WITH w AS ({asks})
    SELECT w.n, w.account,
           CASE WHEN p.id IS NOT NULL THEN jsonb_build_object({fields.format(t="p")})
               END AS policy,
           CASE WHEN g.id IS NOT NULL THEN jsonb_build_object({fields.format(t="g")})
               END AS group_policy,
           CASE WHEN NOT w.postpaid AND acct.id IS NOT NULL THEN
               {BOOK_BALANCE.format(account="acct.id", book="'available'")}
               END AS available_yen,
           w.postpaid AND EXISTS (SELECT 1 FROM billing_card_registrations r
                                  JOIN billing_cards cd ON cd.registration_id = r.id
                                  WHERE r.account_id = acct.id) AS has_card,
           s.unpaid, s.failed
    FROM w
    LEFT JOIN billing_accounts acct ON acct.merchant_id = w.merchant_id
                                   AND acct.account = w.account
    LEFT JOIN LATERAL (SELECT * FROM billing_policies
                       WHERE merchant_id = w.merchant_id ORDER BY id DESC LIMIT 1) p ON true
    LEFT JOIN LATERAL (SELECT * FROM billing_group_policies
                       WHERE merchant_id = w.merchant_id AND group_id = w.group_id
                       ORDER BY id DESC LIMIT 1) g ON true
    LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE state IN ('pending', 'failed')) AS unpaid,
               count(*) FILTER (WHERE state = 'failed') AS failed
        FROM ({CHARGES} WHERE c.account_id = acct.id) s WHERE w.postpaid) s ON true
    ORDER BY w.n"""


#: :func:`admission_sql` of the accounts asked for
ADMIT = admission_sql(ASKS)


@dataclass(frozen=True, slots=True)
class Ask:
    """One consultation's admission: at this advisor's price, through ``group_id`` (the
    group's policy over the merchant's), for up to ``wanted_s`` (None: the longest the
    terms allow). ``account`` is what the statement's asks name the account by (with
    :data:`ADMIT`, the account itself)."""

    merchant_id: str
    account: str
    price_per_minute_yen: int
    group_id: int | None = None
    wanted_s: int | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """The account the statement found, the terms in force, prepaid or postpaid, and the
    admission."""

    account: str
    terms: Terms
    postpaid: bool
    admission: Admission


class Admissions:
    """:func:`decide` over the facts in the database. ``postpaid_merchants``: the merchants
    whose customers pay after the consultation (the others are prepaid)."""

    def __init__(self, pool: asyncpg.Pool, *, postpaid_merchants: frozenset[str] = frozenset(),
                 max_unpaid_charges: int = MAX_UNPAID_CHARGES) -> None:
        self.pool = pool
        self.postpaid_merchants = postpaid_merchants
        self.max_unpaid_charges = max_unpaid_charges

    async def ask(self, merchant_id: str, account: str, price_per_minute_yen: int,
                  wanted_s: int, group_id: int | None = None) -> Admission:
        """May ``account`` start a consultation at this price of up to ``wanted_s`` (through
        ``group_id``: under the group's policy)?"""
        (got,) = await self.answer_all(self.pool, [Ask(merchant_id, account,
                                                       price_per_minute_yen, group_id,
                                                       wanted_s)])
        if isinstance(got, Exception):
            raise got
        return got.admission

    async def answer_all(self, db: asyncpg.Pool | asyncpg.Connection, asks: Sequence[Ask],
                         sql: str = ADMIT) -> list[Answer | Exception]:
        """Each ask's answer, the facts of all read by one statement on ``db`` (``sql``:
        :data:`ADMIT`, or :func:`admission_sql` over asks that find their accounts); an
        ask whose terms the rating refuses gets its :class:`~billing.rating.TermsError`
        (the others their answers)."""
        rows = await db.fetch(sql, [a.merchant_id for a in asks], [a.account for a in asks],
                              [a.group_id for a in asks],
                              [a.merchant_id in self.postpaid_merchants for a in asks])
        answers: list[Answer | Exception] = []
        for ask, row in zip(asks, rows, strict=True):
            try:
                answers.append(self._answer(ask, row))
            except Exception as exc:  # that ask's own error, for its caller
                answers.append(exc)
        return answers

    def _answer(self, ask: Ask, row: asyncpg.Record) -> Answer:
        in_force = policy.Policy(**(row["policy"] or {}))
        if ask.group_id is not None and row["group_policy"] is not None:
            own = row["group_policy"]
            in_force = policy.GroupPolicy(ask.group_id, tuple(
                (n, own[n]) for n in policy.FIELDS if own[n] is not None)).over(in_force)
        terms = in_force.terms(ask.price_per_minute_yen)
        postpaid = ask.merchant_id in self.postpaid_merchants
        facts = Facts(postpaid, int(row["available_yen"] or 0),
                      Standing(row["has_card"], row["unpaid"] or 0, (row["failed"] or 0) > 0))
        wanted = terms.max_talk_s if ask.wanted_s is None else ask.wanted_s
        return Answer(row["account"], terms, postpaid, decide(
            facts, terms, wanted, max_unpaid_charges=self.max_unpaid_charges))
