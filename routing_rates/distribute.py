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

Cancelling a distributed deck before its time (:func:`cancel`) withdraws it at the edge
too: one more message (``rate_deck_cancel``) in the cancellation's transaction.

The edge's half is :mod:`routing_rates.deck_receiver`. Each site's rating service picks
the version in force at a decision's time, so both switch at the effective time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from routing_rates import store
from routing_rates.carriers import Carrier
from shared.db import Connection
from shared.outbox import Outbox

log = logging.getLogger("rates.distribute")

KIND = "rate_deck"
CANCEL_KIND = "rate_deck_cancel"
PATH = "/v1/link/rate-decks"
#: gzipped canonical rows per message: base64 and the fields stay well under 64 KiB
CHUNK_BYTES = 32 * 1024
DEFAULT_LEAD_S = 60
MAX_PARTS = 10_000
MAX_ROWS = 5_000_000
#: the canonical form of a row is far shorter; more is refused before it is inflated
MAX_ROW_BYTES = 4096
#: seconds a deck's bulk COPY (its canonical rows out, a received part's rows in) may
#: take: the pools' 10 s command timeout is for statements, and a deck of MAX_ROWS, or a
#: 72,554-row one on a loaded machine, takes longer
BULK_TIMEOUT_S = 600.0
_NAMESPACE = uuid.UUID("6f1c0a52-3d9e-4b8e-9a57-2f0d6c1b7e41")
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

    await conn.copy_from_query(CANONICAL_QUERY, deck_id, output=collect, format="text",
                               timeout=BULK_TIMEOUT_S)
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


def withdrawal(deck: store.DeckInfo, cancelled_at: datetime) -> tuple[str, dict[str, Any]]:
    """The ``(message id, payload)`` withdrawing a version sent to the edge."""
    return (str(uuid.uuid5(_NAMESPACE, f"{deck.tariff_id}/{deck.id}/cancel")),
            {"kind": CANCEL_KIND, "carrier_id": deck.tariff_id, "version": deck.id,
             "cancelled_at": cancelled_at.isoformat()})


async def cancel(conn: Connection, deck_id: int) -> store.DeckInfo:
    """Withdraw a staged or pending deck (``store.cancel``); one that was sent to the edge
    is withdrawn there too, by a message written in the same transaction."""
    async with conn.transaction():
        deck = await store.cancel(conn, deck_id)
        if deck.content_sha256 is not None:
            mid, payload = withdrawal(deck, datetime.now(UTC))
            await Outbox.enqueue(conn, kind=KIND, path=PATH, payload=payload, message_id=mid)
            log.info("deck %s of %s cancelled: withdrawn at the edge too", deck.id,
                     deck.tariff_id)
    return deck
