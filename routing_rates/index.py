"""In-memory longest-prefix index over several carriers' decks.

Build once, then look up many times; a new deck means a new index, swapped in
with one assignment (a lookup never sees half a deck).

Layout (the Kamailio/mod_lcr rule, precomputed):

* each carrier's rows are grouped per prefix into a :class:`_Node`, each node
  pointing at the carrier's next shorter prefix (``parent``);
* a sorted array holds every prefix of *any* carrier, each with, per carrier,
  that carrier's longest node covering it, and the index of its own longest
  proper prefix in the array;
* a lookup bisects the array for the largest prefix <= the number; the
  longest matching prefix is that one or one of its ancestors (walk up while
  the number does not start with it; usually zero or one step). For the common
  case (no origin, period or validity conditions on the path) the per-carrier
  answer is precomputed too, so a lookup is one bisect and a startswith.

Within one prefix, a row restricted to the caller's origin beats a generic one
(the longest matching origin prefix wins), then a row for the current period
beats a row for any time. If no row of a prefix applies, the carrier's next
shorter prefix is tried.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from routing_rates.tariff import Terms


@dataclass(frozen=True, slots=True)
class Row:
    """One deck line, parsed."""

    prefix: str
    destination: str
    terms: Terms
    origins: tuple[str, ...] = ()     # caller prefixes this row is limited to; () = any
    period: str = ""                  # rate period name; "" = any time
    valid_from: datetime | None = None
    valid_to: datetime | None = None  # exclusive

    @property
    def conditional(self) -> bool:
        return bool(self.origins or self.period or self.valid_from or self.valid_to)

    def score(self, origin: str, period: str, at: datetime | None) -> tuple[int, int] | None:
        """How well this row fits the call, or None if it does not apply.

        Higher is better: (origin prefix length, period-specific)."""
        if self.period and self.period != period:
            return None
        if at is not None:
            if self.valid_from is not None and at < self.valid_from:
                return None
            if self.valid_to is not None and at >= self.valid_to:
                return None
        elif self.valid_from is not None or self.valid_to is not None:
            return None
        origin_len = 0
        if self.origins:
            origin_len = -1
            for o in self.origins:
                if len(o) > origin_len and origin.startswith(o):
                    origin_len = len(o)
            if origin_len < 0:
                return None
        return (origin_len, 1 if self.period else 0)


class _Node:
    """One carrier's rows for one prefix, with match data precomputed per row."""

    __slots__ = ("conditional", "parent", "prefix", "rows", "timed", "_info")

    def __init__(self, prefix: str, rows: tuple[Row, ...]) -> None:
        self.prefix = prefix
        self.rows = rows
        self.parent: _Node | None = None
        self.conditional = any(r.conditional for r in rows)
        self.timed = any(r.period or r.valid_from or r.valid_to for r in rows)
        self._info = tuple((r, frozenset(r.origins), max(map(len, r.origins), default=0))
                           for r in rows)

    def pick(self, origin: str, period: str, at: datetime | None) -> Row | None:
        if not self.conditional:
            return self.rows[0]
        best: Row | None = None
        best_score: tuple[int, int] = (-1, -1)
        for row, origins, longest in self._info:
            if row.period and row.period != period:
                continue
            if row.valid_from is not None or row.valid_to is not None:
                if at is None or (row.valid_from is not None and at < row.valid_from) \
                        or (row.valid_to is not None and at >= row.valid_to):
                    continue
            origin_len = 0
            if origins:
                origin_len = next((k for k in range(min(longest, len(origin)), 0, -1)
                                   if origin[:k] in origins), -1)
                if origin_len < 0:
                    continue
            score = (origin_len, 1 if row.period else 0)
            if score > best_score:
                best, best_score = row, score
        return best


def _resolve(node: _Node | None, origin: str, period: str, at: datetime | None) -> Row | None:
    while node is not None:
        row = node.pick(origin, period, at)
        if row is not None:
            return row
        node = node.parent
    return None


class _Entry:
    __slots__ = ("fast", "nodes", "origins", "timed")

    def __init__(self, nodes: tuple[_Node | None, ...]) -> None:
        self.nodes = nodes
        self.origins = self.timed = False   # any origin-/time-limited row on the paths
        for node in nodes:
            n = node
            while n is not None:
                self.timed = self.timed or n.timed
                self.origins = self.origins or any(r.origins for r in n.rows)
                n = n.parent
        # The answer for a call without origin, period or time (origin-limited rows
        # never apply then), valid whenever no time-limited row is on the paths.
        self.fast: tuple[Row | None, ...] = tuple(_resolve(n, "", "", None) for n in nodes)


class RateIndex:
    """Longest-prefix match for a fixed set of carriers (tariffs).

    ``carriers`` fixes the order of the per-carrier tuples returned.
    """

    __slots__ = ("_empty", "_entries", "_parents", "_pos", "_prefixes", "carriers",
                 "row_count")

    def __init__(self, decks: Mapping[str, Iterable[Row]]) -> None:
        self.carriers: tuple[str, ...] = tuple(decks)
        self._pos = {c: i for i, c in enumerate(self.carriers)}
        per_carrier: list[dict[str, _Node]] = []
        count = 0
        for carrier in self.carriers:
            grouped: dict[str, list[Row]] = {}
            for row in decks[carrier]:
                grouped.setdefault(row.prefix, []).append(row)
                count += 1
            nodes = {p: _Node(p, tuple(rows)) for p, rows in grouped.items()}
            for prefix, node in nodes.items():
                node.parent = _longest(nodes, prefix[:-1])
            per_carrier.append(nodes)
        self.row_count = count
        union: set[str] = set()
        for nodes in per_carrier:
            union.update(nodes)
        prefixes = sorted(union)
        position = {p: i for i, p in enumerate(prefixes)}
        self._prefixes = prefixes
        self._entries = [_Entry(tuple(_longest(n, p) for n in per_carrier)) for p in prefixes]
        self._parents = [position[q] if (q := _longest_key(position, p[:-1])) else -1
                         for p in prefixes]
        self._empty = _Entry(tuple(None for _ in self.carriers))

    def __len__(self) -> int:
        return len(self._prefixes)

    def position(self, carrier: str) -> int | None:
        return self._pos.get(carrier)

    def _entry(self, digits: str) -> _Entry:
        # The longest prefix of ``digits`` is the largest prefix <= digits or one of
        # its ancestors (its shorter prefixes in the set): bisect, then walk up.
        prefixes = self._prefixes
        i = bisect_right(prefixes, digits) - 1
        parents = self._parents
        while i >= 0:
            if digits.startswith(prefixes[i]):
                return self._entries[i]
            i = parents[i]
        return self._empty

    def match(self, digits: str, origin: str = "", periods: Sequence[str] | None = None,
              at: datetime | None = None) -> tuple[Row | None, ...]:
        """Per carrier (in ``carriers`` order), the row pricing a call to ``digits``.

        ``origin``: the calling number's digits (for origin-limited rows).
        ``periods``: per carrier, the rate period in force (``""`` = none).
        ``at``: the call time, for rows with validity dates (None: such rows
        never apply).
        """
        # _entry(), inlined: this is the hot path.
        prefixes = self._prefixes
        i = bisect_right(prefixes, digits) - 1
        while i >= 0 and not digits.startswith(prefixes[i]):
            i = self._parents[i]
        entry = self._entries[i] if i >= 0 else self._empty
        if not entry.timed and (not origin or not entry.origins):
            return entry.fast
        return tuple(
            _resolve(node, origin, periods[i] if periods else "", at)
            for i, node in enumerate(entry.nodes))

    def match_one(self, carrier: str, digits: str, origin: str = "", period: str = "",
                  at: datetime | None = None) -> Row | None:
        pos = self._pos.get(carrier)
        if pos is None:
            return None
        prefixes = self._prefixes   # _entry(), inlined
        i = bisect_right(prefixes, digits) - 1
        while i >= 0 and not digits.startswith(prefixes[i]):
            i = self._parents[i]
        entry = self._entries[i] if i >= 0 else self._empty
        if not entry.timed and (not origin or not entry.origins):
            return entry.fast[pos]
        return _resolve(entry.nodes[pos], origin, period, at)

    def tables(self, carrier: str) -> Tables | None:
        """The lookup tables for one carrier, for loops that inline ``match_one``
        without an origin (CDR rating). None if the index has no such carrier.

        The loop: ``i = bisect_right(t.prefixes, digits) - 1``; while ``i >= 0`` and
        ``digits`` does not start with ``t.prefixes[i]``: ``i = t.parents[i]``; the
        entry is ``t.entries[i]`` (``t.empty`` if ``i < 0``); its row is
        ``entry.fast[t.pos]`` unless ``entry.timed``: then ``t.timed(entry, period, at)``."""
        pos = self._pos.get(carrier)
        if pos is None:
            return None
        return Tables(self._prefixes, self._parents, self._entries, self._empty, pos,
                      lambda entry, period, at: _resolve(entry.nodes[pos], "", period, at))


class Tables(NamedTuple):
    prefixes: list[str]
    parents: list[int]
    entries: list[_Entry]
    empty: _Entry
    pos: int
    timed: Callable[[_Entry, str, datetime], Row | None]


def _longest(nodes: Mapping[str, _Node], prefix: str) -> _Node | None:
    while prefix:
        node = nodes.get(prefix)
        if node is not None:
            return node
        prefix = prefix[:-1]
    return None


def _longest_key(keys: Mapping[str, int], prefix: str) -> str:
    while prefix and prefix not in keys:
        prefix = prefix[:-1]
    return prefix


def brute_force(rows: Iterable[Row], digits: str, origin: str = "", period: str = "",
                at: datetime | None = None) -> Row | None:
    """Reference implementation: scan every row. For tests and explanations."""
    best: Row | None = None
    best_key: tuple[int, int, int] = (-1, -1, -1)
    for row in rows:
        if not digits.startswith(row.prefix):
            continue
        s = row.score(origin, period, at)
        if s is None:
            continue
        key = (len(row.prefix), s[0], s[1])
        if key > best_key:
            best, best_key = row, key
    return best
