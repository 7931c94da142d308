"""What the callback site reports back to the edge: request info, transcripts of the
recordings it holds, CDRs, call-back status,
consultation records (:class:`advisors.records.ConsultationRecord`, stored by
:func:`advisors.record_store.insert_record`), billing records
(:class:`billing.records.BillingRecord`, stored by :func:`billing.records.insert_record`).

Parsed at the edge of the system into value types (:func:`parse_event`, which
raises ``InvalidField`` naming the bad field), stored tenant-scoped with
UNIQUE natural keys so a replay under a new message id is still a no-op, and
listed for the merchant's call center with keyset (cursor) pagination.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeAlias

import asyncpg

from advisors import record_schemas
from advisors.record_store import KIND as CONSULTATION
from advisors.records import ConsultationRecord, InvalidRecord
from billing import records as billing_records
from billing.records import BillingRecord
from edge_server import erasure
from edge_server.erasure import CustomerErasure
from shared import leg_destination
from shared.erasure import KIND as ERASURE
from shared.http import (
    InvalidField,
    optional_timestamp,
    require_str,
    require_timestamp,
)
from shared.money import Money, MoneyError
from shared.openapi import E164_NUMBER, MONEY, TIMESTAMP, Schema, nullable, string
from shared.outbox import isoformat
from shared.paging import ListQuery, Page, page_of
from shared.paging import page_schema as page_of_items
from shared.phone import E164, InvalidNumber

log = logging.getLogger("edge.reports")

MAX_FIELDS = 32
#: the longest transcript taken (a recording is at most minutes of speech)
MAX_TRANSCRIPT = 20_000
#: the largest integer field (an ``integer`` column)
MAX_INT = 2**31 - 1
#: ``duration_s`` is ``numeric(12, 3)``
MAX_DURATION_S = 10**9
#: a money amount's bound: far above any call's cost, far below what the columns hold
MAX_AMOUNT = 10**15
CALLBACK_STATUSES = frozenset({"queued", "dialing", "completed", "failed", "cancelled"})


# --- parsing ------------------------------------------------------------------------------

def _number(data: Mapping[str, Any], field: str) -> E164:
    try:
        return E164.parse(require_str(data, field, max_len=20))
    except InvalidNumber as exc:
        raise InvalidField(field, str(exc)) from None


def _int(data: Mapping[str, Any], field: str, *, optional: bool = False) -> int | None:
    value = data.get(field)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
        raise InvalidField(field, f"required integer 0..{MAX_INT}")
    return value


def _money(data: Mapping[str, Any], field: str) -> Money | None:
    value = data.get(field)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidField(field, 'expected {"amount": "...", "currency": "..."}')
    try:
        money = Money.from_json(value)
    except (MoneyError, KeyError, TypeError) as exc:
        raise InvalidField(field, str(exc)) from None
    if abs(money.amount) >= MAX_AMOUNT:
        raise InvalidField(field, f"amount must be below {MAX_AMOUNT:,}")
    return money


def _ids(data: Mapping[str, Any]) -> tuple[str, str, str]:
    return (require_str(data, "merchant_id", max_len=64),
            require_str(data, "callback_id", max_len=128),
            require_str(data, "edge_call_id", max_len=128))


@dataclass(frozen=True, slots=True)
class RequestInfo:
    merchant_id: str
    callback_id: str
    edge_call_id: str
    caller: E164
    category: str
    fields: dict[str, str]
    collected_at: datetime

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> RequestInfo:
        merchant_id, callback_id, edge_call_id = _ids(data)
        fields = data.get("fields", {})
        if not isinstance(fields, dict) or len(fields) > MAX_FIELDS or not all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 256
                for k, v in fields.items()):
            raise InvalidField("fields", f"expected an object of at most {MAX_FIELDS} "
                                         "short string values")
        return cls(merchant_id, callback_id, edge_call_id, _number(data, "caller"),
                   require_str(data, "category", max_len=64), dict(fields),
                   require_timestamp(data, "collected_at"))


@dataclass(frozen=True, slots=True)
class RecordingTranscript:
    """The transcript of a recording whose id a request's fields hold."""
    merchant_id: str
    callback_id: str
    edge_call_id: str
    recording_id: str
    transcript: str

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> RecordingTranscript:
        merchant_id, callback_id, edge_call_id = _ids(data)
        transcript = data.get("transcript")
        if not isinstance(transcript, str) or len(transcript) > MAX_TRANSCRIPT:
            raise InvalidField("transcript", f"required string of at most {MAX_TRANSCRIPT}")
        return cls(merchant_id, callback_id, edge_call_id,
                   require_str(data, "recording_id", max_len=64), transcript)


@dataclass(frozen=True, slots=True)
class Cdr:
    merchant_id: str
    callback_id: str
    edge_call_id: str
    call_id: str
    leg: str
    #: an E.164 number (``destination_kind`` ``pstn``) or a SIP endpoint (``sip``)
    destination: str
    destination_kind: str
    carrier: str | None
    started_at: datetime
    answered_at: datetime | None
    ended_at: datetime
    duration_s: Decimal
    billed_s: int
    hangup_cause: int | None
    disposition: str
    carrier_cost: Money | None
    direct_cost: Money | None

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Cdr:
        merchant_id, callback_id, edge_call_id = _ids(data)
        raw_duration = data.get("duration_s")
        try:
            if isinstance(raw_duration, bool) or not isinstance(raw_duration, str | int):
                raise ValueError
            duration = Decimal(str(raw_duration))
            if not duration.is_finite() or not 0 <= duration < MAX_DURATION_S:
                raise ValueError
        except (ValueError, ArithmeticError):
            raise InvalidField("duration_s", "expected a decimal string 0 <= s < "
                                             f"{MAX_DURATION_S:,}") from None
        billed = _int(data, "billed_s")
        assert billed is not None
        carrier = data.get("carrier")
        if carrier is not None and not isinstance(carrier, str):
            raise InvalidField("carrier", "expected a string or null")
        return cls(merchant_id, callback_id, edge_call_id,
                   require_str(data, "call_id", max_len=128),
                   require_str(data, "leg", max_len=32), *_destination(data),
                   carrier, require_timestamp(data, "started_at"),
                   optional_timestamp(data, "answered_at"), require_timestamp(data, "ended_at"),
                   duration, billed, _int(data, "hangup_cause", optional=True),
                   require_str(data, "disposition", max_len=32),
                   _money(data, "carrier_cost"), _money(data, "direct_cost"))


    @property
    def number(self) -> E164 | None:
        """The number the leg called; None for a SIP endpoint."""
        if self.destination_kind != leg_destination.PSTN:
            return None
        return E164.parse(self.destination)


def _destination(data: Mapping[str, Any]) -> tuple[str, str]:
    kind = data.get("destination_kind")
    if kind is not None and kind not in leg_destination.KINDS:
        raise InvalidField("destination_kind",
                           f"expected one of {', '.join(leg_destination.KINDS)}")
    try:
        return leg_destination.parse(
            require_str(data, "destination", max_len=leg_destination.MAX_SIP), kind)
    except ValueError as exc:
        raise InvalidField("destination", str(exc)) from None


@dataclass(frozen=True, slots=True)
class CallbackStatusReport:
    merchant_id: str
    callback_id: str
    edge_call_id: str
    status: str
    reason: str | None
    attempts: int
    at: datetime

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> CallbackStatusReport:
        merchant_id, callback_id, edge_call_id = _ids(data)
        status = require_str(data, "status", max_len=32)
        if status not in CALLBACK_STATUSES:
            raise InvalidField("status", f"expected one of {', '.join(sorted(CALLBACK_STATUSES))}")
        reason = data.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > 128):
            raise InvalidField("reason", "expected a short string or null")
        attempts = _int(data, "attempts")
        assert attempts is not None
        return cls(merchant_id, callback_id, edge_call_id, status, reason or None, attempts,
                   require_timestamp(data, "at"))


def parse_consultation(data: Mapping[str, Any]) -> ConsultationRecord:
    try:
        return ConsultationRecord.from_json(data, ignore=("kind",))
    except InvalidRecord as exc:
        raise InvalidField(exc.field, exc.reason) from None


Report: TypeAlias = (RequestInfo | RecordingTranscript | Cdr | CallbackStatusReport
                     | ConsultationRecord | BillingRecord | CustomerErasure)
_PARSERS: dict[str, Callable[[Mapping[str, Any]], Report]] = {
    "request_info": RequestInfo.parse, "recording_transcript": RecordingTranscript.parse,
    "cdr": Cdr.parse,
    "callback_status": CallbackStatusReport.parse, CONSULTATION: parse_consultation,
    billing_records.KIND: BillingRecord.from_json, ERASURE: CustomerErasure.parse}


def parse_event(data: Mapping[str, Any]) -> Report:
    kind = data.get("kind")
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise InvalidField("kind", f"expected one of {', '.join(sorted(_PARSERS))}")
    return parser(data)


def kind_of(report: Report) -> str:
    return {RequestInfo: "request_info", RecordingTranscript: "recording_transcript",
            Cdr: "cdr", CallbackStatusReport: "callback_status",
            ConsultationRecord: CONSULTATION,
            BillingRecord: billing_records.KIND, CustomerErasure: ERASURE}[type(report)]


# --- the JSON Schemas of what the parsers above take and the listings give ---------------

_IDS = {"merchant_id": string(64), "callback_id": string(128), "edge_call_id": string(128)}
_REQUEST_INFO: Schema = {
    "type": "object", "required": ["kind", *_IDS, "caller", "category", "collected_at"],
    "properties": {
        "kind": {"const": "request_info"}, **_IDS, "caller": E164_NUMBER,
        "category": string(64), "collected_at": TIMESTAMP,
        "fields": {"type": "object", "maxProperties": MAX_FIELDS,
                   "propertyNames": {"maxLength": 64},
                   "additionalProperties": {"type": "string", "maxLength": 256}}}}
_TRANSCRIPT: Schema = {
    "type": "object", "required": ["kind", *_IDS, "recording_id", "transcript"],
    "properties": {
        "kind": {"const": "recording_transcript"}, **_IDS, "recording_id": string(64),
        "transcript": {"type": "string", "maxLength": MAX_TRANSCRIPT}}}
_CDR: Schema = {
    "type": "object", "required": ["kind", *_IDS, "call_id", "leg", "destination",
                                   "started_at", "ended_at", "duration_s", "billed_s",
                                   "disposition"],
    "properties": {
        "kind": {"const": "cdr"}, **_IDS, "call_id": string(128), "leg": string(32),
        # an E.164 number, or (a SIP advisor's or the operator's leg) a SIP endpoint
        "destination": {"anyOf": [E164_NUMBER, string(leg_destination.MAX_SIP,
                                                      pattern=leg_destination.SIP_PATTERN)]},
        # absent: inferred from the destination (a CDR sent before CDRs named it)
        "destination_kind": {"enum": list(leg_destination.KINDS)},
        "carrier": nullable({"type": "string"}),
        "started_at": TIMESTAMP, "answered_at": nullable(TIMESTAMP), "ended_at": TIMESTAMP,
        "duration_s": {"anyOf": [{"type": "string", "pattern": r"^[0-9]{1,9}(\.[0-9]+)?$"},
                                 {"type": "integer", "minimum": 0,
                                  "maximum": MAX_DURATION_S - 1}]},
        "billed_s": {"type": "integer", "minimum": 0, "maximum": MAX_INT},
        "hangup_cause": nullable({"type": "integer", "minimum": 0, "maximum": MAX_INT}),
        "disposition": string(32), "carrier_cost": nullable(MONEY),
        "direct_cost": nullable(MONEY)}}
_STATUS: Schema = {
    "type": "object", "required": ["kind", *_IDS, "status", "attempts", "at"],
    "properties": {
        "kind": {"const": "callback_status"}, **_IDS,
        "status": {"enum": sorted(CALLBACK_STATUSES)},
        "reason": nullable({"type": "string", "maxLength": 128}),
        "attempts": {"type": "integer", "minimum": 0, "maximum": MAX_INT}, "at": TIMESTAMP}}
#: ``POST /v1/link/events``: one report
EVENT_SCHEMA: Schema = {"oneOf": [_REQUEST_INFO, _TRANSCRIPT, _CDR, _STATUS, record_schemas.MESSAGE,
                                  billing_records.MESSAGE, erasure.MESSAGE]}
_EXAMPLE_IDS = {"merchant_id": "acme", "callback_id": "cb-0f3a9c", "edge_call_id": "edge-1700.42"}
EVENT_EXAMPLES: dict[str, dict[str, Any]] = {
    "request_info": {"kind": "request_info", **_EXAMPLE_IDS, "caller": "+819012345678",
                     "category": "order", "fields": {"item_code": "1234", "quantity": "2"},
                     "collected_at": "2026-11-22T01:03:10Z"},
    "recording_transcript": {"kind": "recording_transcript", **_EXAMPLE_IDS,
                             "recording_id": "0b7c6f3e-5d1a-4c7e-9a52-1f0e8d2c4b6a",
                             "transcript": "please call me back tomorrow morning"},
    "cdr": {"kind": "cdr", **_EXAMPLE_IDS, "call_id": "cb-0f3a9c-1-customer",
            "leg": "customer", "destination": "+819012345678", "destination_kind": "pstn",
            "carrier": "carrier-b",
            "started_at": "2026-11-22T01:02:10Z", "answered_at": "2026-11-22T01:02:14Z",
            "ended_at": "2026-11-22T01:03:40Z", "duration_s": "86.120", "billed_s": 90,
            "hangup_cause": 16, "disposition": "answered",
            "carrier_cost": {"amount": "0.2097", "currency": "USD"},
            "direct_cost": {"amount": "45.0", "currency": "JPY"}},
    "callback_status": {"kind": "callback_status", **_EXAMPLE_IDS, "status": "completed",
                        "reason": None, "attempts": 1, "at": "2026-11-22T01:03:40Z"},
    CONSULTATION: {"kind": CONSULTATION, **record_schemas.EXAMPLE},
    billing_records.KIND: {"kind": billing_records.KIND, **billing_records.EXAMPLE},
}
EVENT_ANSWER: Schema = {"type": "object", "required": ["status", "kind"],
                        "properties": {"status": {"enum": ["stored", "duplicate"]},
                                       "kind": {"enum": sorted(_PARSERS)}}}

_TIME_OR_NULL = nullable(TIMESTAMP)
_LISTED: dict[str, Schema] = {
    "requests": {"callback_id": {"type": "string"}, "edge_call_id": {"type": "string"},
                 "caller": {"type": "string"}, "category": {"type": "string"},
                 "fields": {"type": "object", "additionalProperties": {"type": "string"}},
                 # field name -> transcript of the recording whose id the field holds
                 "transcripts": {"type": "object",
                                 "additionalProperties": {"type": "string"}},
                 "collected_at": TIMESTAMP, "received_at": TIMESTAMP},
    "cdrs": {"call_id": {"type": "string"}, "callback_id": {"type": "string"},
             "edge_call_id": {"type": "string"}, "leg": {"type": "string"},
             "destination": {"type": "string"},
             "destination_kind": {"enum": list(leg_destination.KINDS)},
             "carrier": nullable({"type": "string"}),
             "started_at": TIMESTAMP, "answered_at": _TIME_OR_NULL, "ended_at": TIMESTAMP,
             "duration_s": {"type": "string"}, "billed_s": {"type": "integer"},
             "hangup_cause": nullable({"type": "integer"}), "disposition": {"type": "string"},
             "carrier_cost": nullable(MONEY), "direct_cost": nullable(MONEY),
             "received_at": TIMESTAMP},
    # every inbound call: what became of it (state, outcome and why) and its call-back
    "calls": {"edge_call_id": {"type": "string"}, "caller": nullable({"type": "string"}),
              "dialed": {"type": "string"},
              "state": {"enum": ["stored", "released", "cancelled", "refused", "direct",
                                 "abandoned", "closed"]},
              "outcome": nullable({"type": "string"}), "detail": nullable({"type": "string"}),
              "received_at": TIMESTAMP, "callback_id": nullable({"type": "string"}),
              "callback_status": nullable({"type": "string"}),
              "callback_reason": nullable({"type": "string"})},
}


def page_schema(table: str) -> Schema:
    """A page of :func:`list_rows` for ``table``."""
    return page_of_items({"type": "object", "required": sorted(_LISTED[table]),
                          "properties": _LISTED[table], "additionalProperties": False})


# --- listing for the call center ----------------------------------------------------------

#: a request's transcripts: each field holding the id of a recording transcribed since
_TRANSCRIPTS = """COALESCE((SELECT jsonb_object_agg(f.key, t.transcript)
       FROM jsonb_each_text(fields) f JOIN request_transcripts t
         ON t.merchant_id = requests.merchant_id AND t.callback_id = requests.callback_id
        AND t.recording_id = f.value), '{}'::jsonb)"""

_LISTS = {
    # table: (time column for since/until, columns)
    "requests": ("collected_at", "id, callback_id, edge_call_id, caller, category, fields, "
                                 f"{_TRANSCRIPTS} AS transcripts, collected_at, received_at"),
    "cdrs": ("started_at", "id, call_id, callback_id, edge_call_id, leg, destination, "
                           "destination_kind, carrier, "
                           "started_at, answered_at, ended_at, duration_s, billed_s, "
                           "hangup_cause, disposition, carrier_cost_amount, "
                           "carrier_cost_currency, direct_cost_amount, direct_cost_currency, "
                           "received_at"),
    "calls": ("received_at", "id, edge_call_id, caller, dialed, state, outcome, detail, "
                             "received_at, callback_id, callback_status, callback_reason"),
}


#: a list read from a table of another name
_TABLES = {"calls": "edge_calls"}


async def list_rows(pool: asyncpg.Pool, table: str, q: ListQuery) -> Page:
    """One page of ``requests``, ``cdrs`` or ``calls`` (``edge_calls``) for one merchant,
    oldest first."""
    time_column, columns = _LISTS[table]
    rows = await pool.fetch(
        f"""SELECT {columns} FROM {_TABLES.get(table, table)}
            WHERE merchant_id = $1 AND id > $2
              AND ($3::timestamptz IS NULL OR {time_column} >= $3)
              AND ($4::timestamptz IS NULL OR {time_column} < $4)
            ORDER BY id LIMIT $5""",
        q.merchant_id, q.after_id, q.since, q.until, q.limit + 1)
    return page_of(rows, q.limit, lambda r: _render(table, r))


def _render(table: str, row: asyncpg.Record) -> dict[str, Any]:
    item: dict[str, Any] = {}
    for key, value in row.items():
        if key == "id":
            continue
        if isinstance(value, datetime):
            item[key] = isoformat(value)
        elif isinstance(value, Decimal):
            item[key] = str(value)
        else:
            item[key] = value
    if table == "cdrs":
        for name in ("carrier_cost", "direct_cost"):
            amount, currency = item.pop(f"{name}_amount"), item.pop(f"{name}_currency")
            item[name] = None if amount is None else {"amount": amount, "currency": currency}
    return item
