"""Presence by phone: the edge asks, over the signed link, to set an advisor online or
offline because they called a presence number (``edge_server.presence_flow``).

``POST /v1/link/presence`` (signed by the edge; ``shared.link.signature_middleware``)::

    {"merchant_id": "acme", "edge_call_id": "edge-1700.42", "presence": "online",
     "caller": "+819012345678", "caller_user": null}

The advisor is the merchant's one whose contact is the caller: the PSTN number
``caller`` (E.164), or the SIP user ``caller_user`` (a caller ID that is no phone
number); at least one is given. Answer ``200 {"outcome", "advisor_id", "state"}``:

* ``online`` / ``offline``: ``GoOnline(via=phone)`` / ``GoOffline(via=phone)`` applied
  through :meth:`advisors.live.Presences.apply` (the ``advisor_events`` row and its
  NOTIFY, so the SSE stream shows it as for the API); already so: the same answer,
  nothing written;
* ``in_call``: a consultation is in progress (ringing or talking): nothing changes;
* ``not_registered``: no advisor of the merchant has that phone (an unknown merchant
  has none);
* ``ambiguous``: more than one has it: nothing changes.

Replay-safe: the answer is stored with the link message id in the transaction that
made the change (:func:`shared.link.accept_once`), so a repeated delivery (the other
route, a replay) gets the first answer and changes nothing. Bad input: 400
``invalid-field`` naming the field. Served by every role of the callback site.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web

from advisors import presence as pm
from advisors.live import Presences
from advisors.model import Contact, PstnContact, SipContact, Via
from advisors.resources import UNAVAILABLE
from advisors.store import AdvisorStore
from shared.http import (
    ApiError,
    InvalidField,
    database_errors_as_503,
    json_response,
    read_json_object,
)
from shared.link import Answer, accept_once, message_id, raw_body
from shared.openapi import (
    E164_NUMBER,
    LINK,
    Operation,
    Reply,
    Schema,
    add_operations,
    nullable,
)
from shared.phone import E164, InvalidNumber

PRESENCE_PATH = "/v1/link/presence"
LINK_KIND = "presence"
MERCHANT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_EDGE_CALL_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_SIP_USER = re.compile(r"^[A-Za-z0-9._~+-]{1,64}$")
_FIELDS = ("merchant_id", "edge_call_id", "presence", "caller", "caller_user")
WANTED = ("online", "offline")
OUTCOMES = ("online", "offline", "in_call", "not_registered", "ambiguous")

#: the site's pool, once its database is connected (KeyError before)
Pool = Callable[[web.Application], asyncpg.Pool]
POOL_KEY: web.AppKey[Pool] = web.AppKey("advisors_phone_pool")


@dataclass(frozen=True, slots=True)
class PresenceCall:
    merchant_id: str
    edge_call_id: str
    online: bool
    contacts: tuple[Contact, ...]


def parse_presence_call(data: Mapping[str, Any]) -> PresenceCall:
    for key in data:
        if key not in _FIELDS:
            raise InvalidField(key, f"unknown field (expected one of: {', '.join(_FIELDS)})")
    merchant_id = matching(data, "merchant_id", MERCHANT_ID)
    edge_call_id = matching(data, "edge_call_id", _EDGE_CALL_ID)
    wanted = data.get("presence")
    if wanted not in WANTED:
        raise InvalidField("presence", "expected online or offline")
    contacts: list[Contact] = []
    caller = data.get("caller")
    if caller is not None:
        if not isinstance(caller, str):
            raise InvalidField("caller", "expected an E.164 number")
        try:
            contacts.append(PstnContact(E164.parse(caller)))
        except InvalidNumber as exc:
            raise InvalidField("caller", str(exc)) from None
    if data.get("caller_user") is not None:
        contacts.append(SipContact(matching(data, "caller_user", _SIP_USER)))
    if not contacts:
        raise InvalidField("caller", "the caller's number or SIP user is required")
    return PresenceCall(merchant_id, edge_call_id, wanted == "online", tuple(contacts))


def matching(data: Mapping[str, Any], key: str, pattern: re.Pattern[str]) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidField(key, f"required, matching {pattern.pattern}")
    return value


async def change(conn: asyncpg.Connection, pool: asyncpg.Pool, call: PresenceCall
                 ) -> tuple[int, dict[str, Any]]:
    """Set the caller's presence in the transaction on ``conn``; the link's answer."""
    found = await AdvisorStore(pool).advisors_by_contact(call.merchant_id, call.contacts,
                                                         conn, lock=True)
    if len(found) != 1:
        outcome = "not_registered" if not found else "ambiguous"
        return 200, {"outcome": outcome, "advisor_id": None, "state": None}
    advisor, presence = found[0]
    if presence.sessions:
        return 200, {"outcome": "in_call", "advisor_id": advisor.id,
                     "state": presence.state.value}
    live = Presences(pool)
    event: pm.Event = (pm.GoOnline(live.clock(), Via.PHONE) if call.online
                       else pm.GoOffline(live.clock(), Via.PHONE))
    after, _ = await live.apply(call.merchant_id, advisor.id, event, conn)
    return 200, {"outcome": "online" if call.online else "offline",
                 "advisor_id": advisor.id, "state": after.state.value}


async def accept_link(request: web.Request, kind: str,
                      handler: Callable[[asyncpg.Connection, asyncpg.Pool], Awaitable[Answer]]
                      ) -> web.Response:
    """Answer a link message of ``kind`` by ``handler(conn, pool)``, once per message id
    (:func:`shared.link.accept_once`, in the handler's transaction); 503 before the
    site's database is connected."""
    try:
        pool = request.app[POOL_KEY](request.app)
    except KeyError:
        raise ApiError(503, "advisors-unavailable", "database not connected yet",
                       retry_after_s=5) from None
    async with pool.acquire() as conn, conn.transaction():
        status, body = await accept_once(conn, message_id(request), kind,
                                         lambda c: handler(c, pool))
    return json_response(body, status=status)


async def link_presence(request: web.Request) -> web.Response:
    """Set an advisor online or offline: they called a presence number at the edge. A
    repeated message id gets the first answer back and changes nothing."""
    call = parse_presence_call(await read_json_object(request, raw_body(request)))
    return await accept_link(request, LINK_KIND, lambda conn, pool: change(conn, pool, call))


PRESENCE_CALL: Schema = {
    "type": "object", "required": ["merchant_id", "edge_call_id", "presence"],
    "additionalProperties": False,
    "description": "at least one of caller and caller_user",
    "properties": {
        "merchant_id": {"type": "string", "pattern": MERCHANT_ID.pattern},
        "edge_call_id": {"type": "string", "pattern": _EDGE_CALL_ID.pattern},
        "presence": {"enum": list(WANTED)},
        "caller": nullable(E164_NUMBER),
        "caller_user": nullable({"type": "string", "pattern": _SIP_USER.pattern})}}
PRESENCE_ANSWER: Schema = {
    "type": "object", "required": ["outcome", "advisor_id", "state"],
    "properties": {"outcome": {"enum": list(OUTCOMES)},
                   "advisor_id": nullable({"type": "integer"}),
                   "state": nullable({"type": "string", "description": "the shown state"})}}
EXAMPLE = {"merchant_id": "acme", "edge_call_id": "edge-1700.42", "presence": "online",
           "caller": "+819012345678", "caller_user": None}
OPERATIONS = (
    Operation("POST", PRESENCE_PATH, database_errors_as_503(link_presence),
              "An advisor called a presence number at the edge", "link",
              {200: Reply("the outcome (or the answer to an earlier delivery of it)",
                          PRESENCE_ANSWER)},
              access=LINK, body=PRESENCE_CALL, examples={"go online": EXAMPLE},
              errors={400: ("invalid-field",), **UNAVAILABLE}),
)


def install(app: web.Application, pool: Pool) -> None:
    """Serve ``POST /v1/link/presence`` over the site's pool (``pool(app)``)."""
    app[POOL_KEY] = pool
    add_operations(app, OPERATIONS)
