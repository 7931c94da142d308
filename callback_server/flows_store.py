"""Merchants' IVR flows in PostgreSQL: versions, the active one, and the round's record.

* :meth:`FlowStore.upload` validates a flow's TOML text (:func:`~callback_server.ivr_flow.
  parse_text`, then the site's own checks: the confirm gate, the prompts) and stores it as
  the merchant's next version (1, 2, ...; immutable: text, SHA-256, who, when). The same
  text again is the version it already is (``created`` False), so a retried upload does
  not make a second one.
* A flow's ``subflow`` nodes run the merchant's stored flows of those names: the newest
  version of each when the calling flow is uploaded (checked: a missing one or recursion
  is refused) and when it is activated or a process loads it (pinned then: a newer
  version of a sub-flow is taken at the next activation of the calling flow).
* :meth:`FlowStore.activate` makes a version the one new rounds use: one upsert of the
  merchant's ``ivr_flow_active`` row (atomic; the previous version stays, for rollback).
  Its trigger NOTIFYs ``ivr_flows`` (:mod:`callback_server.active_flows` listens).
* Which flow (and version) each round ran: :meth:`callback_server.store.info_store.
  InfoStore.record_round_flow`, shown in ``GET /v1/callbacks/{id}`` as ``flows``.

Refusals are :class:`shared.http.ApiError` (HTTP and CLI alike): 400 ``invalid-flow``
with ``file``, ``line`` and ``node``, 404 ``not-found``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg

from callback_server.ivr_flow import Flow, FlowError, parse_text, resolve
from shared.http import ApiError
from shared.outbox import isoformat

#: what the site refuses in a flow that validates: (merchant, flow) -> problems
SiteCheck = Callable[[str, Flow], Sequence[str]]
#: what the site does with a flow it activates, before new rounds run it (its say nodes'
#: texts without variables rendered: :func:`callback_server.ivr_services.prerender`)
Prepare = Callable[[str, Flow], Awaitable[None]]
MAX_FLOW_BYTES = 256 * 1024


def invalid_flow(exc: FlowError) -> ApiError:
    return ApiError(400, "invalid-flow", str(exc), file=exc.file, line=exc.line,
                    node=exc.node)


async def stored_subflows(pool: asyncpg.Pool, merchant_id: str
                          ) -> Callable[[str], Flow | None]:
    """A sub-flow look-up (:func:`~callback_server.ivr_flow.resolve`) over the merchant's
    stored flows: a name is its newest version of that name (parsed when asked)."""
    rows = await pool.fetch(
        """SELECT DISTINCT ON (name) name, version, source, filename
           FROM ivr_flow_versions WHERE merchant_id = $1 ORDER BY name, version DESC""",
        merchant_id)
    stored = {r["name"]: (r["source"], f"{merchant_id}/v{r['version']}/{r['filename']}")
              for r in rows}

    def lookup(name: str) -> Flow | None:
        found = stored.get(name)
        return None if found is None else parse_text(*found)

    return lookup


def validate(site_check: SiteCheck, merchant_id: str, text: str, filename: str,
             subflows: Callable[[str], Flow | None] | None = None) -> Flow:
    """The flow in ``text``, or 400 ``invalid-flow`` naming file, line and node (the
    site's own checks name the file only). With ``subflows`` (a look-up), its sub-flows
    are resolved first, and the site checks them too."""
    try:
        flow = parse_text(text, filename)
        if subflows is not None and flow.calls:
            flow = resolve(flow, subflows, text)
    except FlowError as exc:
        raise invalid_flow(exc) from None
    problems = site_check(merchant_id, flow)
    if problems:
        raise invalid_flow(FlowError(filename, None, "; ".join(problems)))
    return flow


@dataclass(frozen=True, slots=True)
class FlowVersion:
    merchant_id: str
    version: int
    name: str
    sha256: str
    filename: str
    created_by: str
    created_at: datetime
    active: bool
    source: str

    def to_json(self, *, with_source: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "merchant_id": self.merchant_id, "version": self.version, "name": self.name,
            "sha256": self.sha256, "filename": self.filename, "created_by": self.created_by,
            "created_at": isoformat(self.created_at), "active": self.active}
        if with_source:
            out["source"] = self.source
        return out


def valid_json(flow: Flow) -> dict[str, Any]:
    """What a dry run answers for a valid flow."""
    return {"valid": True, "name": flow.name, "start": flow.start,
            "nodes": [n.id for n in flow.nodes]}


def versions_json(versions: Sequence[FlowVersion]) -> dict[str, Any]:
    """The merchant's versions and the active one (None: its configured file flow)."""
    return {"active": next((v.version for v in versions if v.active), None),
            "items": [v.to_json() for v in versions]}


_COLUMNS = """v.merchant_id, v.version, v.name, v.sha256, v.filename, v.created_by,
              v.created_at, v.source, a.version IS NOT DISTINCT FROM v.version AS active"""
_FROM = """ivr_flow_versions v
           LEFT JOIN ivr_flow_active a ON a.merchant_id = v.merchant_id"""


def _version(row: asyncpg.Record) -> FlowVersion:
    return FlowVersion(**dict(row))


class FlowStore:
    def __init__(self, pool: asyncpg.Pool, site_check: SiteCheck = lambda m, f: (),
                 prepare: Prepare | None = None) -> None:
        self.pool = pool
        self.site_check = site_check
        self.prepare = prepare

    async def checked(self, merchant_id: str, text: str, filename: str) -> Flow:
        """:func:`validate` with its sub-flows found among the merchant's stored flows (a
        missing one or recursion: 400 ``invalid-flow``)."""
        return validate(self.site_check, merchant_id, text, filename,
                        await stored_subflows(self.pool, merchant_id))

    async def upload(self, merchant_id: str, text: str, filename: str, author: str
                     ) -> tuple[FlowVersion, bool]:
        """Store ``text`` as the merchant's next version; ``(version, created)``."""
        flow = await self.checked(merchant_id, text, filename)
        digest = hashlib.sha256(text.encode()).hexdigest()
        async with self.pool.acquire() as conn, conn.transaction():
            # one upload of a merchant at a time: versions are numbered without gaps
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('ivr_flow:' || $1))",
                               merchant_id)
            same = await conn.fetchrow(f"SELECT {_COLUMNS} FROM {_FROM} "
                                       "WHERE v.merchant_id = $1 AND v.sha256 = $2",
                                       merchant_id, digest)
            if same is not None:
                return _version(same), False
            number = await conn.fetchval(
                """INSERT INTO ivr_flow_versions (merchant_id, version, name, source, sha256,
                       filename, created_by)
                   SELECT $1, coalesce(max(version), 0) + 1, $2, $3, $4, $5, $6
                   FROM ivr_flow_versions WHERE merchant_id = $1
                   RETURNING version""",
                merchant_id, flow.name, text, digest, filename, author)
        found = await self.get(merchant_id, number)
        assert found is not None
        return found, True

    async def list(self, merchant_id: str) -> list[FlowVersion]:
        """The merchant's versions, newest first."""
        rows = await self.pool.fetch(f"SELECT {_COLUMNS} FROM {_FROM} WHERE v.merchant_id = $1 "
                                     "ORDER BY v.version DESC", merchant_id)
        return [_version(r) for r in rows]

    async def get(self, merchant_id: str, version: int) -> FlowVersion | None:
        row = await self.pool.fetchrow(f"SELECT {_COLUMNS} FROM {_FROM} "
                                       "WHERE v.merchant_id = $1 AND v.version = $2",
                                       merchant_id, version)
        return None if row is None else _version(row)

    async def activate(self, merchant_id: str, version: int, by: str) -> FlowVersion:
        """Make ``version`` the merchant's active flow; 404 ``not-found`` if it has none,
        400 ``invalid-flow`` if the site refuses it now (a prompt or guidance it plays was
        removed since it was uploaded). The site prepares it (``prepare``) before it is
        made active."""
        found = await self.get(merchant_id, version)
        if found is None:
            raise ApiError(404, "not-found", f"no flow version {version}")
        flow = await self.checked(merchant_id, found.source, found.filename)
        if self.prepare is not None:
            await self.prepare(merchant_id, flow)
        await self.pool.execute(
            """INSERT INTO ivr_flow_active (merchant_id, version, activated_by)
               VALUES ($1, $2, $3)
               ON CONFLICT (merchant_id) DO UPDATE
                   SET version = EXCLUDED.version, activated_by = EXCLUDED.activated_by,
                       activated_at = now(), generation = nextval('ivr_flow_generation')""",
            merchant_id, version, by)
        return replace(found, active=True)
