"""The advisors' SIP endpoints at the edge, as the callback site knows them.

The edge keeps the endpoints (``edge_server.sip_endpoints``: the merchant creates them
there, softphones register there) and tells this site every change of one over the
signed link, through its outbox in the change's transaction:
``POST /v1/link/sip-endpoints`` (kind ``sip_endpoint``)::

    {"merchant_id": "acme", "user": "hoshino", "exists": true, "registered": false,
     "version": 17}

``exists``: the endpoint is there (false: deleted); ``registered``: a softphone is
registered as it at one of the edge Asterisks. ``version`` grows with every change at
the edge: a message older than the state held changes nothing (messages may come in
any order, on both routes, or again). Answer ``200 {"status": "stored"|"stale"}``;
bad input ``400 invalid-field`` naming the field (a dead letter at the edge).

The site uses it to refuse an advisor whose SIP contact has no endpoint at the edge
(``AdvisorStore(pool, operators)``, in the advisor's transaction) and to show whether
their phone is registered (``sip_registered`` in the advisor's JSON).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web

from advisors.phone import MERCHANT_ID, POOL_KEY, Pool, accept_link, matching
from advisors.resources import UNAVAILABLE
from shared.http import (
    InvalidField,
    database_errors_as_503,
    read_json_object,
)
from shared.link import raw_body
from shared.openapi import LINK, Operation, Reply, Schema, add_operations

PATH = "/v1/link/sip-endpoints"
KIND = "sip_endpoint"
#: what the edge takes as a SIP user (edge_server.sip_endpoints.SIP_USER)
_USER = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_FIELDS = ("merchant_id", "user", "exists", "registered", "version")


@dataclass(frozen=True, slots=True)
class EndpointState:
    merchant_id: str
    user: str
    exists: bool
    registered: bool
    version: int

    def to_json(self) -> dict[str, Any]:
        """The link message (what the edge sends)."""
        return {"merchant_id": self.merchant_id, "user": self.user, "exists": self.exists,
                "registered": self.registered, "version": self.version}


def parse_state(data: Mapping[str, Any]) -> EndpointState:
    for key in data:
        if key not in _FIELDS:
            raise InvalidField(key, f"unknown field (expected one of: {', '.join(_FIELDS)})")
    merchant_id, user = matching(data, "merchant_id", MERCHANT_ID), matching(data, "user", _USER)
    flags = {}
    for key in ("exists", "registered"):
        if not isinstance(data.get(key), bool):
            raise InvalidField(key, "required, true or false")
        flags[key] = bool(data[key])
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 0 < version < 2**63:
        raise InvalidField("version", "required, a positive integer")
    return EndpointState(merchant_id, user, flags["exists"],
                         flags["registered"] and flags["exists"], version)


async def store(conn: asyncpg.Connection, state: EndpointState) -> tuple[int, dict[str, Any]]:
    """Keep ``state`` unless a later version is held; the link's answer."""
    kept = await conn.fetchval(
        """INSERT INTO edge_sip_endpoints (merchant_id, sip_user, present, registered, version)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (merchant_id, sip_user) DO UPDATE SET present = EXCLUDED.present,
               registered = EXCLUDED.registered, version = EXCLUDED.version,
               updated_at = now()
           WHERE edge_sip_endpoints.version < EXCLUDED.version
           RETURNING true""",
        state.merchant_id, state.user, state.exists, state.registered, state.version)
    return 200, {"status": "stored" if kept else "stale"}


async def link_state(request: web.Request) -> web.Response:
    """An advisor's SIP endpoint at the edge changed (created, deleted, registered or
    not). A repeated message id gets the first answer back."""
    state = parse_state(await read_json_object(request, raw_body(request)))
    return await accept_link(request, KIND, lambda conn, _: store(conn, state))


STATE: Schema = {
    "type": "object", "required": list(_FIELDS), "additionalProperties": False,
    "properties": {
        "merchant_id": {"type": "string", "pattern": MERCHANT_ID.pattern},
        "user": {"type": "string", "pattern": _USER.pattern},
        "exists": {"type": "boolean", "description": "false: deleted at the edge"},
        "registered": {"type": "boolean",
                       "description": "a softphone is registered at an edge Asterisk"},
        "version": {"type": "integer", "minimum": 1,
                    "description": "grows with every change at the edge; older ones "
                                   "change nothing"}}}
ANSWER: Schema = {"type": "object", "required": ["status"],
                  "properties": {"status": {"enum": ["stored", "stale"]}}}
EXAMPLE = {"merchant_id": "acme", "user": "hoshino", "exists": True, "registered": False,
           "version": 17}
OPERATIONS = (
    Operation("POST", PATH, database_errors_as_503(link_state),
              "An advisor's SIP endpoint at the edge changed", "link",
              {200: Reply("kept, or older than the state held", ANSWER)},
              access=LINK, body=STATE, examples={"created": EXAMPLE},
              errors={400: ("invalid-field",), **UNAVAILABLE}),
)


def install(app: web.Application, pool: Pool) -> None:
    """Serve ``POST /v1/link/sip-endpoints`` over the site's pool (``pool(app)``)."""
    app[POOL_KEY] = pool
    add_operations(app, OPERATIONS)
