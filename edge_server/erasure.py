"""A customer erased at the callback site (:mod:`callback_server.erasure`), applied to the
edge's copies: the link event :data:`shared.erasure.KIND` names the merchant, the number
and its pseudonym, and :func:`apply` replaces the number by the pseudonym in every row of
that merchant the edge keeps (its calls, requests, CDRs, consultation and billing
records, the link's messages), in the transaction that stores the event once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from shared.erasure import EVERY_MERCHANT, KIND, PREFIX, Kind, Table, pseudonymise
from shared.http import InvalidField, require_str
from shared.openapi import E164_NUMBER, Schema, string
from shared.phone import E164, InvalidNumber

log = logging.getLogger("edge.erasure")

_T, _J, _B = Kind.TEXT, Kind.JSONB, Kind.BYTES
_PSEUDONYM = re.compile(re.escape(PREFIX) + "[0-9a-f]{16}")
#: every table of the edge where a customer's number is kept
TABLES = (
    Table("edge_calls", (("caller", _T), ("detail", _T))),
    Table("requests", (("caller", _T), ("fields", _J))),
    Table("cdrs", (("destination", _T),)),
    Table("consultations", (("customer_number", _T), ("rings", _J), ("holds", _J),
                            ("transfers", _J))),
    Table("billing_records", (("account", _T), ("legs", _J))),
    Table("outbox", (("body", _B), ("response_body", _J), ("last_error", _T))),
    Table("inbound_messages", (("response_body", _J),), EVERY_MERCHANT),
)


@dataclass(frozen=True, slots=True)
class CustomerErasure:
    merchant_id: str
    number: E164
    pseudonym: str

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> CustomerErasure:
        merchant_id = require_str(data, "merchant_id", max_len=64)
        try:
            number = E164.parse(require_str(data, "number", max_len=16))
        except InvalidNumber as exc:
            raise InvalidField("number", str(exc)) from None
        alias = require_str(data, "pseudonym", max_len=64)
        if not _PSEUDONYM.fullmatch(alias):
            raise InvalidField("pseudonym", f"expected {PREFIX} and 16 hex digits")
        return cls(merchant_id, number, alias)


async def apply(conn: asyncpg.Connection, erasure: CustomerErasure) -> dict[str, int]:
    """The number replaced in the merchant's rows; the rows per table."""
    rows = await pseudonymise(conn, TABLES, erasure.merchant_id, erasure.number,
                              erasure.pseudonym)
    log.info("customer %s of merchant %s erased at the edge: %s", erasure.pseudonym,
             erasure.merchant_id, rows or "nothing held")
    return rows


MESSAGE: Schema = {
    "type": "object", "required": ["kind", "merchant_id", "number", "pseudonym"],
    "properties": {"kind": {"const": KIND}, "merchant_id": string(64), "number": E164_NUMBER,
                   "pseudonym": {"type": "string", "pattern": "^erased:[0-9a-f]{16}$"}}}
