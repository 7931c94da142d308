"""The edge's half of deck distribution: the ``rate_deck`` messages the callback site
sends (:mod:`routing_rates.distribute`), checked and stored.

:func:`receive` runs in the transaction that records the message id
(``shared.link.accept_once``). A part is kept in ``rates_deck_parts``; the last one to
arrive, in whatever order, assembles the version: the parts inflated (bounded by the
declared rows), the rows hashed and compared with the message's hash, COPYed into a deck
of this site's own (origin ``link``), hashed again as stored, and scheduled from the same
effective time. The parts of one version are serialised by an advisory lock, so they may
arrive concurrently, twice, or over both routes.

A re-delivered part is acknowledged and changes nothing (message id, then the natural key
``(carrier, version, activation, part)``); a newer activation of a version held here moves
its effective time; an older one arriving late changes nothing. A withdrawal
(``rate_deck_cancel``) cancels the version if it is not in force yet, or, if it has not
arrived, keeps it from ever being stored. A version this site has not received is never
assumed: until it is stored, the rating service decides with what is held (a carrier with
no deck in force is dropped ``no-deck``).
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from routing_rates import store
from routing_rates.carriers import Carrier, CarrierConfigError, from_json_checked, valid_id
from routing_rates.deckfile import ROW_COLUMNS
from routing_rates.distribute import (
    BULK_TIMEOUT_S,
    CANCEL_KIND,
    KIND,
    MAX_PARTS,
    MAX_ROW_BYTES,
    MAX_ROWS,
    content_hash,
    deck_hash,
    gzip_bytes,
)
from shared.db import Connection
from shared.http import ApiError, InvalidField, require_timestamp
from shared.openapi import TIMESTAMP, nullable

log = logging.getLogger("rates.distribute")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Answer = tuple[int, dict[str, Any]]


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


@dataclass(frozen=True, slots=True)
class DeckWithdrawal:
    """One ``rate_deck_cancel`` message, checked: the callback site cancelled a version
    it had sent, before its time."""

    carrier_id: str
    version: int
    cancelled_at: datetime


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


def parse_message(data: Mapping[str, Any]) -> DeckPart | DeckWithdrawal:
    """A ``rate_deck`` or ``rate_deck_cancel`` body; 400 ``invalid-field`` naming the first
    bad field."""
    if data.get("kind") == CANCEL_KIND:
        carrier_id = data.get("carrier_id")
        if not valid_id(carrier_id):
            raise InvalidField("carrier_id", "must be a carrier id ([a-z0-9-])")
        return DeckWithdrawal(str(carrier_id), _int(data, "version", 1, 2**63 - 1),
                              require_timestamp(data, "cancelled_at"))
    return parse_part(data)


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


async def _lock(conn: Connection, carrier_id: str, version: int) -> None:
    """The messages of one version, one at a time (until the transaction ends)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                       f"rate_deck/{carrier_id}/{version}")


async def receive(conn: Connection, message: DeckPart | DeckWithdrawal) -> Answer:
    """Store one part (in the caller's transaction), with the last the version; or
    withdraw a version."""
    if isinstance(message, DeckWithdrawal):
        return await _withdraw(conn, message)
    part = message
    await _lock(conn, part.carrier.id, part.version)
    if await conn.fetchval("SELECT true FROM rates_deck_withdrawn WHERE tariff_id = $1 AND "
                           "version = $2", part.carrier.id, part.version):
        return 200, {"status": "cancelled", "carrier": part.carrier.id,
                     "version": part.version}
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


async def _withdraw(conn: Connection, w: DeckWithdrawal) -> Answer:
    """Cancel the version if held and not in force yet; if it has not arrived, keep it
    from ever being stored (its parts so far are dropped)."""
    await _lock(conn, w.carrier_id, w.version)
    answer: dict[str, Any] = {"status": "cancelled", "carrier": w.carrier_id,
                              "version": w.version}
    held = await conn.fetchval("SELECT id FROM rates_decks WHERE origin = 'link' AND "
                               "tariff_id = $1 AND origin_version = $2", w.carrier_id,
                               w.version)
    if held is None:
        await conn.execute(
            "INSERT INTO rates_deck_withdrawn (tariff_id, version, cancelled_at) "
            "VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", w.carrier_id, w.version,
            w.cancelled_at)
        await conn.execute("DELETE FROM rates_deck_parts WHERE tariff_id = $1 AND "
                           "version = $2", w.carrier_id, w.version)
        log.info("%s version %s withdrawn before it arrived", w.carrier_id, w.version)
        return 200, answer
    try:
        await store.cancel(conn, held)
    except store.DeckStateError as exc:  # it came into force here before the withdrawal
        raise ApiError(422, "rate-deck-in-force",
                       f"{w.carrier_id} version {w.version} (deck {held}) was withdrawn "
                       f"at {w.cancelled_at.isoformat()}, after it came into force here: "
                       f"{exc}") from None
    log.info("%s version %s (deck %s) withdrawn by the callback site", w.carrier_id,
             w.version, held)
    return 200, answer | {"deck_id": held}


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
                                          columns=ROW_COLUMNS, format="text",
                                          timeout=BULK_TIMEOUT_S)
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
RATE_DECK_EXAMPLES: dict[str, dict[str, Any]] = {
    "rate_deck": {
        "kind": KIND, "carrier": Carrier("carrier-a", "Plivo", currency="USD",
                                         dial_string="PJSIP/{digits}@carrier-a").to_json(),
        "version": 17, "sha256": content_hash(_EXAMPLE_ROWS), "file_sha256": "0" * 64,
        "effective_from": "2026-12-05T03:00:00+00:00",
        "activated_at": "2026-12-05T02:50:00+00:00", "decimals": 4, "profile": "generic",
        "source": "carrier-a.csv", "rows": 1, "parts": 1, "encoding": "gzip", "part": 0,
        "data": base64.b64encode(_EXAMPLE_DATA).decode("ascii")},
    "rate_deck_cancel": {"kind": CANCEL_KIND, "carrier_id": "carrier-a", "version": 17,
                         "cancelled_at": "2026-12-05T02:55:00+00:00"}}
_STRING = {"type": "string", "maxLength": 256}
_HEX = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
RATE_DECK_PART: dict[str, Any] = {
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
RATE_DECK_CANCEL: dict[str, Any] = {
    "type": "object", "required": ["kind", "carrier_id", "version", "cancelled_at"],
    "properties": {"kind": {"enum": [CANCEL_KIND]},
                   "carrier_id": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"},
                   "version": {"type": "integer", "minimum": 1},
                   "cancelled_at": TIMESTAMP}}
RATE_DECK_SCHEMA: dict[str, Any] = {"oneOf": [RATE_DECK_PART, RATE_DECK_CANCEL]}
RATE_DECK_ANSWER: dict[str, Any] = {
    "type": "object", "required": ["status", "carrier", "version"],
    "properties": {"status": {"enum": ["partial", "stored", "held", "rescheduled",
                                       "cancelled"]},
                   "carrier": {"type": "string"}, "version": {"type": "integer"},
                   "deck_id": {"type": "integer"}, "received": {"type": "integer"},
                   "parts": {"type": "integer"},
                   "effective_from": nullable(TIMESTAMP)}}
RATE_DECK_ERRORS = {409: ("rates-disabled", "rate-deck-clash"),
                    422: ("rate-deck-hash-mismatch", "rate-deck-version-conflict",
                          "rate-deck-in-force")}
