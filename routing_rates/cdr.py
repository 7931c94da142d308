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
with the same field names) reports bad lines with file and line number.
Rated legs go to ``rates_cdr_ratings`` (upsert on call id + leg).
"""

from __future__ import annotations

import bisect
import csv
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NamedTuple

from routing_rates.carriers import Carrier
from routing_rates.index import RateIndex, Row
from routing_rates.tariff import Terms, ceil_seconds, period_at
from shared.money import FxTable, Money
from shared.phone import E164, InvalidNumber

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

    def deck_at(self, tariff_id: str, at: datetime) -> int | None:
        starts = self._starts.get(tariff_id)
        if not starts:
            return None
        i = bisect.bisect_right(starts, at) - 1
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
        self._timed = {t for t, c in carriers.items() if c.periods}
        self._factors: dict[str, Decimal] = {}

    def prepare(self, cdrs: Iterable[Cdr]) -> None:
        """Build the per-deck indexes ``cdrs`` need (else built on first use)."""
        for deck_id, tariff_id in self.history.decks_for(cdrs).items():
            if deck_id not in self._indexes:
                self._indexes[deck_id] = RateIndex({tariff_id: self._deck_rows(deck_id)})

    def _row(self, tariff_id: str, deck_id: int, digits: str, at: datetime) -> Row | None:
        index = self._indexes.get(deck_id)
        if index is None:
            index = self._indexes[deck_id] = RateIndex({tariff_id: self._deck_rows(deck_id)})
        period = ""
        if tariff_id in self._timed:
            carrier = self.carriers[tariff_id]
            period = period_at(carrier.periods, at, carrier.tz)
        return index.match_one(tariff_id, digits, "", period, at)

    def _price(self, terms: Terms, seconds: int) -> tuple[int, Money, Decimal]:
        """(billed seconds, cost, cost in the base currency), memoised per terms+billed.

        Keyed by ``id(terms)``: every Terms here is held by a Row of an index we keep."""
        x = terms.initial_s   # billed_seconds(), inlined
        billed = 0 if seconds <= 0 else x if seconds <= x else \
            x - (x - seconds) // terms.increment_s * terms.increment_s
        key = (id(terms), billed)
        hit = self._prices.get(key)
        if hit is None:
            cost = terms.cost_of_billed(billed)
            factor = self._factors.get(cost.currency)
            if factor is None:
                factor = self._factors[cost.currency] = self.fx.rate(cost.currency,
                                                                     self.currency)
            hit = (billed, cost, cost.amount * factor)
            if len(self._prices) > 500_000:
                self._prices.clear()
            self._prices[key] = hit
        return hit

    def _deck_row(self, tariff: str, digits: str, at: datetime) -> tuple[int | None, Row | None]:
        """The deck in force at ``at`` and its row for ``digits`` (hot path, inlined)."""
        history = self.history
        starts = history._starts.get(tariff)
        if not starts:
            return None, None
        i = bisect.bisect_right(starts, at) - 1
        if i < 0:
            return None, None
        deck = history._ids[tariff][i]
        index = self._indexes.get(deck)
        if index is None or tariff in self._timed:
            return deck, self._row(tariff, deck, digits, at)
        return deck, index.match_one(tariff, digits, "", "", at)

    def rate(self, cdr: Cdr) -> RatedCdr:
        tariff = cdr.carrier or cdr.inbound_tariff
        at = cdr.started_at
        digits = cdr.destination.digits
        deck, row = self._deck_row(tariff, digits, at)
        if row is None:
            problem = (f"no deck of {tariff} in force at {at.isoformat()}"
                       if deck is None else f"{tariff} deck {deck} has no rate for +{digits}")
            zero = Money(_ZERO, self.currency)
            return RatedCdr(cdr, tariff, deck, None, 0, zero, None, None, None, self.currency,
                            _ZERO, None, problem)
        billed, cost, cost_base = self._price(row.terms, cdr.seconds)
        direct_tariff = direct_deck = direct = direct_base = None
        if cdr.leg == "customer":
            direct_tariff = cdr.inbound_tariff
            direct_deck, drow = self._deck_row(direct_tariff, digits, at)
            if drow is not None:
                _, direct, direct_base = self._price(drow.terms, cdr.seconds)
        return RatedCdr(cdr, tariff, deck, row.prefix, billed, cost, direct_tariff,
                        direct_deck, direct, self.currency, cost_base, direct_base, None)

    def rate_all(self, cdrs: Iterable[Cdr]) -> list[RatedCdr]:
        rate = self.rate
        return [rate(c) for c in cdrs]


# -- files ---------------------------------------------------------------------------

def _parse_time(value: object) -> datetime:
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"time without timezone: {value!r}")
    return moment


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
               started_at=_parse_time(data["started_at"]), duration_s=duration,
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
                if data.get("kind", "cdr") != "cdr":
                    continue
                good.append(cdr_from_mapping(data, inbound_tariff))
            except (ValueError, KeyError) as exc:
                problems.append(f"{path}:{number}: {exc}")
    if problems:
        raise CdrFileError(problems)
    yield from good
