"""Rate decks from the callback site to the edge, over the signed link.

The callback site owns the carriers and their decks; the edge imports nothing of its own.
Activating a deck version there with distribution (:func:`activate`, or
``import_deck(..., distribution=...)``) writes, in the activation's transaction, the
version's outbox messages (kind ``rate_deck``, path ``/v1/link/rate-decks``): its carrier
(``Carrier.to_json``), version (the deck's id on the callback site), the hash of its rows
in their canonical form (:func:`canonical_rows`), the effective time, and the canonical
rows gzipped and cut into parts of at most :data:`CHUNK_BYTES` (a link request body is
limited, 64 KiB by default; each part is one message). The effective time is at least
the distribution's lead ahead, so the edge holds the version before it comes into force.

The edge (:func:`receive`, in the transaction that records the message id) keeps the
parts in ``rates_deck_parts``; the last one to arrive, in whatever order, assembles
them, checks the hash, COPYs the rows into a deck of its own (origin ``link``), checks
the hash of what it stored, and schedules it from the same effective time. Each site's
rating service picks the version in force at a decision's time, so both switch at that
instant. A version the edge has not received is never assumed: until it is stored, the
edge decides with what it holds (a carrier with no deck in force is dropped
``no-deck``).

A re-delivered part is acknowledged and changes nothing (message id, then the natural
key ``(carrier, version, activation, part)``); a newer activation of a version the edge
holds moves its effective time; an older one arriving late changes nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import re
import uuid
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from routing_rates import store
from routing_rates.carriers import Carrier, CarrierConfigError, from_json_checked
from routing_rates.deckfile import ROW_COLUMNS
from shared.db import Connection
from shared.http import ApiError, InvalidField, require_timestamp
from shared.openapi import TIMESTAMP, nullable
from shared.outbox import Outbox

log = logging.getLogger("rates.distribute")

KIND = "rate_deck"
PATH = "/v1/link/rate-decks"
#: gzipped canonical rows per message: base64 and the fields stay well under 64 KiB
CHUNK_BYTES = 32 * 1024
DEFAULT_LEAD_S = 60
MAX_PARTS = 10_000
MAX_ROWS = 5_000_000
#: the canonical form of a row is far shorter; more is refused before it is inflated
MAX_ROW_BYTES = 4096
_NAMESPACE = uuid.UUID("6f1c0a52-3d9e-4b8e-9a57-2f0d6c1b7e41")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Answer = tuple[int, dict[str, Any]]

_UTC_TEXT = """to_char({0} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
#: ROW_COLUMNS of one deck in a form that does not depend on the session (time zone,
#: date style, collation): the bytes both sites hash, and the COPY data sent
CANONICAL_QUERY = (
    "SELECT prefix, destination, rate::text, unit_s, initial_s, increment_s, "
    "connect_fee::text, min_cost::text, currency, origins, period, "
    f"{_UTC_TEXT.format('valid_from')}, {_UTC_TEXT.format('valid_to')}, line "
    "FROM rates_rows WHERE deck_id = $1 ORDER BY prefix COLLATE \"C\", "
    "origins COLLATE \"C\", period COLLATE \"C\", valid_from NULLS FIRST")


class DistributionRefused(RuntimeError):
    """The activation cannot be distributed as asked (too soon, not scheduled ...)."""


@dataclass(frozen=True, slots=True)
class Distribution:
    """How activations on the callback site reach the edge."""

    lead_s: int = DEFAULT_LEAD_S         # effective time at least this far ahead
    chunk_bytes: int = CHUNK_BYTES

    def earliest(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.lead_s)

    def check(self, effective: datetime, now: datetime) -> None:
        """``DistributionRefused`` unless ``effective`` is at least the lead after ``now``."""
        earliest = self.earliest(now)
        if effective < earliest:
            raise DistributionRefused(
                f"effective time {effective.isoformat()} is less than {self.lead_s} s ahead "
                f"(the distribution lead): the edge could not hold the version by then; "
                f"give {earliest.isoformat(timespec='seconds')} or later")


# --- the callback site: activation and its messages ---------------------------------------

async def canonical_rows(conn: Connection, deck_id: int) -> bytes:
    """The deck's rows as COPY text, in :data:`CANONICAL_QUERY`'s form and order."""
    chunks: list[bytes] = []

    async def collect(chunk: bytes) -> None:
        chunks.append(bytes(chunk))

    await conn.copy_from_query(CANONICAL_QUERY, deck_id, output=collect, format="text")
    return b"".join(chunks)


def content_hash(rows: bytes) -> str:
    return hashlib.sha256(rows).hexdigest()


async def deck_hash(conn: Connection, deck_id: int) -> str:
    """The hash of a deck's canonical rows: equal on both sites for one version."""
    return content_hash(await canonical_rows(conn, deck_id))


def split(data: bytes, size: int) -> list[bytes]:
    """``data`` in pieces of at most ``size`` bytes (one piece, maybe empty, at least)."""
    if size < 1:
        raise ValueError("size must be at least 1")
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


def messages(deck: store.DeckInfo, carrier: Carrier, rows: bytes, activated_at: datetime,
             chunk_bytes: int = CHUNK_BYTES) -> list[tuple[str, dict[str, Any]]]:
    """The ``(message id, payload)`` of each part of one activation of ``deck``.

    The ids are derived from the carrier, version, activation time and part: writing
    one activation twice writes nothing more."""
    if deck.effective_from is None:
        raise DistributionRefused(f"deck {deck.id} is not scheduled")
    pieces = split(gzip_bytes(rows), chunk_bytes)
    if len(pieces) > MAX_PARTS:
        raise DistributionRefused(f"deck {deck.id} needs {len(pieces)} parts; at most "
                                  f"{MAX_PARTS} are sent")
    common = {"kind": KIND, "carrier": carrier.to_json(), "version": deck.id,
              "sha256": content_hash(rows), "file_sha256": deck.sha256,
              "effective_from": deck.effective_from.isoformat(),
              "activated_at": activated_at.isoformat(), "decimals": deck.decimals,
              "profile": deck.profile, "source": deck.source, "rows": deck.row_count,
              "parts": len(pieces), "encoding": "gzip"}
    out = []
    for i, piece in enumerate(pieces):
        name = f"{carrier.id}/{deck.id}/{activated_at.isoformat()}/{i}"
        out.append((str(uuid.uuid5(_NAMESPACE, name)),
                    common | {"part": i, "data": base64.b64encode(piece).decode("ascii")}))
    return out


def gzip_bytes(data: bytes) -> bytes:
    """``data`` gzipped, with no file name or time in the header (the same bytes each time)."""
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    return packer.compress(data) + packer.flush()


async def send(conn: Connection, deck: store.DeckInfo, distribution: Distribution,
               now: datetime | None = None) -> list[str]:
    """Write the outbox messages carrying ``deck`` (scheduled, in this transaction) to the
    edge, after checking the lead; record its content hash. Returns the message ids."""
    if not conn.is_in_transaction():
        raise RuntimeError("send must run in the activation's transaction")
    if deck.state != "scheduled" or deck.effective_from is None:
        raise DistributionRefused(f"deck {deck.id} is {deck.state}, not scheduled")
    distribution.check(deck.effective_from, now or datetime.now(UTC))
    config = await conn.fetchval("SELECT config::text FROM rates_tariffs WHERE id = $1",
                                 deck.tariff_id)
    activated_at = await conn.fetchval("SELECT scheduled_at FROM rates_decks WHERE id = $1",
                                       deck.id)
    carrier = Carrier.from_json(json.loads(config))
    rows = await canonical_rows(conn, deck.id)
    await conn.execute("UPDATE rates_decks SET content_sha256 = $2 WHERE id = $1", deck.id,
                       content_hash(rows))
    ids = []
    for mid, payload in messages(deck, carrier, rows, activated_at, distribution.chunk_bytes):
        ids.append(await Outbox.enqueue(conn, kind=KIND, path=PATH, payload=payload,
                                        message_id=mid))
    log.info("deck %s of %s (%d rows) goes to the edge in %d message(s), in force from %s",
             deck.id, deck.tariff_id, deck.row_count, len(ids),
             deck.effective_from.isoformat())
    return ids


async def activate(conn: Connection, deck_id: int, at: datetime | None,
                   distribution: Distribution) -> store.DeckInfo:
    """Schedule a deck from ``at`` (default: the earliest the lead allows) and write its
    messages to the edge: one transaction."""
    now = datetime.now(UTC)
    when = at or distribution.earliest(now)
    distribution.check(when, now)
    async with conn.transaction():
        deck = await store.schedule(conn, deck_id, when)
        await send(conn, deck, distribution, now)
    return await store.get_deck(conn, deck_id)


# --- the edge: receiving ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DeckPart:
    """One ``rate_deck`` message, checked."""

    carrier: Carrier
    version: int
    sha256: str
    file_sha256: str
    effective_from: datetime
    activated_at: datetime
    decimals: int
    profile: str
    source: str
    rows: int
    part: int
    parts: int
    data: bytes                # this part's slice of the gzipped canonical rows


def _int(data: Mapping[str, Any], field: str, low: int, high: int) -> int:
    value = data.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidField(field, f"must be a whole number from {low} to {high}")
    return value


def _text(data: Mapping[str, Any], field: str, max_len: int = 256) -> str:
    value = data.get(field)
    if not isinstance(value, str) or len(value) > max_len:
        raise InvalidField(field, f"must be a string of at most {max_len} characters")
    return value


def _hash(data: Mapping[str, Any], field: str) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not _SHA256.match(value):
        raise InvalidField(field, "must be a SHA-256 in lowercase hex")
    return value


def parse_part(data: Mapping[str, Any]) -> DeckPart:
    """A ``rate_deck`` message body; 400 ``invalid-field`` naming the first bad field."""
    if data.get("kind") != KIND:
        raise InvalidField("kind", f"must be {KIND!r}")
    if data.get("encoding") != "gzip":
        raise InvalidField("encoding", "must be 'gzip'")
    try:
        carrier = from_json_checked(data.get("carrier"))
    except CarrierConfigError as exc:
        raise InvalidField("carrier", str(exc)) from None
    parts = _int(data, "parts", 1, MAX_PARTS)
    part = _int(data, "part", 0, parts - 1)
    encoded = data.get("data")
    if not isinstance(encoded, str):
        raise InvalidField("data", "must be base64 text")
    try:
        chunk = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidField("data", "must be base64 text") from None
    return DeckPart(
        carrier=carrier, version=_int(data, "version", 1, 2**63 - 1),
        sha256=_hash(data, "sha256"), file_sha256=_hash(data, "file_sha256"),
        effective_from=require_timestamp(data, "effective_from"),
        activated_at=require_timestamp(data, "activated_at"),
        decimals=_int(data, "decimals", 0, 12), profile=_text(data, "profile"),
        source=_text(data, "source"), rows=_int(data, "rows", 0, MAX_ROWS), part=part,
        parts=parts, data=chunk)


def inflate(data: bytes, limit: int) -> bytes:
    """Gunzip ``data``; 400 ``invalid-field`` (``data``) if it is not gzip or would
    inflate past ``limit`` bytes."""
    unpacker = zlib.decompressobj(31)
    try:
        out = unpacker.decompress(data, limit + 1)
        if len(out) > limit or unpacker.unconsumed_tail:
            raise InvalidField("data", f"inflates past {limit} bytes")
        out += unpacker.flush()
    except zlib.error as exc:
        raise InvalidField("data", f"the parts together are not gzip data ({exc})") from None
    if not unpacker.eof:
        raise InvalidField("data", "the parts together are not complete gzip data")
    return out


class HashMismatch(ApiError):
    def __init__(self, part: DeckPart, got: str, stage: str) -> None:
        super().__init__(422, "rate-deck-hash-mismatch",
                         f"{part.carrier.id} version {part.version}: the rows {stage} hash "
                         f"to {got}, not {part.sha256}", field="sha256")


def _held(part: DeckPart, deck: store.DeckInfo, status: str) -> Answer:
    return 200, {"status": status, "carrier": part.carrier.id, "version": part.version,
                 "deck_id": deck.id, "effective_from": deck.effective_from.isoformat()
                 if deck.effective_from else None}


async def receive(conn: Connection, part: DeckPart) -> Answer:
    """Store one part (in the caller's transaction); with the last, the version."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                       f"rate_deck/{part.carrier.id}/{part.version}")
    held = await conn.fetchrow(
        "SELECT id, content_sha256, origin_activated_at FROM rates_decks "
        "WHERE origin = 'link' AND tariff_id = $1 AND origin_version = $2",
        part.carrier.id, part.version)
    if held is not None:
        return await _activated_again(conn, part, held)
    await conn.execute(
        "INSERT INTO rates_deck_parts (tariff_id, version, effective_from, part, parts, "
        "sha256, data) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        part.carrier.id, part.version, part.effective_from, part.part, part.parts,
        part.sha256, part.data)
    stored = await conn.fetch(
        "SELECT part, parts, sha256 FROM rates_deck_parts WHERE tariff_id = $1 AND "
        "version = $2 AND effective_from = $3 ORDER BY part", part.carrier.id, part.version,
        part.effective_from)
    for other in stored:
        if (other["parts"], other["sha256"]) != (part.parts, part.sha256):
            raise InvalidField("parts", f"part {other['part']} of this activation said "
                                        f"{other['parts']} parts, hash {other['sha256']}")
    if len(stored) < part.parts:
        return 202, {"status": "partial", "carrier": part.carrier.id, "version": part.version,
                     "received": len(stored), "parts": part.parts}
    data = b"".join(await conn.fetchval(
        "SELECT array_agg(data ORDER BY part) FROM rates_deck_parts WHERE tariff_id = $1 "
        "AND version = $2 AND effective_from = $3", part.carrier.id, part.version,
        part.effective_from))
    deck = await _store(conn, part, inflate(data, max(part.rows, 1) * MAX_ROW_BYTES))
    await conn.execute("DELETE FROM rates_deck_parts WHERE tariff_id = $1 AND version = $2",
                       part.carrier.id, part.version)
    return _held(part, deck, "stored")


async def _activated_again(conn: Connection, part: DeckPart, held: Mapping[str, Any]
                           ) -> Answer:
    """A part of a version already held: the same activation (acknowledged), a newer one
    (the effective time moves), or an older one arriving late (nothing changes)."""
    if held["content_sha256"] != part.sha256:
        raise ApiError(422, "rate-deck-version-conflict",
                       f"{part.carrier.id} version {part.version} is held with hash "
                       f"{held['content_sha256']}, not {part.sha256}", field="sha256")
    deck = await store.get_deck(conn, held["id"])
    if part.activated_at <= held["origin_activated_at"] \
            or deck.effective_from == part.effective_from:
        return _held(part, deck, "held")
    deck = await _schedule(conn, part, deck.id)
    log.info("%s version %s (deck %s) activated again: in force from %s", part.carrier.id,
             part.version, deck.id, part.effective_from.isoformat())
    return _held(part, deck, "rescheduled")


async def _schedule(conn: Connection, part: DeckPart, deck_id: int) -> store.DeckInfo:
    try:
        deck = await store.schedule(conn, deck_id, part.effective_from)
    except store.DeckStateError as exc:  # another deck starts at that instant: wait for
        raise ApiError(409, "rate-deck-clash", str(exc)) from None  # its operator
    await conn.execute("UPDATE rates_decks SET origin_activated_at = $2 WHERE id = $1",
                       deck_id, part.activated_at)
    late = (datetime.now(UTC) - part.effective_from).total_seconds()
    if late > 0:
        log.warning("%s version %s arrived %.0f s after its effective time %s: in force "
                    "from now", part.carrier.id, part.version, late,
                    part.effective_from.isoformat())
    return deck


async def _store(conn: Connection, part: DeckPart, rows: bytes) -> store.DeckInfo:
    got = content_hash(rows)
    if got != part.sha256:
        raise HashMismatch(part, got, "received")
    await store.upsert_tariffs(conn, [part.carrier])
    deck_id: int = await conn.fetchval(
        "INSERT INTO rates_decks (tariff_id, state, decimals, source, sha256, profile, origin, "
        "origin_version, content_sha256) VALUES ($1, 'staged', $2, $3, $4, $5, 'link', $6, $7) "
        "RETURNING id", part.carrier.id, part.decimals, part.source, part.file_sha256,
        part.profile, part.version, part.sha256)
    table = await store.create_partition(conn, deck_id)
    try:
        status = await conn.copy_to_table(table, source=io.BytesIO(rows),
                                          columns=ROW_COLUMNS, format="text")
        await conn.execute(store.key_index(table))
    except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
        raise InvalidField("data", f"rows refused: {exc}") from None
    count = int(status.split()[-1])
    if count != part.rows:
        raise InvalidField("rows", f"says {part.rows}, the data holds {count}")
    await store.attach_partition(conn, deck_id, count, 0)
    got = await deck_hash(conn, deck_id)
    if got != part.sha256:
        raise HashMismatch(part, got, "stored")
    deck = await _schedule(conn, part, deck_id)
    log.info("%s version %s stored as deck %s: %d rows, in force from %s", part.carrier.id,
             part.version, deck_id, count, part.effective_from.isoformat())
    return deck


# --- the message, as the edge's OpenAPI document states it --------------------------------

_EXAMPLE_ROWS = b"8190\tJP mobile\t0.1398\t60\t60\t60\t0\t0\tUSD\t\t\t\\N\t\\N\t2\n"
_EXAMPLE_DATA = gzip_bytes(_EXAMPLE_ROWS)
RATE_DECK_EXAMPLES: dict[str, dict[str, Any]] = {"rate_deck": {
    "kind": KIND, "carrier": Carrier("carrier-a", "Plivo", currency="USD",
                                     dial_string="PJSIP/{digits}@carrier-a").to_json(),
    "version": 17, "sha256": content_hash(_EXAMPLE_ROWS), "file_sha256": "0" * 64,
    "effective_from": "2026-12-05T03:00:00+00:00", "activated_at": "2026-12-05T02:50:00+00:00",
    "decimals": 4, "profile": "generic", "source": "carrier-a.csv", "rows": 1, "parts": 1,
    "encoding": "gzip", "part": 0, "data": base64.b64encode(_EXAMPLE_DATA).decode("ascii")}}
_STRING = {"type": "string", "maxLength": 256}
_HEX = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
RATE_DECK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["kind", "carrier", "version", "sha256", "file_sha256", "effective_from",
                 "activated_at", "decimals", "profile", "source", "rows", "parts", "part",
                 "encoding", "data"],
    "properties": {
        "kind": {"enum": [KIND]},
        "carrier": {"type": "object", "description": "the carrier (or inbound tariff) as "
                    "the callback site holds it", "required": ["id", "name", "kind",
                                                               "enabled", "currency",
                                                               "timezone"]},
        "version": {"type": "integer", "minimum": 1, "description": "the deck's id on the "
                    "callback site"},
        "sha256": {**_HEX, "description": "of the canonical rows (all parts, inflated)"},
        "file_sha256": {**_HEX, "description": "of the file imported on the callback site"},
        "effective_from": TIMESTAMP, "activated_at": TIMESTAMP,
        "decimals": {"type": "integer", "minimum": 0, "maximum": 12},
        "profile": _STRING, "source": _STRING,
        "rows": {"type": "integer", "minimum": 0, "maximum": MAX_ROWS},
        "parts": {"type": "integer", "minimum": 1, "maximum": MAX_PARTS},
        "part": {"type": "integer", "minimum": 0, "maximum": MAX_PARTS - 1},
        "encoding": {"enum": ["gzip"]},
        "data": {"type": "string", "description": "base64 of this part's bytes of the "
                 "gzipped canonical rows"}}}
RATE_DECK_ANSWER: dict[str, Any] = {
    "type": "object", "required": ["status", "carrier", "version"],
    "properties": {"status": {"enum": ["partial", "stored", "held", "rescheduled"]},
                   "carrier": {"type": "string"}, "version": {"type": "integer"},
                   "deck_id": {"type": "integer"}, "received": {"type": "integer"},
                   "parts": {"type": "integer"},
                   "effective_from": nullable(TIMESTAMP)}}
RATE_DECK_ERRORS = {409: ("rates-disabled", "rate-deck-clash"),
                    422: ("rate-deck-hash-mismatch", "rate-deck-version-conflict")}
