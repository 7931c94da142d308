"""Number types of deck rows, and the ranges a deck prices at another type's row. Pure.

A deck row's number type is the type its prefix falls in under the numbering plan
(:data:`PLANS`; decks have no number-type column): the longest range of the plan the
prefix starts with. The country's own range (``81``) is its fixed-line range, so a
country-wide row is the country's fixed-line row, the price of whatever the deck does
not list. A called number's type comes from ``shared.phone`` (libphonenumber);
fixed-line-or-mobile counts as fixed line.

A **gap**: a carrier prices a number at a row of another type than the number's (the
new 060 mobile range at ``81`` when no deck has ``8160`` yet) while the same deck has
rows of the number's type in that country. The decision then prices it at the deck's
rate for that type (:meth:`TypeRates.row_for`: the terms most of the type's rows share,
the higher rate on a tie) and says so. Countries without a plan here have no gaps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from routing_rates.index import RateIndex, Row
from shared.phone import E164, NumberType

#: Japan (+81), from the plan ``shared.destination`` applies: E.164 range -> type
JAPAN: Mapping[str, NumberType] = {
    "81": NumberType.FIXED_LINE,          # 01-09 area codes; the country row
    "8120": NumberType.PAGER,             # 020 M2M / pager
    "8150": NumberType.VOIP,              # 050 IP phones
    "8160": NumberType.MOBILE,            # 060 mobile (opened 2026)
    "8170": NumberType.MOBILE,
    "8180": NumberType.MOBILE,
    "8190": NumberType.MOBILE,
    "81120": NumberType.TOLL_FREE,        # 0120 free dial
    "81800": NumberType.TOLL_FREE,        # 0800 free dial
    "81570": NumberType.UAN,              # 0570 navi dial
    "81990": NumberType.PREMIUM_RATE,     # 0990 dial Q2
}
#: country code -> its plan
PLANS: Mapping[str, Mapping[str, NumberType]] = {"81": JAPAN}


def _plan_of(digits: str) -> tuple[str, Mapping[str, NumberType]] | None:
    for code, plan in PLANS.items():
        if digits.startswith(code):
            return code, plan
    return None


@lru_cache(maxsize=65_536)
def prefix_type(prefix: str) -> NumberType | None:
    """The type of a deck row's prefix: its longest range in the plan; None without one."""
    found = _plan_of(prefix)
    if found is None:
        return None
    plan = found[1]
    for end in range(len(prefix), 0, -1):
        kind = plan.get(prefix[:end])
        if kind is not None:
            return kind
    return None


def planned(number: E164) -> bool:
    """Has the number's country a plan here (so its deck rows can have gaps)?"""
    return _plan_of(number.digits) is not None


def number_type(number: E164) -> NumberType:
    kind = number.number_type
    return NumberType.FIXED_LINE if kind is NumberType.FIXED_LINE_OR_MOBILE else kind


@dataclass(frozen=True, slots=True)
class Gap:
    """A number priced at a row of another type; ``typed``: the row of its own type."""

    number_type: str
    matched_prefix: str
    matched_type: str
    matched_destination: str
    typed_prefix: str

    def describe(self) -> str:
        return (f"no {self.number_type} row for this range: the deck prices it at "
                f"{self.matched_prefix} ({self.matched_destination}, {self.matched_type}); "
                f"priced at the {self.number_type} rate of {self.typed_prefix}")

    def to_json(self) -> dict[str, Any]:
        return {"number_type": self.number_type, "matched_prefix": self.matched_prefix,
                "matched_type": self.matched_type,
                "matched_destination": self.matched_destination,
                "typed_prefix": self.typed_prefix, "detail": self.describe()}


def typed_rows(rows: Iterable[Row]) -> dict[tuple[str, NumberType], str]:
    """Per (country code, type), the prefix whose terms stand for the type's rate in these
    rows (one carrier's deck): the terms most of the type's unconditional rows share, on a
    tie the higher rate, then the shortest (lowest) prefix."""
    groups: dict[tuple[str, NumberType], Counter[Any]] = {}
    first: dict[tuple[str, NumberType, Any], str] = {}
    for row in rows:
        found = _plan_of(row.prefix)
        if found is None or row.conditional:
            continue
        kind = prefix_type(row.prefix)
        if kind is None:
            continue
        key = (found[0], kind)
        groups.setdefault(key, Counter())[row.terms] += 1
        seen = first.get((*key, row.terms))
        if seen is None or (len(row.prefix), row.prefix) < (len(seen), seen):
            first[(*key, row.terms)] = row.prefix
    chosen: dict[tuple[str, NumberType], str] = {}
    for key, counts in groups.items():
        terms = max(counts, key=lambda t: (counts[t], t.rate * 60 / t.unit_s))
        chosen[key] = first[(*key, terms)]
    return chosen


def covers(row_type: NumberType | None, kind: NumberType) -> bool:
    return row_type is None or row_type is kind


class TypeRates:
    """Every carrier's typed rates in one index (built with the snapshot, off the hot path)."""

    __slots__ = ("_typed",)

    def __init__(self, decks: Mapping[str, Iterable[Row]]) -> None:
        self._typed = {carrier: typed_rows(rows) for carrier, rows in decks.items()}

    def gap(self, carrier: str, number: E164, kind: NumberType, row: Row) -> str | None:
        """The prefix of ``carrier``'s rate for ``kind`` if ``row`` is of another type and
        the deck has one (a gap), else None."""
        if covers(prefix_type(row.prefix), kind):
            return None
        found = _plan_of(number.digits)
        if found is None:
            return None
        return self._typed.get(carrier, {}).get((found[0], kind))

    def row_for(self, index: RateIndex, carrier: str, number: E164, kind: NumberType,
                row: Row | None, origin: str, period: str,
                at: Any) -> tuple[Row | None, Gap | None]:
        """The row pricing ``number`` at ``carrier``: ``row``, or on a gap the row of the
        number's type (with the origin, period and time of the call) and the gap."""
        if row is None:
            return None, None
        typed = self.gap(carrier, number, kind, row)
        if typed is None:
            return row, None
        priced = index.match_one(carrier, typed, origin, period, at)
        if priced is None:
            return row, None
        return priced, Gap(str(kind), row.prefix, str(prefix_type(row.prefix)),
                           row.destination, typed)


def deck_gaps(prefixes: Iterable[str]) -> list[tuple[str, str, str]]:
    """The plans' ranges one carrier's deck (its ``prefixes``) prices at a row of another
    type while it has rows of the range's type in that country: (range, its type, the
    prefix pricing it). For the import report."""
    listed = set(prefixes)
    has_type = {(found[0], kind) for p in listed
                if (found := _plan_of(p)) is not None and (kind := prefix_type(p)) is not None}
    gaps: list[tuple[str, str, str]] = []
    for code, plan in PLANS.items():
        for start, kind in sorted(plan.items()):
            if (code, kind) not in has_type:
                continue
            if any(p.startswith(start) for p in listed):
                continue       # the deck lists the range (or parts of it) itself
            matched = next((start[:end] for end in range(len(start) - 1, 0, -1)
                            if start[:end] in listed), None)
            if matched is not None and not covers(prefix_type(matched), kind):
                gaps.append((start, str(kind), matched))
    return gaps
