"""``POST /v1/customers/{number}/erasure``: a merchant erases a customer (APPI: the
customer asked for their personal data to be deleted), at the callback site and, over the
link, at the edge.

In one transaction, under a lock on the merchant and number:

1. refused (409, nothing changed) while the customer has a consultation going
   (``consultation-live``: a ``consult_live`` row), a call-back queued or being dialled
   (``call-in-progress``), or a charge not settled (``charge-unsettled``: a prepaid
   reservation without its settlement, a postpaid charge pending or failed);
2. the customer's recordings are deleted (rows here, their audio files once committed);
   their SMS, the number's place in the merchant's phonebook and in a customer's numbers
   are deleted (those columns take E.164 numbers only);
3. every other row of the merchant holding the number has it replaced by the pseudonym
   (:mod:`shared.erasure`): call-back requests and attempts, CDRs, collected request
   info, click-to-call codes, locks, sessions and calls, consultation records, the
   billing account (so the ledger, append-only, keeps every row and amount, now under
   the pseudonym; its notices name the account by its row) and billing records, the
   guard's counts, refusals and alerts,
   notifications, the link's messages; the guard's facts about a number no other row
   refers to any more are deleted;
4. the audit row (``customer_erasures``: who, when, the rows per table) and the link
   event (:data:`shared.erasure.KIND`) that has the edge do the same to its copies
   (:mod:`edge_server.erasure`). The event carries the number; the site's outbox keeps
   only the pseudonym once it is delivered (migration ``0993_customer_erasures``).

A second erasure of the same customer finds nothing left and changes nothing: 200 with
the first erasure's audit. Not erased: the guard's block and allow lists (the site
operator's, kept on purpose) and what Stripe holds (the customer's metadata there).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from advisors.store import AdvisorStore
from billing.standing import standing
from shared.erasure import EVERY_MERCHANT, KIND, Kind, Table, forms, pseudonym, pseudonymise
from shared.http import (
    ApiError,
    InvalidField,
    ServiceUnavailable,
    authenticated_merchant,
    database_errors_as_503,
    json_response,
    read_json_object,
    require_str,
)
from shared.openapi import MERCHANT, Operation, Param, Reply, Schema, add_operations, string
from shared.outbox import EVENTS_PATH, Outbox
from shared.phone import E164, InvalidNumber, normalise

log = logging.getLogger("callback.erasure")

_T, _J, _B = Kind.TEXT, Kind.JSONB, Kind.BYTES
#: every table of the callback site where a customer's number is kept, but those whose
#: rows are deleted (:data:`_DELETED`) or refused (``consult_live``)
TABLES = (
    Table("callback_requests", (("caller", _T),)),
    Table("callback_attempts", (("endpoint", _T),)),
    Table("cdrs", (("destination", _T),)),
    Table("request_info", (("fields", _J),)),
    Table("click_phone_codes", (("number", _T),)),
    Table("click_phone_locks", (("number", _T),)),
    Table("click_verified", (("number", _T),)),
    Table("click_web_calls", (("number", _T),)),
    Table("consultations", (("customer_number", _T), ("rings", _J), ("holds", _J),
                            ("transfers", _J))),
    Table("customers", (("account", _T),)),
    Table("billing_accounts", (("account", _T),)),
    Table("billing_records", (("account", _T), ("legs", _J))),
    Table("billing_records_awaiting", (("record", _J),), "record->>'merchant_id' = $1"),
    Table("guard_callbacks", (("number", _T),)),
    Table("guard_rounds", (("number", _T),)),
    Table("guard_refusals", (("number", _T), ("detail", _T))),
    Table("guard_alerts", (("key", _T), ("message", _T), ("details", _J)),
          "details->>'merchant_id' = $1 OR details->>'merchant_id' IS NULL"),
    Table("notifications", (("facts", _J),)),
    Table("outbox", (("body", _B), ("response_body", _J), ("last_error", _T)),
          f"merchant_id = $1 AND kind <> '{KIND}'"),
    Table("inbound_messages", (("response_body", _J),), EVERY_MERCHANT),
)
#: rows deleted: their number columns take E.164 numbers only ($1 the merchant, $2 forms)
_DELETED = {
    "sms_messages": "DELETE FROM sms_messages WHERE merchant_id = $1 AND to_number = ANY($2)",
    "phonebook": "DELETE FROM phonebook WHERE merchant_id = $1 AND number = ANY($2)",
    "customer_numbers": "DELETE FROM customer_numbers WHERE merchant_id = $1 "
                        "AND number = ANY($2)",
}
#: the guard's facts about a number, kept across merchants: deleted once no row of any
#: merchant refers to the number
_GUARD_FACTS = """DELETE FROM guard_numbers g WHERE number = ANY($1)
    AND NOT EXISTS (SELECT 1 FROM guard_callbacks c WHERE c.number = g.number)
    AND NOT EXISTS (SELECT 1 FROM guard_rounds r WHERE r.number = g.number)
    AND NOT EXISTS (SELECT 1 FROM callback_requests q WHERE q.caller = g.number)"""


@dataclass(frozen=True, slots=True)
class Erased:
    pseudonym: str
    requested_by: str
    requested_at: str
    rows: dict[str, int]
    #: False: this request found nothing left (the customer was erased before, or never
    #: had a row): the audit shown is the earlier one, if any
    changed: bool

    def to_json(self) -> dict[str, Any]:
        return {"pseudonym": self.pseudonym, "requested_by": self.requested_by,
                "requested_at": self.requested_at, "rows": self.rows,
                "changed": self.changed}


class Erasures:
    def __init__(self, pool: asyncpg.Pool, secret: bytes, recordings_dir: Path | None
                 ) -> None:
        self.pool = pool
        self.secret = secret
        self.recordings_dir = recordings_dir

    async def erase(self, merchant_id: str, number: E164, *, by: str) -> Erased:
        alias = pseudonym(merchant_id, number, self.secret)
        written = list(forms(number))
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                               f"erasure|{merchant_id}|{number}")
            await _refuse_if_busy(conn, AdvisorStore(self.pool), merchant_id, number)
            files, rows = await _delete_owned(conn, merchant_id, written)
            rows.update(await pseudonymise(conn, TABLES, merchant_id, number, alias))
            facts = int((await conn.execute(_GUARD_FACTS, written)).split()[-1])
            if facts:
                rows["guard_numbers"] = facts
            before = await conn.fetchrow(
                "SELECT requested_by, requested_at, rows FROM customer_erasures "
                "WHERE merchant_id = $1 AND pseudonym = $2 ORDER BY id LIMIT 1",
                merchant_id, alias)
            if not rows and before is not None:
                return Erased(alias, before["requested_by"],
                              before["requested_at"].isoformat(), before["rows"], False)
            message_id = await Outbox.enqueue(
                conn, kind=KIND, path=EVENTS_PATH, merchant_id=merchant_id,
                payload={"kind": KIND, "merchant_id": merchant_id, "number": str(number),
                         "pseudonym": alias})
            at = await conn.fetchval(
                "INSERT INTO customer_erasures (merchant_id, pseudonym, requested_by, rows, "
                "message_id) VALUES ($1, $2, $3, $4, $5) RETURNING requested_at",
                merchant_id, alias, by, rows, uuid.UUID(message_id))
        if self.recordings_dir is not None:
            for file in files:
                (self.recordings_dir / file).unlink(missing_ok=True)
        log.info("customer %s of merchant %s erased by %s: %s", alias, merchant_id, by,
                 rows or "nothing held")
        return Erased(alias, by, at.isoformat(), rows, bool(rows))


#: what is still going on for the customer ($1 the merchant, $2 the number): 409 naming it
_BUSY = (
    ("consultation-live", "the customer is in a consultation",
     "SELECT count(*) FROM consult_live WHERE merchant_id = $1 "
     "AND snapshot->>'customer_number' = $2"),
    ("call-in-progress", "a call-back to the customer is queued or being dialled",
     "SELECT count(*) FROM callback_requests WHERE merchant_id = $1 AND caller = $2 "
     "AND status IN ('queued', 'dialing')"),
)


async def _refuse_if_busy(conn: asyncpg.Connection, customers: AdvisorStore, merchant_id: str,
                          number: E164) -> None:
    for error_id, why, sql in _BUSY:
        if await conn.fetchval(sql, merchant_id, str(number)):
            raise ApiError(409, error_id, f"{why}: erase them once it has ended")
    account = await customers.account_by_number(merchant_id, number, conn) or str(number)
    held = await conn.fetchval(
        """SELECT count(*) FROM billing_reservations r
           JOIN billing_accounts a ON a.id = r.account_id
           WHERE a.merchant_id = $1 AND a.account = $2 AND NOT EXISTS
               (SELECT 1 FROM billing_settlements s WHERE s.reservation_id = r.id)""",
        merchant_id, account)
    unpaid = (await standing(conn, merchant_id, account)).unpaid
    if held or unpaid:
        raise ApiError(409, "charge-unsettled", f"the customer's account has {held} "
                       f"reservation(s) not settled and {unpaid} postpaid charge(s) not "
                       "paid: settle or close them first", reservations=held, unpaid=unpaid)


async def _delete_owned(conn: asyncpg.Connection, merchant_id: str, written: list[str]
                        ) -> tuple[list[str], dict[str, int]]:
    """The customer's recordings (their files, to delete once committed) and the rows
    whose columns take a real number only; the rows per table."""
    files = await conn.fetch(
        """DELETE FROM recordings WHERE merchant_id = $1 AND (callback_id IN
               (SELECT callback_id FROM callback_requests WHERE merchant_id = $1
                AND caller = ANY($2))
            OR edge_call_id IN (SELECT edge_call_id FROM callback_requests
                                WHERE merchant_id = $1 AND caller = ANY($2)))
           RETURNING file""", merchant_id, written)
    rows = {"recordings": len(files)} if files else {}
    for table, sql in _DELETED.items():
        deleted = int((await conn.execute(sql, merchant_id, written)).split()[-1])
        if deleted:
            rows[table] = deleted
    return [row["file"] for row in files], rows


@dataclass(frozen=True, slots=True)
class _Site:
    pool: Callable[[web.Application], asyncpg.Pool | None]
    secret: bytes
    #: ``[media] recordings_dir`` (None: the site keeps no recordings)
    recordings_dir: Path | None


_SITE_KEY = web.AppKey("customer_erasures", _Site)


def site_secret(signing_key: Path) -> bytes:
    """The pseudonyms' secret, from the site's first signing key (a file, not in the
    database): a dump of the database cannot be searched for a number by its pseudonym."""
    return hashlib.sha256(b"cbgw customer erasure|" + signing_key.read_bytes()).digest()


def install(app: web.Application, pool: Callable[[web.Application], asyncpg.Pool | None],
            secret: bytes, recordings_dir: Path | None) -> None:
    """The route, on the site's database (``pool``: None until it is connected, 503)."""
    app[_SITE_KEY] = _Site(pool, secret, recordings_dir)
    add_operations(app, OPERATIONS)


async def post_erasure(request: web.Request) -> web.Response:
    """Erase the customer with this number for the merchant whose key the request has."""
    merchant_id = authenticated_merchant(request)
    try:
        number = normalise(request.match_info["number"])
    except InvalidNumber as exc:
        raise InvalidField("number", str(exc)) from None
    data = await read_json_object(request)
    for name in data:
        if name != "by":
            raise InvalidField(name, "unknown field (expected by)")
    by = require_str(data, "by", max_len=128)
    site = request.app[_SITE_KEY]
    pool = site.pool(request.app)
    if pool is None:
        raise ServiceUnavailable("database-unavailable", "database not connected yet")
    erased = await Erasures(pool, site.secret, site.recordings_dir).erase(merchant_id, number,
                                                                          by=by)
    return json_response(erased.to_json())


ERASED: Schema = {
    "type": "object", "required": ["pseudonym", "requested_by", "requested_at", "rows",
                                   "changed"],
    "properties": {
        "pseudonym": string(64, description="what the customer's number became"),
        "requested_by": string(128),
        "requested_at": {"type": "string", "format": "date-time"},
        "rows": {"type": "object", "additionalProperties": {"type": "integer"},
                 "description": "rows changed or deleted, per table"},
        "changed": {"type": "boolean",
                    "description": "false: nothing was left to erase (the audit shown is "
                                   "the first erasure's)"}}}
OPERATIONS = (
    Operation("POST", "/v1/customers/{number}/erasure", database_errors_as_503(post_erasure),
              "Erase a customer: their number pseudonymised here and at the edge", "advisors",
              {200: Reply("erased (or nothing left to erase); the audit", ERASED)},
              access=MERCHANT,
              params=(Param("number", "path", string(32),
                            "the customer's number, national or E.164"),),
              body={"type": "object", "required": ["by"], "additionalProperties": False,
                    "properties": {"by": string(128, description="who asks (the audit)")}},
              errors={400: ("invalid-field",),
                      409: ("consultation-live", "call-in-progress", "charge-unsettled"),
                      503: ("database-unavailable",)}),
)
