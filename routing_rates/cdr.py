"""CDR rating: each leg of a completed call, priced with the deck that was in
force when the call started, against the toll-free counterfactual.

* A leg with a ``carrier`` (the call-back to the customer, or the agent leg)
  is priced on that carrier's deck in force at ``started_at``.
* A leg without a carrier (``inbound``/``edge``: the toll-free call at the
  edge) is priced on the merchant's inbound tariff for the caller; 0 s when it
  was rejected after early media.
* The ``customer`` leg also gets the counterfactual: what the same conversation
  would have cost had the edge kept the toll-free call.

Reading CDR files (JSON lines shaped like the link's ``cdr`` message, or CSV
with the same field names) reports bad lines with file and line number; a leg whose
``destination_kind`` is ``sip`` (a SIP advisor's, the operator's) is left out.
Rated legs go to ``rates_cdr_ratings`` (upsert on call id + leg).
"""

from __future__ import annotations

import csv
import gc
import json
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NamedTuple

from routing_rates.carriers import Carrier
from routing_rates.index import RateIndex, Row, Tables
from routing_rates.tariff import Terms, ceil_seconds, period_at
from shared import leg_destination
from shared.money import FxTable, Money
from shared.phone import E164, InvalidNumber
from shared.timeutil import parse_timestamp

_ZERO = Decimal(0)


class CdrFileError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = "\n".join(problems[:50])
        more = f"\n... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{len(problems)} bad CDR line(s):\n{shown}{more}")


@dataclass(frozen=True, slots=True)
class Cdr:
    call_id: str
    leg: str                      # customer | agent | inbound ...
    merchant_id: str
    destination: E164             # who the leg called (inbound legs: the caller)
    carrier: str | None
    started_at: datetime
    duration_s: Decimal           # answered time; 0 if never answered
    callback_id: str | None = None
    inbound_tariff: str = "ntt-freedial"
    seconds: int = field(init=False, repr=False, compare=False)   # whole seconds, rounded up

    def __post_init__(self) -> None:
        object.__setattr__(self, "seconds", ceil_seconds(self.duration_s))


class RatedCdr(NamedTuple):
    """One rated leg (a NamedTuple: immutable, and cheap at 200k legs/s)."""

    cdr: Cdr
    tariff_id: str | None
    deck_id: int | None
    prefix: str | None
    billed_s: int
    cost: Money
    direct_tariff: str | None
    direct_deck_id: int | None
    direct_cost: Money | None
    base_currency: str
    cost_base: Decimal
    direct_base: Decimal | None
    problem: str | None


class DeckHistory:
    """Which deck was in force when: per tariff, (effective_from, deck_id), oldest first."""

    def __init__(self, history: Mapping[str, Sequence[tuple[datetime, int]]]) -> None:
        self._starts = {t: [s for s, _ in h] for t, h in history.items()}
        self._ids = {t: [d for _, d in h] for t, h in history.items()}

    def versions(self, tariff_id: str) -> tuple[list[datetime], list[int]]:
        """The tariff's deck starts and ids, oldest first (empty if it has none)."""
        return list(self._starts.get(tariff_id, [])), list(self._ids.get(tariff_id, []))

    def deck_at(self, tariff_id: str, at: datetime) -> int | None:
        starts = self._starts.get(tariff_id)
        if not starts:
            return None
        i = bisect_right(starts, at) - 1
        return self._ids[tariff_id][i] if i >= 0 else None

    def decks_for(self, cdrs: Iterable[Cdr]) -> dict[int, str]:
        """Deck ids (with their tariff) needed to rate ``cdrs``."""
        needed: dict[int, str] = {}
        for c in cdrs:
            for tariff in (c.carrier, c.inbound_tariff):
                if tariff is not None:
                    deck = self.deck_at(tariff, c.started_at)
                    if deck is not None:
                        needed[deck] = tariff
        return needed


class CdrRater:
    """Rates CDRs with per-deck indexes supplied by ``deck_rows`` (loaded beforehand)."""

    def __init__(self, carriers: Mapping[str, Carrier], history: DeckHistory,
                 deck_rows: Callable[[int], Sequence[Row]], fx: FxTable,
                 currency: str | None = None) -> None:
        self.carriers = carriers
        self.history = history
        self._deck_rows = deck_rows
        self.fx = fx
        self.currency = currency or fx.base
        self._indexes: dict[int, RateIndex] = {}
        self._prices: dict[tuple[int, int], tuple[int, Money, Decimal]] = {}
        self._versions_of: dict[str, _Versions] = {}
        self._factors: dict[str, Decimal] = {}

    def prepare(self, cdrs: Iterable[Cdr]) -> None:
        """Build the per-deck indexes ``cdrs`` need (else built on first use)."""
        for deck_id, tariff_id in self.history.decks_for(cdrs).items():
            if deck_id not in self._indexes:
                self._indexes[deck_id] = RateIndex({tariff_id: self._deck_rows(deck_id)})

    def _index(self, tariff_id: str, deck_id: int) -> RateIndex:
        index = self._indexes.get(deck_id)
        if index is None:
            index = self._indexes[deck_id] = RateIndex({tariff_id: self._deck_rows(deck_id)})
        return index

    def _versions(self, tariff_id: str) -> _Versions:
        """The tariff's deck versions (their tables are filled in on first use)."""
        versions = self._versions_of.get(tariff_id)
        if versions is None:
            starts, ids = self.history.versions(tariff_id)
            carrier = self.carriers.get(tariff_id)
            period_of: Callable[[datetime], str] | None = None
            if carrier is not None and carrier.periods:
                periods, tz = carrier.periods, carrier.tz
                period_of = lambda at: period_at(periods, at, tz)  # noqa: E731
            versions = _Versions(tariff_id, starts, ids, [None] * len(ids), len(starts) - 1,
                                 period_of)
            self._versions_of[tariff_id] = versions
        return versions

    def _tables(self, versions: _Versions, k: int) -> Tables:
        tables = self._index(versions.tariff, versions.ids[k]).tables(versions.tariff)
        if tables is None:   # pragma: no cover - each deck index holds its own tariff
            raise LookupError(f"deck {versions.ids[k]} has no tariff {versions.tariff}")
        versions.tables[k] = tables
        return tables

    def _price_miss(self, terms: Terms, billed: int) -> tuple[int, Money, Decimal]:
        cost = terms.cost_of_billed(billed)
        factor = self._factors.get(cost.currency)
        if factor is None:
            factor = self._factors[cost.currency] = self.fx.rate(cost.currency, self.currency)
        hit = (billed, cost, cost.amount * factor)
        if len(self._prices) > 1_000_000:
            self._prices.clear()
        self._prices[(id(terms), billed)] = hit   # id(): each Terms is held by an index row
        return hit

    def rate(self, cdr: Cdr) -> RatedCdr:
        return self.rate_all((cdr,))[0]

    def rate_all(self, cdrs: Iterable[Cdr]) -> list[RatedCdr]:
        """Rate every leg. One loop with its lookups inlined: this is the 200k/s path.

        Per leg: the deck in force at the call's start (bisect over the tariff's
        versions), that deck's row for the number, the billed seconds and the cost
        (memoised per terms and billed seconds), and for the customer leg the same
        for the toll-free counterfactual."""
        paused = gc.isenabled()
        gc.disable()   # the loop allocates only acyclic tuples; no need to scan for cycles
        try:
            return self._rate_all(cdrs)
        finally:
            if paused:
                gc.enable()

    def _rate_all(self, cdrs: Iterable[Cdr]) -> list[RatedCdr]:
        versions_of = self._versions_of
        prices = self._prices
        price_miss = self._price_miss
        new = tuple.__new__
        base = self.currency
        out: list[RatedCdr] = []
        append = out.append
        for cdr in cdrs:
            tariff = cdr.carrier or cdr.inbound_tariff
            at = cdr.started_at
            digits = cdr.destination.digits
            seconds = cdr.seconds
            v = versions_of.get(tariff) or self._versions(tariff)
            i = v.last if v.starts and at >= v.starts[-1] else \
                bisect_right(v.starts, at) - 1
            deck = row = None
            if i >= 0:   # RateIndex.match_one(), inlined
                deck = v.ids[i]
                t = v.tables[i] or self._tables(v, i)
                prefixes = t.prefixes
                k = bisect_right(prefixes, digits) - 1
                while k >= 0 and not digits.startswith(prefixes[k]):
                    k = t.parents[k]
                entry = t.entries[k] if k >= 0 else t.empty
                row = entry.fast[t.pos] if not entry.timed else \
                    t.timed(entry, v.period_of(at) if v.period_of else "", at)
            if row is None:
                problem = (f"no deck of {tariff} in force at {at.isoformat()}"
                           if deck is None else f"{tariff} deck {deck} has no rate for +{digits}")
                append(new(RatedCdr, (cdr, tariff, deck, None, 0, Money(_ZERO, base), None,
                                      None, None, base, _ZERO, None, problem)))
                continue
            terms = row.terms
            x = terms.initial_s   # billed_seconds(), inlined
            billed = 0 if seconds <= 0 else x if seconds <= x else \
                x - (x - seconds) // terms.increment_s * terms.increment_s
            hit = prices.get((id(terms), billed)) or price_miss(terms, billed)
            if cdr.leg != "customer":
                append(new(RatedCdr, (cdr, tariff, deck, row.prefix, billed, hit[1], None,
                                      None, None, base, hit[2], None, None)))
                continue
            direct_tariff = cdr.inbound_tariff
            dv = versions_of.get(direct_tariff) or self._versions(direct_tariff)
            j = dv.last if dv.starts and at >= dv.starts[-1] else \
                bisect_right(dv.starts, at) - 1
            direct_deck = drow = None
            if j >= 0:
                direct_deck = dv.ids[j]
                t = dv.tables[j] or self._tables(dv, j)
                prefixes = t.prefixes
                k = bisect_right(prefixes, digits) - 1
                while k >= 0 and not digits.startswith(prefixes[k]):
                    k = t.parents[k]
                entry = t.entries[k] if k >= 0 else t.empty
                drow = entry.fast[t.pos] if not entry.timed else \
                    t.timed(entry, dv.period_of(at) if dv.period_of else "", at)
            direct = direct_base = None
            if drow is not None:
                dterms = drow.terms
                x = dterms.initial_s
                dbilled = 0 if seconds <= 0 else x if seconds <= x else \
                    x - (x - seconds) // dterms.increment_s * dterms.increment_s
                dhit = prices.get((id(dterms), dbilled)) or price_miss(dterms, dbilled)
                direct, direct_base = dhit[1], dhit[2]
            append(new(RatedCdr, (cdr, tariff, deck, row.prefix, billed, hit[1], direct_tariff,
                                  direct_deck, direct, base, hit[2], direct_base, None)))
        return out


class _Versions(NamedTuple):
    tariff: str
    starts: list[datetime]
    ids: list[int]
    tables: list[Tables | None]   # per version, filled in on first use
    last: int                     # the newest version's position (most calls fall in it)
    period_of: Callable[[datetime], str] | None   # the rate period at a time, if timed


# -- files ---------------------------------------------------------------------------



def cdr_from_mapping(data: Mapping[str, Any], inbound_tariff: str) -> Cdr:
    """A CDR from the link's ``cdr`` message (or a CSV row with the same names)."""
    answered = data.get("answered_at")
    if answered in (None, "", "null"):
        duration = _ZERO
    else:
        try:
            duration = Decimal(str(data.get("duration_s") or "0"))
        except InvalidOperation:
            raise ValueError(f"duration_s is not a number: {data.get('duration_s')!r}") \
                from None
        if not duration.is_finite() or duration < 0:
            raise ValueError(f"duration_s must be >= 0: {data.get('duration_s')!r}")
    dest = str(data.get("destination") or "")
    try:
        number = E164.parse(dest)
    except InvalidNumber as exc:
        raise ValueError(str(exc)) from None
    for key in ("call_id", "leg", "merchant_id", "started_at"):
        if not data.get(key):
            raise ValueError(f"missing {key}")
    return Cdr(call_id=str(data["call_id"]), leg=str(data["leg"]),
               merchant_id=str(data["merchant_id"]), destination=number,
               carrier=str(data["carrier"]) if data.get("carrier") else None,
               started_at=parse_timestamp(str(data["started_at"]), "started_at"),
               duration_s=duration,
               callback_id=str(data["callback_id"]) if data.get("callback_id") else None,
               inbound_tariff=str(data.get("inbound_tariff") or inbound_tariff))


def read_cdrs(path: Path, inbound_tariff: str = "ntt-freedial") -> Iterator[Cdr]:
    """CDRs from a ``.jsonl``/``.json`` or ``.csv`` file. Raises ``CdrFileError``
    naming every bad line (after reading the whole file; nothing is yielded then)."""
    problems: list[str] = []
    good: list[Cdr] = []
    with path.open(encoding="utf-8-sig", newline="") as f:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(f)
            records: Iterable[tuple[int, Any]] = ((reader.line_num, r) for r in reader)
        else:
            records = ((n, line) for n, line in enumerate(f, 1) if line.strip())
        for number, record in records:
            try:
                data = json.loads(record) if isinstance(record, str) else record
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
                if data.get("kind", "cdr") != "cdr" \
                        or data.get("destination_kind") == leg_destination.SIP:
                    continue        # a leg to a SIP endpoint has no number to price
                good.append(cdr_from_mapping(data, inbound_tariff))
            except (ValueError, KeyError) as exc:
                problems.append(f"{path}:{number}: {exc}")
    if problems:
        raise CdrFileError(problems)
    yield from good
