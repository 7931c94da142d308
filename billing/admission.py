"""May this customer start a consultation with this advisor, and for how long?

The question the consultation wiring asks before ringing an advisor: the merchant, the
customer's account, the advisor's price per minute and the longest talk wanted. The
answer (:class:`Admission`) is allowed or not, the most talk seconds billing stands
behind, and a reason id for the IVR to say:

* prepaid: the available balance (other live consultations' holds already taken out:
  the ledger's available book less its live reservations' holds) at the price under the
  merchant's policy: below the first billed unit (the minimum charge)
  ``balance-too-low``; else the seconds it pays for;
* postpaid: a card on file (else ``no-card``), no charge in dunning (``in-dunning``),
  fewer unpaid charges than the limit (``unpaid-limit``); the talk is the policy's
  longest consultation.

:func:`decide` is the pure decision over :class:`Facts`; :class:`Admissions` reads the
facts from PostgreSQL, for many asks in one statement (:func:`admission_sql`: the
policy in force, the ledger's available balance, :func:`billing.standing.standing`'s
counts) and decides each.
Admitting alone holds nothing: a prepaid consultation still reserves (:meth:`billing.
ledger.Ledger.reserve`) before it connects, which is what guards concurrent consultations.
An ask that names its consultation (``Ask.consultation_id``) is admitted and, prepaid
and admitted, reserved in the same call (:func:`admit_and_hold_sql`: the body of the
function ``billing_admit_and_hold``, migrations 0022, 0024, 0027 and 0028, which
:data:`ADMIT_AND_HOLD` calls in one round trip, its own transaction, its statements on
their generic plans from the first call): it locks the asks' accounts, then reads the facts as
:func:`admission_sql` does, once, under the locks, keeps the asks whose available balance
pays for the first billed unit (:func:`decide`'s prepaid rule) and decides and writes
their holds on that read (``billing_hold_locked_once``, migration 0027: the ledger's rule
of ``billing_reserve_holds``, 0019) (``Answer.hold``). So an admitted ask's hold is what
:meth:`Ledger.reserve` right after the admission would have answered, and an ask
admission refuses holds nothing.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from billing import policy
from billing.ledger import BOOK_BALANCE, LIVE_HOLDS, Refusal, Reservation
from billing.rating import Terms, TermsError, seconds_affordable
from billing.settings import MAX_UNPAID_CHARGES
from billing.standing import Standing, unpaid_sql

log = logging.getLogger("billing.admission")

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
           max_unpaid_charges: int = MAX_UNPAID_CHARGES,
           needed_yen: int | None = None) -> Admission:
    """The answer for a consultation of up to ``wanted_s`` seconds under ``terms``
    (``needed_yen``: ``terms.first_unit_yen()`` when the caller has it already)."""
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
    needed = terms.first_unit_yen() if needed_yen is None else needed_yen
    if available < needed:
        return Admission(False, 0, "balance-too-low", available, needed)
    return Admission(True, min(seconds_affordable(available, terms), wanted_s), ALLOWED,
                     available, needed)


def asks_sql(hold: bool, *, key: str = "account", account: str = "k.account",
             joins: str = "") -> str:
    """The asks of a batch, passed as arrays, in order: merchant, ``key`` (the account, or
    what finds it: then ``account`` is its expression over ``joins``), group, postpaid
    ($1..$4); with ``hold``, also the price, the consultation, the longest first hold and
    whether to hold ($5..$8), for :func:`admit_and_hold_sql`."""
    names = ["merchant_id", key, "group_id", "postpaid"]
    types = ["text", "text", "bigint", "bool"]
    if hold:
        names += ["price", "consultation_id", "at_most_s", "hold"]
        types += ["int", "text", "int", "bool"]
    params = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, 1))
    extra = "".join(f", k.{n}" for n in names[4:])
    return f"""SELECT k.n, k.merchant_id, {account} AS account, k.group_id, k.postpaid{extra}
    FROM unnest({params})
         WITH ORDINALITY AS k ({", ".join(names)}, n){joins}"""


#: the asks as :data:`ADMIT` reads them: merchant, account, group, postpaid ($1..$4), in order
ASKS = asks_sql(False)


def admission_sql(asks: str, extra: Sequence[str] = (), *, as_text: bool = True,
                  locked: bool = False) -> str:
    """The statement that reads what admission decides on for every ask of ``asks`` (a
    query of columns ``n, merchant_id, account, group_id, postpaid``: :data:`ASKS`, or a
    caller's that finds the accounts itself), in ``n`` order: the merchant's newest policy
    and the group's, and the facts: prepaid, the available balance; postpaid, the card on
    file and the unpaid and failed charges. ``extra``: columns of ``asks`` passed through.
    The policies are JSON objects, as text (``as_text``: what :meth:`Admissions._answer`
    reads, the terms cached by that text, no JSON decoded per row) or jsonb.

    ``locked``: read under the asks' accounts' locks by :func:`admit_and_hold_sql` (the
    asks have ``consultation_id`` and ``hold``), so that what the holds are decided on is
    this one read, with what deciding needs besides: the account's id (``account_id``), its
    lowest live reservation (``live_from``), and an ask to hold's reservation made before
    (``made``); the live holds read once a row, for the balance and ``live_from``."""
    fields = ", ".join(f"'{n}', {{t}}.{n}" for n in policy.FIELDS)
    passed = "".join(f"w.{c}, " for c in extra)
    cast = "::text" if as_text else ""
    live = LIVE_HOLDS.format(account="acct.id")
    held = lateral = ""
    if locked:
        live = "l.held_yen"
        held = """acct.id AS account_id, l.first_id AS live_from,
           CASE WHEN w.hold THEN (SELECT x.id FROM billing_reservations x
                                  WHERE x.account_id = acct.id
                                    AND x.consultation_id = w.consultation_id) END AS made,
           """
        lateral = """
    LEFT JOIN LATERAL billing_live_holds(acct.id) l ON NOT w.postpaid"""
    return f"""
    WITH w AS ({asks})
    SELECT w.n, w.account, {passed}{held}
           CASE WHEN p.id IS NOT NULL THEN jsonb_build_object({fields.format(t="p")}){cast}
               END AS policy,
           CASE WHEN g.id IS NOT NULL THEN jsonb_build_object({fields.format(t="g")}){cast}
               END AS group_policy,
           CASE WHEN NOT w.postpaid AND acct.id IS NOT NULL THEN
               {BOOK_BALANCE.format(account="acct.id", book="'available'")}
               - {live}
               END AS available_yen,
           w.postpaid AND EXISTS (SELECT 1 FROM billing_card_registrations r
                                  JOIN billing_cards cd ON cd.registration_id = r.id
                                  WHERE r.account_id = acct.id) AS has_card,
           s.unpaid, s.failed
    FROM w
    LEFT JOIN billing_accounts acct ON acct.merchant_id = w.merchant_id
                                   AND acct.account = w.account{lateral}
    LEFT JOIN LATERAL (SELECT * FROM billing_policies
                       WHERE merchant_id = w.merchant_id ORDER BY id DESC LIMIT 1) p ON true
    LEFT JOIN LATERAL (SELECT * FROM billing_group_policies
                       WHERE merchant_id = w.merchant_id AND group_id = w.group_id
                       ORDER BY id DESC LIMIT 1) g ON true
    LEFT JOIN LATERAL ({unpaid_sql("acct.id")} WHERE w.postpaid) s ON true
    ORDER BY w.n"""


#: :func:`admission_sql` of the accounts asked for
ADMIT = admission_sql(ASKS)

#: the asks as :data:`ADMIT_AND_HOLD` reads them: :data:`ASKS`' columns, then the price,
#: the consultation, the longest first hold and whether to hold ($5..$8)
HOLD_ASKS = asks_sql(True)

#: the function that decides and writes the holds (migration 0027), and the columns of
#: the held asks it takes, each as one array in the asks' order (the terms as jsonb)
HOLD_LOCKED_FUNCTION = "billing_hold_locked_once"
_HOLD_ARRAYS = ("account_id", "made", "available_yen", "live_from", "consultation_id",
                "terms", "price_per_minute_yen", "unit_s", "grace_s", "minimum_yen",
                "max_talk_s", "cap", "needed", "first_h", "pair_h")

#: a field of the terms in force: the group's, else the merchant's, else ``Terms``' default
_FIELD = "coalesce((a.group_policy->>'{n}')::int, (a.policy->>'{n}')::int, {default})"


def admit_and_hold_sql(asks: str) -> str:
    """The body of the function ``billing_admit_and_hold`` (plpgsql, two statements) over
    ``asks`` (:data:`HOLD_ASKS`' columns): first the accounts of the asks marked ``hold``
    locked, in id order (as every batch of holds locks them, so two batches never
    deadlock); then, in one statement read under those locks, :func:`admission_sql` of
    ``asks`` (``locked``: with each account's id, lowest live reservation and the ask's
    reservation made before) and the first hold of each ask marked ``hold`` whose available
    balance pays for its first billed unit (the prepaid rule of :func:`decide`), decided
    and written by ``billing_hold_locked_once`` (migration 0027: ``billing_reserve_holds``'
    rule, 0019-0021, on the balances this read passed it, in the asks' order, each hold
    taken off its account's balance for the next; the held asks' columns passed as one
    array each from one aggregate pass, with each ask's position of its account's first
    ask with a balance read, ``first_h``, and of the first ask of the same account and
    consultation, ``pair_h``, so that the function looks both up by index). Each row:
    :data:`ADMIT`'s columns, ``needed`` (the first unit's price, for the asks held), and
    the hold's ``reservation_id``, ``made``, ``hold_available_yen``, ``held_yen``,
    ``allowed_s`` (``held``: the ask was held).

    The one read is what ``billing_reserve_holds`` read again after its lock: the
    statement starts (and takes its snapshot) once the locks are held, and every writer
    that lowers an account's available balance (holds, extensions, settlements,
    adjustments) does so under that account's lock, committed before the lock is let go.

    The terms the hold is decided and stored with are built here from the policies the
    statement reads, as :meth:`Admissions._answer` builds them in Python (the group's
    fields over the merchant's over ``Terms``' defaults), and with them ``needed``
    (:meth:`~billing.rating.Terms.first_unit_yen`) and the cap (:func:`billing.rating.
    whole_units_s` of ``at_most_s``, else ``max_talk_s``): a property test
    (``tests/integration/test_billing_admit_hold.py``) holds the function equal to the
    admission then :func:`billing.ledger.reserve_all` it replaces.

    Of :data:`HOLD_ASKS`, it is the body of the function ``billing_admit_and_hold``
    (migration 0028, replacing 0027's) that :data:`ADMIT_AND_HOLD` calls
    (``tests/unit/test_billing_admit_hold_function.py`` holds the two equal: a change
    here needs a migration replacing the function)."""
    default = Terms(0)
    terms = {n: _FIELD.format(n=n, default=getattr(default, n)) for n in policy.FIELDS}
    columns = ",\n               ".join(f"{v} AS {n}" for n, v in terms.items())
    as_json = ", ".join(f"'{n}', k.{n}" for n in ("price_per_minute_yen", *policy.FIELDS))
    arrays = ",\n                  ".join(f"array_agg(o.{c} ORDER BY o.h) AS {c}"
                                           for c in _HOLD_ARRAYS)
    return f"""
    PERFORM 1 FROM billing_accounts acct
     WHERE (acct.merchant_id, acct.account) IN (SELECT w.merchant_id, w.account
                                                FROM ({asks}) w WHERE w.hold)
     ORDER BY acct.id FOR UPDATE;
    RETURN QUERY
    WITH a AS ({admission_sql(asks, ("merchant_id", "price", "consultation_id",
                                     "at_most_s", "hold"), as_text=False, locked=True)}),
    t AS (SELECT a.n, a.merchant_id, a.account, a.consultation_id, a.at_most_s,
               a.price AS price_per_minute_yen,
               {columns}
          FROM a WHERE a.hold),
    k AS (SELECT t.*, CASE WHEN t.grace_s < t.max_talk_s
                           THEN greatest(t.price_per_minute_yen::bigint * t.unit_s / 60,
                                         t.minimum_yen)
                           ELSE 0 END AS needed
          FROM t),
    q AS (SELECT k.*, row_number() OVER (ORDER BY k.n)::int AS h,
                 CASE WHEN k.at_most_s IS NULL THEN k.max_talk_s
                      WHEN k.at_most_s <= 0 THEN 0
                      WHEN k.at_most_s <= k.grace_s THEN least(k.grace_s, k.max_talk_s)
                      ELSE least(k.max_talk_s, k.grace_s + (k.at_most_s - k.grace_s
                                 + k.unit_s - 1) / k.unit_s * k.unit_s) END AS cap,
                 jsonb_build_object({as_json}) AS terms,
                 a.account_id, a.made, a.available_yen, a.live_from
          FROM k JOIN a USING (n)
          WHERE greatest(coalesce(a.available_yen, 0), 0) >= k.needed),
    o AS (SELECT q.*,
                 min(q.h) FILTER (WHERE q.available_yen IS NOT NULL)
                     OVER (PARTITION BY q.account_id) AS first_h,
                 min(q.h) OVER (PARTITION BY q.account_id, q.consultation_id) AS pair_h
          FROM q),
    x AS (SELECT {arrays} FROM o),
    r AS (SELECT r.* FROM x, LATERAL {HOLD_LOCKED_FUNCTION}({", ".join(_HOLD_ARRAYS)}) r)
    SELECT a.n, a.account, a.policy::text AS policy, a.group_policy::text AS group_policy,
           a.available_yen, a.has_card, a.unpaid, a.failed,
           q.h IS NOT NULL AS held, q.needed, r.reservation_id, r.made,
           r.available_yen AS hold_available_yen, r.held_yen, r.allowed_s
    FROM a LEFT JOIN q USING (n) LEFT JOIN r ON r.n = q.h
    ORDER BY a.n;"""


#: the function ``ADMIT_AND_HOLD`` calls (migrations 0022, 0024, 0027):
#: :func:`admit_and_hold_sql` of :data:`HOLD_ASKS`, word for word, its statement planned
#: generic from the first call
ADMIT_AND_HOLD_FUNCTION = "billing_admit_and_hold"


def admit_and_hold_call(accounts: str = "$2::text[]") -> str:
    """The call of ``billing_admit_and_hold`` (migration 0022: :func:`admit_and_hold_sql`
    of :data:`HOLD_ASKS`) with the asks' arrays ($1..$8, as :data:`HOLD_ASKS` reads them),
    the accounts being ``accounts``: ``$2`` itself, or an expression of the caller's that
    finds them (an array in the asks' order), so that what finds the accounts stays in
    the caller's package. One round trip; outside a transaction it is its own, committed
    when it answers, and the function's statement runs its generic plan from its first
    call on a connection (the function's ``SET plan_cache_mode``)."""
    return (f"SELECT * FROM {ADMIT_AND_HOLD_FUNCTION}($1::text[], {accounts}, $3::bigint[], "
            "$4::bool[], $5::int[], $6::text[], $7::int[], $8::bool[]) ORDER BY n")


#: :func:`admit_and_hold_call` of the accounts asked for
ADMIT_AND_HOLD = admit_and_hold_call()


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
    #: prepaid: admitted, the consultation's first hold in the same statement, of at
    #: most ``at_most_s`` (None: all the balance pays for), as :meth:`billing.ledger.
    #: Ledger.reserve` would make it (None: no hold)
    consultation_id: str | None = None
    at_most_s: int | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """The account the statement found, the terms in force, prepaid or postpaid, and the
    admission."""

    account: str
    terms: Terms
    postpaid: bool
    admission: Admission
    #: the first hold of an admitted prepaid ask that named its consultation: made, or
    #: refused on the balance after the accounts' lock (None: none asked, or the
    #: consultation's reservation was made before: :meth:`Ledger.reserve` reads it)
    hold: Reservation | Refusal | None = None


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

    def _holds(self, ask: Ask) -> bool:
        """Whether ``ask`` is to be held with its admission: prepaid, naming its
        consultation, at a price the rating takes (an ask it refuses fails alone, with
        nothing held)."""
        return (ask.consultation_id is not None
                and ask.merchant_id not in self.postpaid_merchants
                and _price_taken(ask.price_per_minute_yen))

    async def answer_all(self, db: asyncpg.Pool | asyncpg.Connection, asks: Sequence[Ask],
                         sql: str = ADMIT, hold_sql: str = ADMIT_AND_HOLD
                         ) -> list[Answer | Exception]:
        """Each ask's answer, the facts of all read by one statement on ``db`` (``sql``:
        :data:`ADMIT`, or :func:`admission_sql` over asks that find their accounts); an
        ask whose terms the rating refuses gets its :class:`~billing.rating.TermsError`
        (the others their answers). When some ask is to be held (prepaid, naming its
        consultation) the statement is ``hold_sql`` (:data:`ADMIT_AND_HOLD`, or
        :func:`admit_and_hold_call` with the caller's accounts), which also makes the
        admitted asks' first holds (``Answer.hold``); call it outside a transaction, so
        that it is its own (one round trip) and its holds are committed when it answers."""
        args: list[list[Any] | None] = [
            [a.merchant_id for a in asks], [a.account for a in asks],
            _column([a.group_id for a in asks]),
            [a.merchant_id in self.postpaid_merchants for a in asks]]
        holds = [self._holds(a) for a in asks]
        if any(holds):
            args += [[a.price_per_minute_yen for a in asks], [a.consultation_id for a in asks],
                     _column([a.at_most_s for a in asks]), holds]
            rows = await db.fetch(hold_sql, *args)
        else:
            rows = await db.fetch(sql, *args)
        answers: list[Answer | Exception] = []
        for ask, row in zip(asks, rows, strict=True):
            try:
                answers.append(self._answer(ask, row))
            except Exception as exc:  # that ask's own error, for its caller
                if row.get("reservation_id") is not None and not row["made"]:
                    # not expected: the statement holds only at a price the rating takes,
                    # and a policy's fields are checked when written
                    log.error("consultation %s: hold %d made for an ask that failed: %s",
                              ask.consultation_id, row["reservation_id"], exc)
                answers.append(exc)
        return answers

    def _answer(self, ask: Ask, row: asyncpg.Record) -> Answer:
        terms, needed = _terms(row["policy"],
                               None if ask.group_id is None else row["group_policy"],
                               ask.group_id, ask.price_per_minute_yen)
        postpaid = ask.merchant_id in self.postpaid_merchants
        # a prepaid row reads no standing (the statement's has_card is false, the counts
        # NULL): the one Standing they all make
        standing = (Standing(row["has_card"], row["unpaid"] or 0, (row["failed"] or 0) > 0)
                    if postpaid else _PREPAID_STANDING)
        facts = Facts(postpaid, int(row["available_yen"] or 0), standing)
        wanted = terms.max_talk_s if ask.wanted_s is None else ask.wanted_s
        admission = decide(facts, terms, wanted, max_unpaid_charges=self.max_unpaid_charges,
                           needed_yen=needed)
        return Answer(row["account"], terms, postpaid, admission,
                      _hold(ask, row, terms, needed))


#: what a prepaid account's row reads of its standing (nothing: no card, no charges)
_PREPAID_STANDING = Standing(False, 0, False)


def _column(values: list[Any]) -> list[Any] | None:
    """An optional column of the asks as the statement takes it: None (a NULL array, which
    the asks' multi-argument ``unnest`` pads with NULLs, as it reads a list of None) when
    no ask has a value, else the list. asyncpg encodes a list element by element, None
    too (about 0.27 us each): the batches' group ids are mostly all None."""
    return None if all(v is None for v in values) else values


@functools.lru_cache(maxsize=1024, typed=True)
def _terms(merchant: str | None, group: str | None, group_id: int | None,
           price_per_minute_yen: int) -> tuple[Terms, int]:
    """The terms in force and their first billed unit's price (:meth:`~billing.rating.
    Terms.first_unit_yen`): the merchant's policy as the statement read it (a JSON object
    of its fields, as text; None: ``Terms``' defaults) with the group's fields that are
    set in their place, at the price. Cached by that text: a batch's asks mostly share a
    few policies and prices, and building and checking the terms was about a third of
    deciding an ask in Python; the text is the key, so a row's policies are not decoded
    from JSON at all once seen, nor the first unit rated again (a :class:`~billing.rating.
    TermsError` is raised again each time, not cached)."""
    in_force = policy.Policy(**(json.loads(merchant) if merchant is not None else {}))
    if group_id is not None and group is not None:
        own = json.loads(group)
        in_force = policy.GroupPolicy(group_id, tuple(
            (n, own[n]) for n in policy.FIELDS if own[n] is not None)).over(in_force)
    terms = in_force.terms(price_per_minute_yen)
    return terms, terms.first_unit_yen()


@functools.lru_cache(maxsize=1024, typed=True)
def _price_taken(price_per_minute_yen: int) -> bool:
    """Whether the rating takes this price (:class:`~billing.rating.Terms` at it)."""
    try:
        Terms(price_per_minute_yen)
    except TermsError:
        return False
    return True


def _hold(ask: Ask, row: asyncpg.Record, terms: Terms, needed: int
          ) -> Reservation | Refusal | None:
    """The hold :data:`ADMIT_AND_HOLD` made or refused for ``ask`` (None: none asked, or
    made before: the caller reads that one as it stands); ``needed``: the terms' first
    billed unit's price."""
    if not row.get("held"):
        return None
    rid = row["reservation_id"]
    if rid is None:
        return Refusal("balance-too-low", row["hold_available_yen"], needed)
    if row["made"]:
        return None
    assert ask.consultation_id is not None
    return Reservation(rid, ask.consultation_id, row["held_yen"], row["allowed_s"], terms)
