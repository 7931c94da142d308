"""Import a carrier's deck file: stream, validate, COPY, version, activate.

One transaction per file. The deck row is created ``staged``, the file is
streamed through :class:`~routing_rates.deckfile.DeckParser` straight into
``COPY rates_rows``; if any line was bad the transaction rolls back and the
database is unchanged (``DeckImportError`` lists every problem). A dry run
does the same, computes the diff against the deck in force, and rolls back.
Otherwise the deck is scheduled from ``effective`` (default: now), which
NOTIFYs the servers, unless ``stage=True``; with a ``distribution`` (the callback
site), its messages to the edge are written in that transaction too. A deck that
would remove more than half of the rows of the deck in force (a truncated file, the wrong carrier's
deck) is refused unless ``allow_shrink=True``; a dry run reports it.
"""

from __future__ import annotations

import asyncio
import codecs
import gzip
import hashlib
import io
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO, cast

import asyncpg
from tqdm import tqdm

from routing_rates import numbering, store
from routing_rates.deckfile import ROW_COLUMNS, DeckParser, DeckProblem
from routing_rates.distribute import Distribution, send
from routing_rates.profile import ColumnProfile, load_profile
from shared.db import Connection

log = logging.getLogger("rates.import")
SHOWN_PROBLEMS = 50         # problems printed in an error; all are counted
SHRINK_LIMIT = Decimal("0.5")   # share of the rows in force a deck may remove without asking


class ImportRefused(RuntimeError):
    """The import did not happen (unknown tariff, unreadable file ...)."""


class DeckImportError(ImportRefused):
    """The file has bad lines; nothing was changed."""

    def __init__(self, source: str, problems: list[DeckProblem], count: int) -> None:
        self.source = source
        self.problems = problems
        self.count = count
        shown = "\n".join(p.format(source) for p in problems[:SHOWN_PROBLEMS])
        more = f"\n... and {count - SHOWN_PROBLEMS} more" if count > SHOWN_PROBLEMS else ""
        super().__init__(f"{source}: {count} problem(s), nothing imported:\n{shown}{more}")


@dataclass(frozen=True, slots=True)
class Shrink:
    """A new deck removes more than :data:`SHRINK_LIMIT` of the rows in force."""

    tariff_id: str
    against_deck: int
    removed: int
    old_rows: int

    def describe(self) -> str:
        share = round(Decimal(100) * self.removed / self.old_rows)
        return (f"removes {self.removed} of the {self.old_rows} rows ({share} %) of deck "
                f"{self.against_deck}, in force for {self.tariff_id}")

    def to_json(self) -> dict[str, Any]:
        return {"tariff_id": self.tariff_id, "against_deck": self.against_deck,
                "removed": self.removed, "old_rows": self.old_rows}


class DeckShrinks(ImportRefused):
    """The deck would remove most of the rows in force; nothing was changed."""

    def __init__(self, source: str, shrink: Shrink) -> None:
        self.shrink = shrink
        super().__init__(f"{source}: this deck {shrink.describe()}; nothing imported. "
                         "Check the file; to import it anyway pass --allow-shrink")


class _DryRunDone(Exception):
    pass


@dataclass(frozen=True, slots=True)
class RateMove:
    prefix: str
    origins: str
    destination: str
    old: Decimal | None        # per minute, old deck
    new: Decimal | None
    currency: str

    @property
    def delta(self) -> Decimal:
        return (self.new or Decimal(0)) - (self.old or Decimal(0))

    def to_json(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "origins": self.origins, "destination": self.destination,
                "old": str(self.old) if self.old is not None else None,
                "new": str(self.new) if self.new is not None else None,
                "delta": str(self.delta), "currency": self.currency}


@dataclass(frozen=True, slots=True)
class DeckDiff:
    against_deck: int | None
    added: int
    removed: int
    up: int
    down: int
    other_changes: int          # same per-minute rate, other terms changed
    unchanged: int
    moves: list[RateMove] = field(default_factory=list)      # largest first
    added_sample: list[RateMove] = field(default_factory=list)
    removed_sample: list[RateMove] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"against_deck": self.against_deck, "added": self.added,
                "removed": self.removed, "up": self.up, "down": self.down,
                "other_changes": self.other_changes, "unchanged": self.unchanged,
                "moves": [m.to_json() for m in self.moves],
                "added_sample": [m.to_json() for m in self.added_sample],
                "removed_sample": [m.to_json() for m in self.removed_sample]}


@dataclass(frozen=True, slots=True)
class ImportResult:
    source: str
    tariff_id: str
    rows: int
    duplicates: int
    seconds: Decimal
    deck: store.DeckInfo | None          # None for a dry run
    diff: DeckDiff | None = None
    shrink: Shrink | None = None         # set: imported with allow_shrink, or a dry run
    #: ranges of the numbering plan priced at a row of another type ``numbering.deck_gaps``
    gaps: tuple[TypeGap, ...] = ()


@dataclass(frozen=True, slots=True)
class TypeGap:
    """A range of the plan (``8160``) the deck prices at another type's row (``81``)."""

    range: str
    number_type: str
    priced_by: str

    def describe(self) -> str:
        return (f"no row for the {self.number_type} range {self.range}: priced at "
                f"{self.priced_by} (decisions use the deck's {self.number_type} rate)")

    def to_json(self) -> dict[str, str]:
        return {"range": self.range, "number_type": self.number_type,
                "priced_by": self.priced_by}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _decompressed(raw: BinaryIO, path: Path) -> AbstractContextManager[BinaryIO]:
    """A ``.gz`` deck is read through gzip; progress still counts the file's own bytes."""
    if path.name.endswith(".gz"):
        return cast(AbstractContextManager[BinaryIO], gzip.GzipFile(fileobj=raw, mode="rb"))
    return nullcontext(raw)


def _undecodable_line(path: Path, encoding: str) -> int:
    """The first line that does not decode (looked for only once decoding failed)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    with path.open("rb") as raw, _decompressed(raw, path) as data:
        for number, line in enumerate(data, 1):
            try:
                decoder.decode(line)
            except UnicodeDecodeError:
                return number
    return 0


async def _chunks(parser: DeckParser, path: Path, profile: ColumnProfile,
                  progress: bool) -> AsyncIterator[bytes]:
    """COPY data, parsed in a worker thread so parsing overlaps PostgreSQL's work.

    The queue is bounded: memory stays flat whatever the file size."""
    blocks: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=8)
    stop = threading.Event()

    def produce() -> None:
        try:
            size = path.stat().st_size
            with path.open("rb") as raw, _decompressed(raw, path) as data, \
                    io.TextIOWrapper(data, encoding=profile.encoding, newline="") as text, \
                    tqdm(total=size, unit="B", unit_scale=True, disable=not progress,
                         desc=path.name, mininterval=0.5) as bar:
                for block in parser.chunks(text):
                    if stop.is_set():
                        return
                    blocks.put(block.encode())
                    bar.update(raw.tell() - bar.n)
                bar.update(size - bar.n)
            blocks.put(None)
        except BaseException as exc:  # handed to the consumer, re-raised there
            blocks.put(exc)

    worker = threading.Thread(target=produce, name="rates-import-parse", daemon=True)
    worker.start()
    try:
        while True:
            item = blocks.get_nowait() if not blocks.empty() else \
                await asyncio.to_thread(blocks.get)
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():
            try:
                blocks.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.01)
        worker.join()


async def index_and_dedupe(conn: Connection, table: str, parser: DeckParser) -> int:
    """Build the deck's unique key index. If a key (prefix, origins, period, start)
    repeats: an error when the terms differ, else the later copies are dropped.
    Returns how many rows were dropped."""
    create = store.key_index(table)
    try:
        async with conn.transaction():
            await conn.execute(create)
        return 0
    except asyncpg.UniqueViolationError:
        pass
    rows = await conn.fetch(
        f"SELECT prefix, array_agg(line ORDER BY line) AS lines, count(DISTINCT "
        f"(rate, unit_s, initial_s, increment_s, connect_fee, min_cost, currency)) AS terms "
        f"FROM {table} GROUP BY prefix, origins, period, valid_from HAVING count(*) > 1")
    dropped = 0
    for r in rows:
        first, *later = r["lines"]
        if r["terms"] > 1:
            for line in later:
                parser.problem(line, "rate", f"prefix {r['prefix']} already on line {first} "
                               "with different terms")
        else:
            dropped += len(later)
    if not parser.problem_count:
        # By row, not by line: a line with a prefix list holds several rows.
        await conn.execute(
            f"DELETE FROM {table} t USING (SELECT ctid, row_number() OVER (PARTITION BY "
            f"prefix, origins, period, valid_from ORDER BY line) AS n FROM {table}) d "
            "WHERE t.ctid = d.ctid AND d.n > 1")
        await conn.execute(create)
    return dropped


async def import_deck(conn: Connection, tariff_id: str, path: Path,
                      profile: ColumnProfile | None = None, *, effective: datetime | None = None,
                      stage: bool = False, dry_run: bool = False, progress: bool = False,
                      decimals: int | None = None, allow_shrink: bool = False,
                      distribution: Distribution | None = None) -> ImportResult:
    """``distribution``: the deck, once scheduled, goes to the edge in the same transaction
    (``routing_rates.distribute``); ``effective`` then defaults to the earliest the lead
    allows, and an earlier one is refused before anything is read."""
    started = time.perf_counter()
    if distribution is not None and effective is not None and not stage and not dry_run:
        distribution.check(effective, datetime.now(UTC))
    source = str(path)
    tariff = await conn.fetchrow("SELECT config, kind FROM rates_tariffs WHERE id = $1",
                                 tariff_id)
    if tariff is None:
        raise ImportRefused(f"unknown carrier/tariff {tariff_id!r}: load it first "
                            "(python -m routing_rates carriers load FILE)")
    if profile is None:
        name = _config_profile(tariff["config"])
        if not name:
            raise ImportRefused(f"{tariff_id} has no default profile; pass --profile")
        profile = load_profile(name)
    if not await asyncio.to_thread(path.is_file):
        raise ImportRefused(f"{source}: no such file")
    sha = await asyncio.to_thread(_sha256, path)
    parser = DeckParser(profile)
    result: ImportResult | None = None
    try:
        async with conn.transaction():
            deck_id: int = await conn.fetchval(
                "INSERT INTO rates_decks (tariff_id, state, decimals, source, sha256, profile) "
                "VALUES ($1, 'staged', $2, $3, $4, $5) RETURNING id",
                tariff_id, profile.decimals if decimals is None else decimals,
                path.name, sha, profile.name)
            part = await store.create_partition(conn, deck_id)
            try:
                await conn.copy_to_table(
                    part, source=_chunks(parser, path, profile, progress),
                    columns=ROW_COLUMNS, format="text")
            except UnicodeDecodeError as exc:
                line = await asyncio.to_thread(_undecodable_line, path, profile.encoding)
                raise ImportRefused(f"{source}:{line}: not {profile.encoding} text: "
                                    f"{exc.reason} (byte {exc.object[exc.start:exc.end]!r})"
                                    ) from exc
            # Duplicates are looked for even in a deck with bad lines: the first report
            # lists every problem.
            duplicates = await index_and_dedupe(conn, part, parser)
            if parser.problem_count:
                parser.problems.sort(key=lambda p: p.line)
                raise DeckImportError(source, parser.problems, parser.problem_count)
            rows = parser.row_count - duplicates
            await store.attach_partition(conn, deck_id, rows, duplicates)
            gaps = await _gaps(conn, part, tariff["kind"], f"{source} for {tariff_id}")
            current = (await store.decks_in_force(conn, effective or datetime.now(UTC))
                       ).get(tariff_id)
            if dry_run:
                diff = await diff_decks(conn, deck_id, current)
                elapsed = Decimal(str(round(time.perf_counter() - started, 3)))
                result = ImportResult(source, tariff_id, rows, duplicates, elapsed, None,
                                      diff, _shrink(current, diff.removed), gaps)
                raise _DryRunDone
            shrink = _shrink(current, await removed_rows(conn, deck_id, current)
                             if current else 0)
            if shrink is not None and not allow_shrink:
                raise DeckShrinks(source, shrink)
            if shrink is not None:
                log.warning("%s: the deck %s (allowed)", source, shrink.describe())
            deck = await _activate(conn, deck_id, effective, stage, distribution)
            elapsed = Decimal(str(round(time.perf_counter() - started, 3)))
            result = ImportResult(source, tariff_id, rows, duplicates, elapsed, deck,
                                  shrink=shrink, gaps=gaps)
    except _DryRunDone:
        pass
    assert result is not None
    log.info("imported %s for %s: %d rows in %s s (dry run: %s)", source, tariff_id,
             result.rows, result.seconds, dry_run)
    return result


async def _gaps(conn: Connection, part: str, kind: str, what: str) -> tuple[TypeGap, ...]:
    """The plans' ranges a carrier's deck prices at a row of another number type (logged)."""
    if kind != "carrier":
        return ()
    prefixes = await conn.fetch(f"SELECT DISTINCT prefix FROM {part} "
                                "WHERE prefix LIKE ANY($1::text[])",
                                [code + "%" for code in numbering.PLANS])
    gaps = tuple(TypeGap(*gap) for gap in numbering.deck_gaps(r["prefix"] for r in prefixes))
    for gap in gaps:
        log.warning("%s: %s", what, gap.describe())
    return gaps


async def _activate(conn: Connection, deck_id: int, effective: datetime | None, stage: bool,
                    distribution: Distribution | None) -> store.DeckInfo:
    """The imported deck staged, or scheduled (and sent to the edge with a distribution)."""
    if stage:
        return await store.get_deck(conn, deck_id)
    if distribution is None:
        return await store.schedule(conn, deck_id, effective)
    now = datetime.now(UTC)
    deck = await store.schedule(conn, deck_id, effective or distribution.earliest(now))
    await send(conn, deck, distribution, now)
    return deck


def _shrink(current: store.DeckInfo | None, removed: int) -> Shrink | None:
    if current is None or removed <= current.row_count * SHRINK_LIMIT:
        return None
    return Shrink(current.tariff_id, current.id, removed, current.row_count)


def _config_profile(config: object) -> str:
    import json

    data = json.loads(config) if isinstance(config, str) else config
    return str(data.get("profile", "")) if isinstance(data, dict) else ""


_DIFF_SQL = """
WITH n AS (SELECT prefix, origins, period, coalesce(valid_from, '-infinity') AS vf,
                  destination, rate * 60 / unit_s AS pm, unit_s, initial_s, increment_s,
                  connect_fee, min_cost, currency
           FROM rates_rows WHERE deck_id = $1),
     o AS (SELECT prefix, origins, period, coalesce(valid_from, '-infinity') AS vf,
                  destination, rate * 60 / unit_s AS pm, unit_s, initial_s, increment_s,
                  connect_fee, min_cost, currency
           FROM rates_rows WHERE deck_id = $2)
SELECT coalesce(n.prefix, o.prefix) AS prefix, coalesce(n.origins, o.origins) AS origins,
       coalesce(n.destination, o.destination) AS destination,
       o.pm AS old, n.pm AS new, coalesce(n.currency, o.currency) AS currency,
       CASE WHEN o.prefix IS NULL THEN 'added'
            WHEN n.prefix IS NULL THEN 'removed'
            WHEN n.pm > o.pm THEN 'up' WHEN n.pm < o.pm THEN 'down'
            WHEN (n.initial_s, n.increment_s, n.connect_fee, n.min_cost, n.currency)
                 IS DISTINCT FROM (o.initial_s, o.increment_s, o.connect_fee, o.min_cost,
                                   o.currency) THEN 'other'
            ELSE 'same' END AS kind
FROM n FULL OUTER JOIN o
  ON n.prefix = o.prefix AND n.origins = o.origins AND n.period = o.period AND n.vf = o.vf
"""


async def diff_decks(conn: Connection, new_deck: int, old: store.DeckInfo | None,
                     limit: int = 20) -> DeckDiff:
    """What ``new_deck`` changes against ``old`` (per-minute rates; largest moves first)."""
    counts = {"added": 0, "removed": 0, "up": 0, "down": 0, "other": 0, "same": 0}
    rows = await conn.fetch(
        f"SELECT kind, count(*) AS n FROM ({_DIFF_SQL}) d GROUP BY kind",
        new_deck, old.id if old else -1)
    counts.update({r["kind"]: r["n"] for r in rows})

    def move(r: Any) -> RateMove:
        return RateMove(r["prefix"], r["origins"], r["destination"],
                        _norm(r["old"]), _norm(r["new"]), r["currency"])

    moves = await conn.fetch(
        f"SELECT * FROM ({_DIFF_SQL}) d WHERE kind IN ('up', 'down') "
        "ORDER BY abs(new - old) DESC, prefix LIMIT $3", new_deck, old.id if old else -1, limit)
    added = await conn.fetch(
        f"SELECT * FROM ({_DIFF_SQL}) d WHERE kind = 'added' ORDER BY prefix LIMIT $3",
        new_deck, old.id if old else -1, limit)
    removed = await conn.fetch(
        f"SELECT * FROM ({_DIFF_SQL}) d WHERE kind = 'removed' ORDER BY prefix LIMIT $3",
        new_deck, old.id if old else -1, limit)
    return DeckDiff(old.id if old else None, counts["added"], counts["removed"], counts["up"],
                    counts["down"], counts["other"], counts["same"],
                    [move(r) for r in moves], [move(r) for r in added],
                    [move(r) for r in removed])


async def removed_rows(conn: Connection, new_deck: int, old: store.DeckInfo) -> int:
    """How many rows of ``old`` ``new_deck`` has no row for: the diff's ``removed``, by
    an anti-join on the same key (a third of the diff's time on a 72,554-row deck)."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM rates_rows o WHERE o.deck_id = $2 AND NOT EXISTS (SELECT 1 "
        "FROM rates_rows n WHERE n.deck_id = $1 AND n.prefix = o.prefix AND n.origins = "
        "o.origins AND n.period = o.period AND n.valid_from IS NOT DISTINCT FROM "
        "o.valid_from)", new_deck, old.id)
    return count


def _norm(value: Decimal | None) -> Decimal | None:
    return value.normalize() if value is not None else None
