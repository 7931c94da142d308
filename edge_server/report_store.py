"""Storing the reports of the callback site at the edge (:mod:`edge_server.reports`
parses them), once per link message id, tenant-scoped.

Reports of the kinds each call-back sends (:data:`ONE_STATEMENT`: request info, a
recording's transcript, CDRs, call-back status) are applied in ONE statement, its own
transaction, however many a batch holds (:func:`apply_reports`; :func:`apply_report` for
one)::

    WITH judged  AS (each report (its arrays unnested): is its merchant known, who owns
                     its call, the answer kept for its message id if claimed before),
         ok      AS (the first report of each message id to be written: not claimed,
                     tenant right),
         <kind>_new AS (the reports of ok of a kind, the first of each natural key),
         <kind>_written AS (INSERT them ON CONFLICT (the natural key) DO NOTHING
                     RETURNING the key), ...
         ...        what the new rows update: the call's call-back status (the batch's
                    last status of each call), customer legs' talk times for the call
                    lengths,
         claimed AS (INSERT INTO inbound_messages each ok report's message id and its
                     answer, stored if its row was written else duplicate,
                     ON CONFLICT (message_id) DO NOTHING RETURNING the answer)
    SELECT for each report: the tenant, the prior answer, the claim it shares, its answer

so a batch holds a pool connection for one round trip and commits (a WAL flush) once,
not once a report. The answers are those the reports would get one by one in the
batch's order (:func:`shared.link.accept_once` around :func:`save_report`): a message id
claimed before, or earlier in the batch, gets its first answer back; an unknown
merchant, or a call of another merchant, 422 with nothing written (not even the claim: a
resend is judged again); else ``stored``, or ``duplicate`` when the natural key was
stored under another message id, before or earlier in the batch. Two deliveries of one
message at once: the second's claim (and its report, on the natural key) waits for the
first's commit and writes nothing; the first answer is then read, a second statement,
the only case with one. The rows are written in their keys' order, so two batches with
the same reports wait for one another rather than deadlock; a writer taking rows of the
batch (the calls' rows) in another order can still deadlock with it: the batch is then
rolled back whole and applied a report at a time, each its own statement.

The other kinds (consultation records, billing records, customer erasures: a few per
consultation, not per call-back) are written by :func:`save_report` inside
``accept_once``'s transaction.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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

#: the reports :func:`apply_reports` writes in one statement
ONE_STATEMENT = (RequestInfo, RecordingTranscript, Cdr, CallbackStatusReport)
OneStatementReport = RequestInfo | RecordingTranscript | Cdr | CallbackStatusReport
#: a report of :data:`ONE_STATEMENT` and the id of the message that carried it
Delivery = tuple[str, OneStatementReport]


@dataclass(frozen=True, slots=True)
class _Kind:
    """How :func:`apply_reports` writes one kind of report: its CTEs' prefix, its table,
    the columns besides ``merchant_id`` and ``edge_call_id`` (name, type) and those only
    read (``extra``), its natural key besides ``merchant_id``, and a report's values for
    ``columns + extra`` (given whether call lengths are learned)."""

    name: str
    report: type
    table: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]
    values: Callable[[Any, bool], tuple[object, ...]]
    extra: tuple[tuple[str, str], ...] = ()


def _cdr_values(c: Cdr, learn_call_lengths: bool) -> tuple[object, ...]:
    number = c.number
    counted = call_lengths.talk_counted(number, c.duration_s) if learn_call_lengths \
        and c.leg == "customer" and c.answered_at is not None and number is not None \
        else None
    return (c.call_id, c.callback_id, c.leg, c.destination, c.destination_kind, c.carrier,
            c.started_at, c.answered_at, c.ended_at, c.duration_s, c.billed_s,
            c.hangup_cause, c.disposition,
            c.carrier_cost.amount if c.carrier_cost else None,
            c.carrier_cost.currency if c.carrier_cost else None,
            c.direct_cost.amount if c.direct_cost else None,
            c.direct_cost.currency if c.direct_cost else None,
            *(counted or (None, None)))


_REQUEST = _Kind(
    "request", RequestInfo, "requests",
    (("callback_id", "text"), ("caller", "text"), ("category", "text"), ("fields", "jsonb"),
     ("collected_at", "timestamptz")),
    ("callback_id", "collected_at"),
    lambda r, _: (r.callback_id, str(r.caller), r.category, r.fields, r.collected_at))
_TRANSCRIPT = _Kind(
    "transcript", RecordingTranscript, "request_transcripts",
    (("callback_id", "text"), ("recording_id", "text"), ("transcript", "text")),
    ("recording_id",), lambda r, _: (r.callback_id, r.recording_id, r.transcript))
_CDR = _Kind(
    "cdr", Cdr, "cdrs",
    (("call_id", "text"), ("callback_id", "text"), ("leg", "text"), ("destination", "text"),
     ("destination_kind", "text"), ("carrier", "text"), ("started_at", "timestamptz"),
     ("answered_at", "timestamptz"), ("ended_at", "timestamptz"), ("duration_s", "numeric"),
     ("billed_s", "int"), ("hangup_cause", "int"), ("disposition", "text"),
     ("carrier_cost_amount", "numeric"), ("carrier_cost_currency", "text"),
     ("direct_cost_amount", "numeric"), ("direct_cost_currency", "text")),
    ("call_id",), _cdr_values, extra=(("count_class", "text"), ("count_s", "int")))
_STATUS = _Kind(
    "status", CallbackStatusReport, "callback_status",
    (("callback_id", "text"), ("status", "text"), ("reason", "text"), ("attempts", "int"),
     ("at", "timestamptz")),
    ("callback_id", "status", "at"),
    lambda r, _: (r.callback_id, r.status, r.reason, r.attempts, r.at))
_KINDS = (_REQUEST, _TRANSCRIPT, _CDR, _STATUS)
#: each report's own columns, unnested first
_EVENT = (("ord", "int"), ("message_id", "text"), ("kind", "text"), ("merchant_id", "text"),
          ("edge_call_id", "text"))


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
    """:func:`apply_reports` of one report; a refusal is raised (``ApiError`` 422)."""
    (answer,) = await _apply(conn, [(message_id, report)], learn_call_lengths)
    if isinstance(answer, ApiError):
        raise answer
    return answer


async def apply_reports(conn: asyncpg.Connection, deliveries: Sequence[Delivery], *,
                        learn_call_lengths: bool = False) -> list[Answer]:
    """Claim the message ids, check the tenants, write the reports with what they update
    and keep the answers, in one statement (outside a transaction: it commits on its
    own); each report's answer for the link, in order (see the module docstring).
    ``learn_call_lengths`` (rates on): new answered customer legs' talk seconds are
    counted for their merchants' call lengths in the same statement, so a CDR delivered
    twice counts once. A deadlock with another writer: the statement is rolled back and
    the reports applied one at a time."""
    try:
        answers = await _apply(conn, deliveries, learn_call_lengths)
    except asyncpg.DeadlockDetectedError:
        if len(deliveries) == 1 or conn.is_in_transaction():
            raise
        log.warning("%d reports deadlocked with another writer: applying them one at a "
                    "time", len(deliveries))
        answers = [answer for delivery in deliveries
                   for answer in await _apply(conn, [delivery], learn_call_lengths)]
    return [(a.status, a.body()) if isinstance(a, ApiError) else a for a in answers]


async def _apply(conn: asyncpg.Connection, deliveries: Sequence[Delivery],
                 learn_call_lengths: bool) -> list[Answer | ApiError]:
    kinds = tuple(k for k in _KINDS if any(isinstance(r, k.report) for _, r in deliveries))
    rows = await conn.fetch(_statement(kinds, learn_call_lengths),
                            *_arguments(deliveries, kinds, learn_call_lengths))
    answers: list[Answer | ApiError] = []
    for i, ((mid, report), row) in enumerate(zip(deliveries, rows, strict=True)):
        answers.append(await _answer(conn, i, mid, report, row, answers))
    return answers


async def _answer(conn: asyncpg.Connection, i: int, mid: str, report: OneStatementReport,
                  row: asyncpg.Record, earlier: Sequence[Answer | ApiError]
                  ) -> Answer | ApiError:
    """The answer of the ``i``-th report from its row of the statement; ``earlier``, the
    answers of the reports before it."""
    claimer = row["claimer"]        # the first report of its message id that was written
    if claimer == i and row["answer"] is not None:
        return 200, dict(row["answer"])
    if row["prior_status"] is None and (claimer is None or claimer > i):
        refusal = _tenant_refusal(report.merchant_id, report.edge_call_id, row["known"],
                                  row["owner"])
        assert refusal is not None
        return refusal
    answer: Answer | ApiError | None
    if row["prior_status"] is not None:         # claimed before the statement
        answer = int(row["prior_status"]), dict(row["prior_body"])
    elif claimer < i:                           # the same message earlier in the batch
        answer = earlier[claimer]
    else:       # claimed by a delivery that committed while this one waited
        answer = await first_answer(conn, mid)
        assert answer is not None
    log.info("duplicate %s message %s: returning the first answer", kind_of(report), mid)
    return answer


def _arguments(deliveries: Sequence[Delivery], kinds: Sequence[_Kind],
               learn_call_lengths: bool) -> list[object]:
    """The arrays :func:`_statement` unnests: the reports' own columns, then each of
    ``kinds``'."""
    args: list[object] = [list(range(len(deliveries))), [mid for mid, _ in deliveries],
                          [kind_of(r) for _, r in deliveries],
                          [r.merchant_id for _, r in deliveries],
                          [r.edge_call_id for _, r in deliveries]]
    for kind in kinds:
        mine = [(i, kind.values(r, learn_call_lengths)) for i, (_, r) in enumerate(deliveries)
                if isinstance(r, kind.report)]
        args.append([i for i, _ in mine])
        args.extend([values[c] for _, values in mine]
                    for c in range(len(kind.columns) + len(kind.extra)))
    return args


@functools.cache
def _statement(kinds: tuple[_Kind, ...], learn_call_lengths: bool) -> str:
    """The statement applying a batch of reports of ``kinds`` (see the module docstring):
    the writes of those kinds only (a kind's CTEs cost their tables' set-up even when they
    write nothing), one text for each set of kinds (the callback site's relay sends one
    kind a batch), prepared once on each connection.

    Each array is unnested from a sub-select, ``unnest((SELECT $n::type[]))``: its length
    unknown to the planner, a custom plan is no cheaper than the generic one, so after
    its first five runs on a connection the statement runs its generic plan instead of
    being planned again each time (measured on one backend: PostgreSQL's CPU for a CDR
    or status report alone 0.55 ms planned each time, 0.22 ms with the generic plan;
    0.16 ms for main's statement of one report).

    That generic plan is made from the first batches a connection applies, when the tables
    may still be nearly empty (a new site, the bench), and kept: so each report's earlier
    claim and call are read by scalar sub-selects on their unique keys, and the calls'
    status is updated by ``edge_call_id`` alone (``ok`` holds only reports whose call is
    their merchant's), never through a join the planner could turn into a scan of
    ``inbound_messages`` or of a merchant's calls (the plan made at 20 rows scanned
    ``inbound_messages`` whole for every batch: 1.2 ms at 1,200 rows, growing with it)."""
    placeholders = iter(range(1, 1000))

    def unnest(columns: Sequence[tuple[str, str]], alias: str = "r") -> str:
        arrays = ", ".join(f"(SELECT ${next(placeholders)}::{typ}[])" for _, typ in columns)
        return f"unnest({arrays}) AS {alias}({', '.join(name for name, _ in columns)})"

    event = unnest(_EVENT, "e")
    writes = ",\n".join(_kind_writes(kind, unnest((("ord", "int"), *kind.columns,
                                                      *kind.extra))) for kind in kinds)
    stored = " UNION ALL ".join(f"SELECT ord FROM {kind.name}_stored" for kind in kinds)
    call_status = "" if _STATUS not in kinds else """
        call_status AS (
            UPDATE edge_calls c SET callback_id = s.callback_id, callback_status = s.status,
                callback_reason = s.reason
            FROM (SELECT DISTINCT ON (edge_call_id) * FROM status_stored
                  ORDER BY edge_call_id, ord DESC) s
            WHERE c.edge_call_id = s.edge_call_id),"""
    counting = "" if not learn_call_lengths or _CDR not in kinds else f"""
        counted AS (
            SELECT merchant_id, count_class AS number_class, count_s AS talk_s, ended_at AS at
            FROM cdr_stored WHERE count_class IS NOT NULL),
        {call_lengths.counting("counted")},"""
    # named first: pg_stat_activity shows a statement's first 1 KB
    return f"""/* edge_server.report_store: the link's requests, request_transcripts, cdrs,
        callback_status */
        WITH judged AS (
            SELECT e.*, EXISTS (SELECT FROM merchants m WHERE m.id = e.merchant_id) AS known,
                   (SELECT c.merchant_id FROM edge_calls c
                    WHERE c.edge_call_id = e.edge_call_id) AS owner,
                   (SELECT p.response_status FROM inbound_messages p
                    WHERE p.message_id = e.message_id) AS prior_status,
                   (SELECT p.response_body FROM inbound_messages p
                    WHERE p.message_id = e.message_id) AS prior_body
            FROM {event}),
        ok AS (
            SELECT DISTINCT ON (message_id) ord, message_id, kind, merchant_id, edge_call_id
            FROM judged
            WHERE known AND (owner IS NULL OR owner = merchant_id) AND prior_status IS NULL
            ORDER BY message_id, ord),
        {writes},
        stored AS ({stored}),{call_status}{counting}
        claimed AS (
            INSERT INTO inbound_messages (message_id, kind, response_status, response_body)
            SELECT message_id, kind, 200, jsonb_build_object(
                'status', CASE WHEN ord IN (SELECT ord FROM stored) THEN 'stored'
                               ELSE 'duplicate' END, 'kind', kind)
            FROM ok ORDER BY message_id
            ON CONFLICT (message_id) DO NOTHING RETURNING message_id, response_body)
        SELECT j.known, j.owner, j.prior_status, j.prior_body, o.ord AS claimer,
               c.response_body AS answer
        FROM judged j LEFT JOIN ok o ON o.message_id = j.message_id
            LEFT JOIN claimed c ON c.message_id = j.message_id
        ORDER BY j.ord"""


def _kind_writes(kind: _Kind, unnested: str) -> str:
    """The CTEs writing the reports of ``kind`` among ``ok``: ``<name>_new`` (the first of
    each natural key), ``<name>_written`` (their keys, those not stored before),
    ``<name>_stored`` (the new rows' reports)."""
    key = ", ".join(("merchant_id", *kind.key))
    columns = ", ".join(name for name, _ in kind.columns)
    return f"""{kind.name}_new AS (
            SELECT DISTINCT ON ({key}) ok.merchant_id, ok.edge_call_id, r.*
            FROM {unnested} JOIN ok USING (ord)
            ORDER BY {key}, ord),
        {kind.name}_written AS (
            INSERT INTO {kind.table} (merchant_id, edge_call_id, {columns})
            SELECT merchant_id, edge_call_id, {columns} FROM {kind.name}_new ORDER BY {key}
            ON CONFLICT ({key}) DO NOTHING RETURNING {key}),
        {kind.name}_stored AS (
            SELECT n.* FROM {kind.name}_new n JOIN {kind.name}_written USING ({key}))"""


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
