"""Erasing a customer (APPI: a customer's request to delete their personal data): their
phone number replaced by a stable pseudonym in every row of a merchant that holds it.

Both sites keep the number in their own tables, in columns of its own (``caller``,
``customer_number``), inside text (a dial string, a SIP endpoint), JSON (a consultation's
rings, a notification's facts) and message bodies (the link's outbox). Each site lists its
:class:`Table` s; :func:`pseudonymise` rewrites every form of the number
(:func:`forms`: E.164, its digits, the national form, the national significant number)
to the pseudonym in one ``UPDATE`` per table, inside the caller's transaction, and says
how many rows of each table it changed. Rows are never deleted here: the money records
keep their amounts and their account, now named by the pseudonym.

The pseudonym (:func:`pseudonym`) is ``erased:`` and the first 16 hex digits of
SHA-256 over the merchant, the number and the site's secret: the same customer erased
twice gets the same one (a second erasure finds nothing left to change), and a reader of
the database cannot find the number again by hashing every number (the secret is not in
the database).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import asyncpg
import phonenumbers

from shared.phone import E164

PREFIX = "erased:"
#: the link event that carries an erasure to the edge
KIND = "customer_erasure"


class Kind(Enum):
    TEXT = "text"
    JSONB = "jsonb"
    #: UTF-8 text in a bytea column (a link message's body)
    BYTES = "bytes"


#: a table's rows of every merchant (what the site itself keeps, such as the answers it
#: sent over the link)
EVERY_MERCHANT = "$1::text IS NOT NULL"


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[tuple[str, Kind], ...]
    #: the merchant's rows (``$1``: the merchant id; each statement names it)
    where: str = "merchant_id = $1"


def forms(number: E164) -> tuple[str, ...]:
    """What a row may hold of ``number``, longest first (so each is replaced whole)."""
    e164 = str(number)
    significant = phonenumbers.national_significant_number(phonenumbers.parse(e164))
    written = {e164, number.digits, number.national(), significant}
    return tuple(sorted(written, key=len, reverse=True))


def pseudonym(merchant_id: str, number: E164, secret: bytes) -> str:
    digest = hashlib.sha256(f"{merchant_id}|{number}|".encode() + secret).hexdigest()
    return PREFIX + digest[:16]


def _text(column: str, kind: Kind) -> str:
    return {Kind.TEXT: column, Kind.JSONB: f"{column}::text",
            Kind.BYTES: f"convert_from({column}, 'UTF8')"}[kind]


def _back(expression: str, kind: Kind) -> str:
    return {Kind.TEXT: expression, Kind.JSONB: f"({expression})::jsonb",
            Kind.BYTES: f"convert_to({expression}, 'UTF8')"}[kind]


def update_sql(table: Table, count: int) -> str:
    """The ``UPDATE`` of ``table``: ``$1`` the merchant, ``$2`` the pseudonym, ``$3``…
    the ``count`` forms of the number."""
    params = [f"${3 + i}" for i in range(count)]
    sets, holds = [], []
    for column, kind in table.columns:
        text = replaced = _text(column, kind)
        for param in params:
            replaced = f"replace({replaced}, {param}, $2)"
        sets.append(f"{column} = {_back(replaced, kind)}")
        holds += [f"strpos({text}, {param}) > 0" for param in params]
    return (f"UPDATE {table.name} SET {', '.join(sets)} "
            f"WHERE ({table.where}) AND ({' OR '.join(holds)})")


async def pseudonymise(conn: asyncpg.Connection, tables: Sequence[Table], merchant_id: str,
                       number: E164, alias: str) -> dict[str, int]:
    """Replace ``number`` by ``alias`` in the merchant's rows of ``tables``; the rows
    changed per table (only those with any)."""
    written = forms(number)
    changed: dict[str, int] = {}
    for table in tables:
        status = await conn.execute(update_sql(table, len(written)), merchant_id, alias,
                                    *written)
        rows = int(status.split()[-1])
        if rows:
            changed[table.name] = changed.get(table.name, 0) + rows
    return changed
