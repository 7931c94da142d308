"""Storing the reports of the callback site at the edge (:mod:`edge_server.reports`
parses them), once per link message id, tenant-scoped.

A report of the kinds each call-back sends (:data:`ONE_STATEMENT`: request info, a
recording's transcript, CDRs, call-back status) is applied in ONE statement, its own
transaction (:func:`apply_report`)::

    WITH prior   AS (the answer kept for the message id, if it was claimed before),
         tenant  AS (is the merchant known; who owns the call),
         ok      AS (one row if the report is to be written: not claimed, tenant right),
         written AS (INSERT the report SELECT ... FROM ok
                     ON CONFLICT (its natural key) DO NOTHING RETURNING id),
         ...        what a new report updates (FROM written): the call's call-back
                    status; a customer leg's talk time for the call lengths,
         claimed AS (INSERT INTO inbound_messages the message id and its answer,
                     stored if written else duplicate, SELECT ... FROM ok
                     ON CONFLICT (message_id) DO NOTHING RETURNING response_body)
    SELECT the tenant, the prior answer, the claimed answer

so a report holds a pool connection for one round trip, not for six statements each
waiting for the event loop to send the next. The answers are those of
:func:`shared.link.accept_once` around :func:`save_report`: a message id claimed before
gets its first answer back; an unknown merchant, or a call of another merchant, 422 with
nothing written (not even the claim: a resend is judged again); else ``stored``, or
``duplicate`` when the natural key was stored under another message id. Two deliveries
of one message at once: the second's claim (and its report, on the natural key) waits
for the first's commit and writes nothing; the first answer is then read, a second
statement, the only case with one.

The other kinds (consultation records, billing records, customer erasures: a few per
consultation, not per call-back) are written by :func:`save_report` inside
``accept_once``'s transaction.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from advisors.record_store import insert_record
from advisors.records import ConsultationRecord
from billing import records as billing_records
from billing.records import BillingRecord
from edge_server import erasure
from edge_server.erasure import CustomerErasure
from edge_server.reports import (
    CallbackStatusReport,
    Cdr,
    RecordingTranscript,
    Report,
    RequestInfo,
    kind_of,
)
from routing_rates import call_lengths
from shared.http import ApiError
from shared.link import Answer, first_answer

log = logging.getLogger("edge.reports")

#: the reports :func:`apply_report` writes in one statement
ONE_STATEMENT = (RequestInfo, RecordingTranscript, Cdr, CallbackStatusReport)
OneStatementReport = RequestInfo | RecordingTranscript | Cdr | CallbackStatusReport


class _Params:
    """A statement's arguments, given as it is written: ``p(value)`` is ``$n``."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: object) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def _tenant_refusal(merchant_id: str, edge_call_id: str | None, known: bool,
                    owner: str | None) -> ApiError | None:
    if not known:
        return ApiError(422, "unknown-merchant", f"merchant {merchant_id!r} is not "
                        "served by this edge", field="merchant_id")
    if owner is not None and owner != merchant_id:
        return ApiError(422, "tenant-mismatch", f"call {edge_call_id} belongs to another "
                        "merchant", field="merchant_id")
    return None


async def apply_report(conn: asyncpg.Connection, message_id: str, report: OneStatementReport,
                       *, learn_call_lengths: bool = False) -> Answer:
    """Claim ``message_id``, check the tenant, write ``report`` with what it updates and
    keep the answer, in one statement (outside a transaction: it commits on its own);
    the answer for the link (see the module docstring). ``learn_call_lengths`` (rates
    on): a new answered customer leg's talk seconds are counted for the merchant's call
    lengths in the same statement, so a CDR delivered twice counts once."""
    p = _Params()
    mid, kind = p(message_id), p(kind_of(report))
    merchant, call = p(report.merchant_id), p(report.edge_call_id)
    rows = await conn.fetchrow(
        f"""WITH prior AS (
                SELECT response_status, response_body FROM inbound_messages
                WHERE message_id = {mid}),
            tenant AS (
                SELECT EXISTS (SELECT FROM merchants WHERE id = {merchant}) AS known,
                       (SELECT merchant_id FROM edge_calls WHERE edge_call_id = {call})
                           AS owner),
            ok AS (
                SELECT FROM tenant WHERE known AND (owner IS NULL OR owner = {merchant})
                    AND NOT EXISTS (SELECT FROM prior)),
            {_writes(report, p, merchant, call, learn_call_lengths)},
            claimed AS (
                INSERT INTO inbound_messages (message_id, kind, response_status,
                    response_body)
                SELECT {mid}, {kind}::text, 200, jsonb_build_object(
                    'status', CASE WHEN EXISTS (SELECT FROM written) THEN 'stored'
                                   ELSE 'duplicate' END, 'kind', {kind}::text)
                FROM ok
                ON CONFLICT (message_id) DO NOTHING RETURNING response_body)
            SELECT t.known, t.owner, p.response_status AS prior_status,
                   p.response_body AS prior_body,
                   (SELECT response_body FROM claimed) AS answer
            FROM tenant t LEFT JOIN prior p ON true""", *p.values)
    assert rows is not None
    if rows["prior_status"] is not None:
        log.info("duplicate %s message %s: returning the first answer", kind_of(report),
                 message_id)
        return int(rows["prior_status"]), dict(rows["prior_body"])
    refusal = _tenant_refusal(report.merchant_id, report.edge_call_id, rows["known"],
                              rows["owner"])
    if refusal is not None:
        raise refusal
    if rows["answer"] is not None:
        return 200, dict(rows["answer"])
    # claimed by a delivery of the same message that committed while this one waited
    answer = await first_answer(conn, message_id)
    assert answer is not None
    log.info("duplicate %s message %s: returning the first answer", kind_of(report),
             message_id)
    return answer


def _writes(report: OneStatementReport, p: _Params, merchant: str, call: str,
            learn_call_lengths: bool) -> str:
    """The CTEs writing ``report`` for each row of ``ok``: ``written`` (the new row's id,
    none for a duplicate natural key) and what a new row updates."""
    match report:
        case RequestInfo():
            return f"""written AS (
                INSERT INTO requests (merchant_id, callback_id, edge_call_id, caller,
                    category, fields, collected_at)
                SELECT {merchant}, {p(report.callback_id)}, {call}, {p(str(report.caller))},
                    {p(report.category)}, {p(report.fields)}, {p(report.collected_at)}
                FROM ok
                ON CONFLICT (merchant_id, callback_id, collected_at) DO NOTHING
                RETURNING id)"""
        case RecordingTranscript():
            return f"""written AS (
                INSERT INTO request_transcripts (merchant_id, callback_id, edge_call_id,
                    recording_id, transcript)
                SELECT {merchant}, {p(report.callback_id)}, {call}, {p(report.recording_id)},
                    {p(report.transcript)}
                FROM ok
                ON CONFLICT (merchant_id, recording_id) DO NOTHING RETURNING id)"""
        case Cdr():
            return _cdr(report, p, merchant, call, learn_call_lengths)
        case CallbackStatusReport():
            callback, status, reason = p(report.callback_id), p(report.status), p(report.reason)
            return f"""written AS (
                INSERT INTO callback_status (merchant_id, callback_id, edge_call_id, status,
                    reason, attempts, at)
                SELECT {merchant}, {callback}, {call}, {status}, {reason},
                    {p(report.attempts)}, {p(report.at)}
                FROM ok
                ON CONFLICT (merchant_id, callback_id, status, at) DO NOTHING RETURNING id),
            call_status AS (
                UPDATE edge_calls SET callback_id = {callback}, callback_status = {status},
                    callback_reason = {reason}
                WHERE edge_call_id = {call} AND merchant_id = {merchant}
                  AND EXISTS (SELECT FROM written))"""


def _cdr(c: Cdr, p: _Params, merchant: str, call: str, learn_call_lengths: bool) -> str:
    written = f"""written AS (
                INSERT INTO cdrs (merchant_id, call_id, callback_id, edge_call_id, leg,
                    destination, destination_kind, carrier, started_at, answered_at,
                    ended_at, duration_s, billed_s, hangup_cause, disposition,
                    carrier_cost_amount, carrier_cost_currency, direct_cost_amount,
                    direct_cost_currency)
                SELECT {merchant}, {p(c.call_id)}, {p(c.callback_id)}, {call}, {p(c.leg)},
                    {p(c.destination)}, {p(c.destination_kind)}, {p(c.carrier)},
                    {p(c.started_at)}, {p(c.answered_at)}, {p(c.ended_at)},
                    {p(c.duration_s)}, {p(c.billed_s)}, {p(c.hangup_cause)},
                    {p(c.disposition)},
                    {p(c.carrier_cost.amount if c.carrier_cost else None)},
                    {p(c.carrier_cost.currency if c.carrier_cost else None)},
                    {p(c.direct_cost.amount if c.direct_cost else None)},
                    {p(c.direct_cost.currency if c.direct_cost else None)}
                FROM ok
                ON CONFLICT (merchant_id, call_id) DO NOTHING RETURNING id)"""
    number = c.number
    if not learn_call_lengths or c.leg != "customer" or c.answered_at is None \
            or number is None:
        return written
    counted = call_lengths.counting(p, "written", c.merchant_id, number, c.duration_s,
                                    c.ended_at)
    return written if counted is None else f"{written},\n{counted}"


async def save_report(conn: asyncpg.Connection, report: Report) -> Answer:
    """Store one report of the kinds not in :data:`ONE_STATEMENT` inside the caller's
    transaction (``accept_once``'s); the answer for the link."""
    edge_call_id = None if isinstance(report, BillingRecord | CustomerErasure) \
        else report.edge_call_id
    tenant = await conn.fetchrow(
        "SELECT EXISTS (SELECT FROM merchants WHERE id = $1) AS known, "
        "(SELECT merchant_id FROM edge_calls WHERE edge_call_id = $2) AS owner",
        report.merchant_id, edge_call_id)
    assert tenant is not None
    refusal = _tenant_refusal(report.merchant_id, edge_call_id, tenant["known"],
                              tenant["owner"])
    if refusal is not None:
        raise refusal
    match report:
        case ConsultationRecord():
            row_id = await insert_record(conn, report)
        case BillingRecord():
            row_id = await billing_records.insert_record(conn, report)
        case CustomerErasure():
            await erasure.apply(conn, report)
            row_id = 0      # applied; its message id keeps a replay from applying twice
        case _:
            raise TypeError(f"{kind_of(report)} reports are written by apply_report")
    status = "stored" if row_id is not None else "duplicate"
    return 200, {"status": status, "kind": kind_of(report)}
