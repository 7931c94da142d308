"""RatingService: the in-memory view of the decks in force, used by both servers.

``start`` loads every tariff's deck in force and builds two indexes (carriers,
keyed by destination; inbound tariffs, keyed by caller). A listener task waits
for ``NOTIFY routing_rates_activated`` and for the next future-dated deck's
start, rebuilds a :class:`Snapshot` off to the side and swaps it in with one
assignment: a lookup sees the old decks or the new ones, never a mix. Lookups
are synchronous and never touch the database (the edge decides without the WAN).

The decks coming into force next are loaded ahead (:data:`PRELOAD_S` before their
time, or as soon as they are scheduled if that is sooner), so a lookup picks the decks
in force at the time it is asked about: from the effective time on the new version,
before it the old, whenever the rebuild runs. Both sites switch at the same instant.

Call lengths (``routing_rates.call_lengths``): ``decide(..., merchant=M)`` without
a ``duration`` uses M's distribution for the caller's number class: learned,
configured or the default. The counts are loaded at start and, for one merchant,
again when ``record`` NOTIFYs ``routing_rates_call_lengths`` (at most once every
``Policy.refresh_s``, default 60 s); the new models' expected costs for every
tariff in force are computed off to the side before they are swapped in, so a
decision computes none (past the memo's 8,192 terms per model it computes each
one it meets).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal

from routing_rates import call_lengths, numbering, store
from routing_rates.call_lengths import DEFAULT_CHOICE, LengthChoice, MerchantLengths
from routing_rates.carriers import Carrier
from routing_rates.decision import Decision, Dropped, RouteQuote, decide, rank_routes
from routing_rates.duration import BUILTIN, DEFAULT_DURATION, DurationModel
from routing_rates.index import RateIndex, Row
from routing_rates.numbering import Gap, TypeRates
from routing_rates.quality import Board, QualityBoard, demote, destination_of
from routing_rates.tariff import Terms, period_at
from shared.config import CarrierQuality
from shared.db import Connection, Pool
from shared.money import FxTable, Money
from shared.phone import E164
from shared.waits import cancel_and_wait, within

log = logging.getLogger("rates.service")
SAFETY_POLL_S = 300.0
#: the decks coming into force next are loaded this long before their time
PRELOAD_S = 3600.0
#: the rankings a snapshot keeps (:class:`Ranked`); past it they are dropped and rebuilt
RANKED_MAX = 4096


class UnknownTariff(LookupError):
    def __init__(self, tariff_id: str) -> None:
        super().__init__(f"unknown tariff or carrier {tariff_id!r}")
        self.tariff_id = tariff_id


class DeckNotInForce(LookupError):
    """The in-memory deck was not in force at the requested time (rate history)."""


@dataclass(frozen=True, slots=True)
class Ranked:
    """One ranking of the rows matched for a number, kept for every number the same rows
    price (its prefixes, time period, number type): the routes as quoted for the first
    such number, the drops, and the duration model and quality board they were ranked
    with (kept by identity, so a new model or board is ranked afresh)."""

    duration: DurationModel
    board: Board | None
    routes: tuple[RouteQuote, ...]
    dropped: tuple[Dropped, ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    carriers: Mapping[str, Carrier]           # every tariff, both kinds
    decks: Mapping[str, store.DeckInfo]       # tariff id -> deck in force
    carrier_index: RateIndex                  # kind = carrier
    inbound_index: RateIndex                  # kind = inbound
    loaded_at: datetime
    next_change: datetime | None
    terms: tuple[Terms, ...] = ()             # every distinct Terms of the rows
    starts: datetime | None = None            # preloaded: in force from then (else now)
    no_deck: frozenset[str] = frozenset()     # enabled tariffs with no deck in force
    type_rates: TypeRates = TypeRates({})     # carriers' rates per number type (gaps)
    #: rankings by the rows they rank (``RatingService.quote``); a reload builds a new
    #: snapshot, so rankings never outlive the decks and carriers they were made from
    ranked: dict[tuple[object, ...], Ranked] = field(default_factory=dict, compare=False,
                                                      repr=False)

    @classmethod
    def build(cls, carriers: Sequence[Carrier], rows: Mapping[str, Sequence[Row]],
              decks: Mapping[str, store.DeckInfo] | None = None,
              next_change: datetime | None = None, starts: datetime | None = None,
              ) -> Snapshot:
        by_id = {c.id: c for c in carriers}
        carrier_rows = {c.id: rows.get(c.id, ()) for c in carriers if c.kind == "carrier"}
        inbound_rows = {c.id: rows.get(c.id, ()) for c in carriers if c.kind == "inbound"}
        distinct = {id(r.terms): r.terms for tariff_rows in rows.values() for r in tariff_rows}
        # decks None: rows given as they are (tests, tools), not versions in force
        no_deck = frozenset() if decks is None else frozenset(
            c.id for c in carriers if c.enabled and c.id not in decks)
        return cls(by_id, dict(decks or {}), RateIndex(carrier_rows), RateIndex(inbound_rows),
                   datetime.now(UTC), next_change, tuple(distinct.values()), starts, no_deck,
                   TypeRates(carrier_rows))

    def deck_id(self, tariff_id: str) -> int | None:
        deck = self.decks.get(tariff_id)
        return deck.id if deck else None


class RatingService:
    """Quotes, decisions and leg costs from the decks in force. See CONTRACTS.md."""

    def __init__(self, snapshot: Snapshot, fx: FxTable, *, currency: str | None = None,
                 distributions: Mapping[str, DurationModel] | None = None,
                 pool: Pool | None = None, lengths: MerchantLengths | None = None) -> None:
        self._snap = snapshot
        self._next: Snapshot | None = None     # the decks coming into force next, preloaded
        self.lengths = lengths or MerchantLengths()
        self._choices: dict[tuple[str, str], LengthChoice] = {}
        self._lengths_dirty: set[str] = set()
        self._lengths_wake = asyncio.Event()
        self._lengths_task: asyncio.Task[None] | None = None
        self.fx = fx
        self.currency = currency or fx.base
        self.distributions = {**BUILTIN, **(distributions or {})}
        self._pool = pool
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._rows_cache: dict[int, list[Row]] = {}
        self.reloads = 0
        #: the call-back site's carrier quality (``routing_rates.quality``); None: unknown
        self.quality_board: QualityBoard | None = None

    # -- life cycle --------------------------------------------------------------------

    @classmethod
    async def start(cls, pool: Pool, *, fx: FxTable, currency: str | None = None,
                    distributions: Mapping[str, DurationModel] | None = None,
                    lengths: MerchantLengths | None = None,
                    listen: bool = True) -> RatingService:
        service = cls(Snapshot.build([], {}), fx, currency=currency,
                      distributions=distributions, pool=pool, lengths=lengths)
        await service.reload()
        await service.reload_call_lengths()
        if listen:
            service._lengths_task = asyncio.create_task(service._refresh_lengths(),
                                                        name="rates-call-lengths")
            ready = asyncio.Event()
            service._task = asyncio.create_task(service._listen(ready),
                                                name="rates-reload")
            await ready.wait()
        return service

    @classmethod
    def from_rows(cls, carriers: Sequence[Carrier], rows: Mapping[str, Sequence[Row]],
                  fx: FxTable, **kwargs: object) -> RatingService:
        """An offline service over given rows (tests, tools). No reloads."""
        return cls(Snapshot.build(carriers, rows), fx, **kwargs)  # type: ignore[arg-type]

    async def close(self) -> None:
        if self.quality_board is not None:
            await self.quality_board.close()
        for task in (self._task, self._lengths_task):
            if task is not None:
                await cancel_and_wait(task)
        self._task = self._lengths_task = None

    @property
    def snapshot(self) -> Snapshot:
        return self._snap

    def snapshot_at(self, at: datetime) -> Snapshot:
        """The decks in force at ``at``: the preloaded next ones from their time on."""
        following = self._next
        if following is not None and following.starts is not None and at >= following.starts:
            return following
        return self._snap

    async def reload(self) -> None:
        """Rebuild the snapshot (and the next one, if it starts within :data:`PRELOAD_S`)
        from the database, then swap them in."""
        assert self._pool is not None, "reload needs a database pool"
        now = datetime.now(UTC)
        pool = store.TermsPool()
        cache: dict[int, list[Row]] = {}

        async def rows_of(conn: Connection, decks: Mapping[str, store.DeckInfo],
                          ) -> dict[str, list[Row]]:
            rows: dict[str, list[Row]] = {}
            for tariff_id, deck in decks.items():
                loaded = cache.get(deck.id) or self._rows_cache.get(deck.id)
                if loaded is None:
                    loaded = await store.load_rows(conn, deck, pool)
                cache[deck.id] = rows[tariff_id] = loaded
            return rows

        async with self._pool.acquire() as conn:
            carriers = await store.load_tariffs(conn)
            decks = await store.decks_in_force(conn, now)
            nxt = await store.next_change(conn, now)
            rows = await rows_of(conn, decks)
            upcoming: Mapping[str, store.DeckInfo] = {}
            next_rows: dict[str, list[Row]] = {}
            after: datetime | None = None
            if nxt is not None and (nxt - now).total_seconds() <= PRELOAD_S:
                upcoming = await store.decks_in_force(conn, nxt)
                after = await store.next_change(conn, nxt)
                next_rows = await rows_of(conn, upcoming)
        models = list({id(c.model): c.model for c in self._choices.values()}.values())
        snapshot = await asyncio.to_thread(_build_warm, carriers, rows, decks, nxt, models)
        following = None
        if upcoming:
            following = await asyncio.to_thread(_build_warm, carriers, next_rows, upcoming,
                                                after, models, nxt)
        self._rows_cache = cache
        # the swap: no await between the two assignments, so a lookup sees one pair
        self._snap, self._next = snapshot, following
        self.reloads += 1
        log.info("rates loaded: %s", ", ".join(f"{t}=deck {d.id}" for t, d in decks.items()))
        if following is not None:
            log.info("rates in force from %s preloaded: %s", nxt.isoformat() if nxt else "?",
                     ", ".join(f"{t}=deck {d.id}" for t, d in upcoming.items()))
        missing = sorted(snapshot.no_deck)
        if missing:
            log.warning("no deck in force for %s: quotes and decisions go without %s "
                        "(dropped no-deck) until one is", ", ".join(missing),
                        "it" if len(missing) == 1 else "them")

    async def _listen(self, ready: asyncio.Event) -> None:
        assert self._pool is not None
        while True:
            try:
                async with self._pool.acquire() as conn:
                    def on_notify(*_args: object) -> None:
                        self._wake.set()

                    def on_lengths(_conn: object, _pid: int, _channel: str,
                                   merchant: str) -> None:
                        self._lengths_dirty.add(merchant)
                        self._lengths_wake.set()

                    await conn.add_listener(store.CHANNEL, on_notify)
                    await conn.add_listener(call_lengths.CHANNEL, on_lengths)
                    ready.set()
                    try:
                        await self._wait_and_reload()
                    finally:
                        await conn.remove_listener(store.CHANNEL, on_notify)
                        await conn.remove_listener(call_lengths.CHANNEL, on_lengths)
            except asyncio.CancelledError:
                raise
            except Exception:  # connection lost etc.: retry, keep serving the old snapshot
                log.exception("rates listener failed; retrying in 5 s")
                ready.set()
                await asyncio.sleep(5)

    async def _wait_and_reload(self) -> None:
        while True:
            timeout = SAFETY_POLL_S
            nxt = self._snap.next_change
            if nxt is not None:
                # the next decks' time (preloaded already), or the time to preload them
                wait_s = (nxt - datetime.now(UTC)).total_seconds()
                if self._next is None:
                    wait_s -= PRELOAD_S
                timeout = min(timeout, max(wait_s, 0) + 0.05)
            await within(self._wake.wait(), timeout)
            self._wake.clear()
            await self.reload()

    async def reload_call_lengths(self, merchants: set[str] | None = None) -> None:
        """Load the learned counts of ``merchants`` (None: all) and swap in their choices,
        once their expected costs for the tariffs in force are computed."""
        assert self._pool is not None, "call lengths need a database pool"
        async with self._pool.acquire() as conn:
            learned = await call_lengths.load(conn, merchants)
        await self.apply_learned(learned, merchants)

    async def apply_learned(self, learned: Mapping[tuple[str, str], call_lengths.Learned],
                            merchants: set[str] | None = None) -> None:
        """Choose ``merchants``' (None: all) distributions from ``learned`` counts, compute
        their expected costs for the tariffs in force, then swap them in."""
        terms = self._snap.terms + (self._next.terms if self._next is not None else ())
        choices = await asyncio.to_thread(self._warm_choices, learned, merchants, terms)
        self._choices = {**self._choices, **choices}  # the swap: one assignment

    def _warm_choices(self, learned: Mapping[tuple[str, str], call_lengths.Learned],
                      merchants: set[str] | None, terms: Sequence[Terms],
                      ) -> dict[tuple[str, str], LengthChoice]:
        choices = self.lengths.choices(learned, merchants)
        warm({id(c.model): c.model for c in choices.values()}.values(), terms)
        return choices

    async def _refresh_lengths(self) -> None:
        while True:
            await self._lengths_wake.wait()
            self._lengths_wake.clear()
            dirty, self._lengths_dirty = self._lengths_dirty, set()
            try:
                await self.reload_call_lengths(dirty)
            except Exception:  # keep the last models; the next notice retries
                log.exception("call lengths not reloaded for %s", ", ".join(sorted(dirty)))
                self._lengths_dirty |= dirty
            await asyncio.sleep(self.lengths.policy.refresh_s)

    # -- lookups -----------------------------------------------------------------------

    def call_length(self, merchant: str | None, number: E164) -> LengthChoice:
        """The distribution a decision for ``merchant``'s caller ``number`` assumes."""
        if merchant is None:
            return DEFAULT_CHOICE
        return self._choices.get((merchant, call_lengths.number_class(number)),
                                 DEFAULT_CHOICE)

    def distribution(self, name: str) -> DurationModel:
        try:
            return self.distributions[name]
        except KeyError:
            raise LookupError(f"unknown distribution {name!r}; known: "
                              f"{', '.join(sorted(self.distributions))}") from None

    def quote(self, number: E164, at: datetime, *, kind: str = "carrier",
              duration: DurationModel = DEFAULT_DURATION, origin: E164 | None = None,
              busy: Mapping[str, int] | None = None, max_cost: Money | None = None,
              max_rate: Money | None = None, quality: CarrierQuality | None = None,
              ) -> tuple[list[RouteQuote], list[Dropped]]:
        """Ranked routes (cheapest first) and the carriers dropped, with reasons.

        ``max_rate``: no carrier above this rate per minute (the merchant's maximum).
        ``quality``: the merchant's floor; the carriers below it on :attr:`quality_board`
        (the call-back site's figures) for the number's destination come last.

        Without ``busy``, the ranking is kept on the snapshot (:class:`Ranked`) by the
        rows matched, the periods, the limits and the number's type: the next number
        those rows price takes it with its own dial strings instead of pricing the rows
        again. A reload's new snapshot starts without any; a new quality board or
        duration model is ranked afresh."""
        ranked, fresh = self._ranking(number, at, kind, duration, origin, busy, max_cost,
                                      max_rate, quality)
        if fresh:
            return list(ranked.routes), list(ranked.dropped)
        carriers = self.snapshot_at(at).carriers
        return [replace(q, endpoint=carriers[q.carrier_id].endpoint(number.digits))
                for q in ranked.routes], list(ranked.dropped)

    def ranking(self, number: E164, at: datetime, *, duration: DurationModel = DEFAULT_DURATION,
                max_rate: Money | None = None, quality: CarrierQuality | None = None,
                ) -> Ranked:
        """:meth:`quote`'s carriers as kept, without a copy per number: their order,
        costs, reasons and drops are this number's, their ``endpoint`` the first number's
        ranked alike (dial ``endpoint_template`` for this one)."""
        return self._ranking(number, at, "carrier", duration, None, None, None, max_rate,
                             quality)[0]

    def _ranking(self, number: E164, at: datetime, kind: str, duration: DurationModel,
                 origin: E164 | None, busy: Mapping[str, int] | None, max_cost: Money | None,
                 max_rate: Money | None, quality: CarrierQuality | None,
                 ) -> tuple[Ranked, bool]:
        """The ranking kept for ``number``'s rows, or a new one (True: made for it)."""
        snap = self.snapshot_at(at)
        index = snap.carrier_index if kind == "carrier" else snap.inbound_index
        carriers = [snap.carriers[c] for c in index.carriers]
        periods = [period_at(c.periods, at, c.tz) for c in carriers]
        calling = origin.digits if origin else ""
        rows = index.match(number.digits, calling, periods, at)
        gaps: dict[str, Gap] = {}
        if kind == "carrier" and numbering.planned(number):
            number_kind = numbering.number_type(number)
            priced: list[Row | None] = []
            for c, r, p in zip(carriers, rows, periods, strict=True):
                row, gap = snap.type_rates.row_for(index, c.id, number, number_kind, r,
                                                   calling, p, at)
                priced.append(row)
                if gap is not None:
                    gaps[c.id] = gap
            rows = tuple(priced)
        board = self.quality_board.board if quality is not None and \
            self.quality_board is not None else None
        key = (kind, id(duration), tuple(map(id, rows)), tuple(periods),
               tuple(gaps.get(c.id) for c in carriers), max_cost, max_rate, quality,
               destination_of(number.digits) if board is not None else None)
        hit = snap.ranked.get(key) if busy is None else None
        if hit is not None and hit.duration is duration and hit.board is board:
            return hit, False
        candidates = [(c, r, snap.deck_id(c.id), p)
                      for c, r, p in zip(carriers, rows, periods, strict=True)]
        routes, dropped = rank_routes(candidates, number.digits, duration, self.fx,
                                      self.currency, busy=busy, max_cost=max_cost,
                                      no_deck=snap.no_deck, gaps=gaps, max_rate=max_rate)
        if board is not None and quality is not None and routes:
            routes = demote(routes, board, destination_of(number.digits), quality)
        made = Ranked(duration, board, tuple(routes), tuple(dropped))
        if busy is None:
            if len(snap.ranked) >= RANKED_MAX:
                snap.ranked.clear()
            snap.ranked[key] = made
        return made, True

    def rank(self, number: E164, at: datetime, *, kind: str = "carrier",
             duration: DurationModel = DEFAULT_DURATION, origin: E164 | None = None,
             busy: Mapping[str, int] | None = None, max_cost: Money | None = None,
             max_rate: Money | None = None, quality: CarrierQuality | None = None,
             ) -> list[RouteQuote]:
        return self.quote(number, at, kind=kind, duration=duration, origin=origin, busy=busy,
                          max_cost=max_cost, max_rate=max_rate, quality=quality)[0]

    def decide(self, number: E164, at: datetime, *, inbound_tariff: str = "ntt-freedial",
               announce_mode: str = "early_media", announce_s: Decimal = Decimal("5"),
               duration: DurationModel | None = None, merchant: str | None = None,
               origin: E164 | None = None, busy: Mapping[str, int] | None = None,
               max_cost: Money | None = None, max_rate: Money | None = None,
               quality: CarrierQuality | None = None) -> Decision:
        """``duration`` given: that distribution; else ``merchant``'s (``call_length``)."""
        if duration is None:
            choice = self.call_length(merchant, number)
            duration, lengths = choice.model, choice.explain()
        else:
            lengths = {"source": "given", "detail": f"given: {duration.name}"}
        snap = self.snapshot_at(at)
        tariff = snap.carriers.get(inbound_tariff)
        if tariff is None or tariff.kind != "inbound":
            raise UnknownTariff(inbound_tariff)
        routes, dropped = self.quote(number, at, duration=duration, origin=origin, busy=busy,
                                     max_cost=max_cost, max_rate=max_rate, quality=quality)
        direct_row = snap.inbound_index.match_one(
            inbound_tariff, number.digits, "", period_at(tariff.periods, at, tariff.tz), at)
        return decide(routes=routes, dropped=dropped, direct_row=direct_row,
                      direct_tariff=inbound_tariff, direct_deck=snap.deck_id(inbound_tariff),
                      model=duration, fx=self.fx, currency=self.currency,
                      announce_mode=announce_mode, announce_s=announce_s,
                      number=str(number), at=at.isoformat(), lengths=lengths)

    def row_for(self, tariff_id: str, number: E164, at: datetime,
                origin: E164 | None = None) -> Row | None:
        snap = self.snapshot_at(at)
        tariff = snap.carriers.get(tariff_id)
        if tariff is None:
            raise UnknownTariff(tariff_id)
        deck = snap.decks.get(tariff_id)
        if deck is not None and deck.effective_from is not None and at < deck.effective_from:
            raise DeckNotInForce(f"{tariff_id}: deck {deck.id} starts {deck.effective_from}; "
                                 f"rate calls at {at} with CdrRater (deck history)")
        index = snap.carrier_index if tariff.kind == "carrier" else snap.inbound_index
        return index.match_one(tariff_id, number.digits, origin.digits if origin else "",
                               period_at(tariff.periods, at, tariff.tz), at)

    def cost(self, carrier_id: str, number: E164, at: datetime, seconds: int | Decimal,
             ) -> Money:
        """What one leg of ``seconds`` costs on ``carrier_id`` at ``at`` (deck currency).

        Raises ``LookupError`` if the carrier has no rate for the number."""
        row = self.row_for(carrier_id, number, at)
        if row is None:
            raise LookupError(f"{carrier_id} has no rate for {number}")
        return row.terms.cost(seconds)

    def billed_seconds(self, carrier_id: str, number: E164, at: datetime,
                       seconds: int | Decimal) -> int:
        """The seconds ``cost`` bills for that leg (after the X/Y increments)."""
        row = self.row_for(carrier_id, number, at)
        if row is None:
            raise LookupError(f"{carrier_id} has no rate for {number}")
        return row.terms.billed(seconds)


def warm(models: Iterable[DurationModel], terms: Sequence[Terms]) -> None:
    """Compute (and so cache) each model's expected cost under every ``terms``."""
    for model in models:
        for t in terms:
            model.expected_cost(t)


def _build_warm(carriers: Sequence[Carrier], rows: Mapping[str, Sequence[Row]],
                decks: Mapping[str, store.DeckInfo], nxt: datetime | None,
                models: Sequence[DurationModel], starts: datetime | None = None) -> Snapshot:
    snapshot = Snapshot.build(carriers, rows, decks, nxt, starts)
    warm(models, snapshot.terms)
    return snapshot
