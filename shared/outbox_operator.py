"""The operator's view of the outbox's dead letters, on both sites: HTTP and command line.

A message the peer refused for good is parked as dead (:mod:`shared.outbox`). The
operator sees it and, once the cause is fixed, requeues it (attempts start again
from 0; it is delivered once, under the same message id):

* ``GET /v1/link/outbox/dead[?limit=N]``: ``200 {"dead": [{"message_id", "kind", "path",
  "attempts", "dead_at", "status", "response", "requeues", "body"}]}``, newest first;
* ``POST /v1/link/outbox/{message_id}/requeue``: ``200 {"message_id": ..., "status":
  "requeued"}``; ``404 not-found`` when no dead message has that id; ``400
  invalid-field`` when it is not a message id.

Both take ``Authorization: Bearer <operator token>``, whose SHA-256 is ``[operator]
api_token_sha256`` (the callback site also takes its guard's ``[guard]
operator_token_sha256`` when ``[operator]`` has none); without one the routes answer
``403 operator-api-disabled``, ``401 auth-missing`` / ``auth-invalid`` for a missing
or wrong token. They are not link messages: :func:`shared.link.signature_middleware`
and the peer pin leave ``/v1/link/outbox/`` to this token.

Command line (the database of the site's config): ``python -m <site>_server outbox
dead --config FILE`` (one JSON object per line) and ``outbox requeue --config FILE
MESSAGE_ID``.
"""

from __future__ import annotations

import hmac
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web

from shared.config import DatabaseSettings, Section
from shared.db import create_pool, resolve_url
from shared.http import (
    ApiError,
    InvalidField,
    bearer_token,
    json_response,
    query_int,
    started,
    token_digest,
)
from shared.link import OPERATOR_PREFIX
from shared.openapi import (
    TIMESTAMP,
    Access,
    Operation,
    Param,
    Reply,
    Schema,
    add_operations,
    nullable,
)
from shared.outbox import DeadLetter, Outbox, isoformat

log = logging.getLogger("shared.outbox")

DEAD_PATH = f"{OPERATOR_PREFIX}dead"
REQUEUE_PATH = OPERATOR_PREFIX + "{message_id}/requeue"
_SHA256 = r"[0-9a-f]{64}"


@dataclass(frozen=True, slots=True)
class OperatorSettings:
    """``[operator]``: the operator API's bearer token, as its SHA-256 (hex)."""

    api_token_sha256: str | None = None

    @classmethod
    def parse(cls, s: Section) -> OperatorSettings:
        token = s.opt_str("api_token_sha256")
        return cls(s.str("api_token_sha256", pattern=_SHA256) if token else None)


@dataclass(frozen=True, slots=True)
class OutboxOperator:
    """What the routes need: the site's pool and the operator token's SHA-256."""

    pool: asyncpg.Pool
    token_sha256: str | None


OPERATOR_KEY = web.AppKey("link_outbox_operator", OutboxOperator)


def add_routes(app: web.Application) -> None:
    """Mount (and declare, :mod:`shared.openapi`) the dead-letter routes; the composition
    root sets ``app[OPERATOR_KEY]`` once its database is connected (503
    ``database-unavailable`` until then)."""
    add_operations(app, OPERATIONS)


def authorize(request: web.Request, expected_sha256: str | None, *,
              setting: str = "[operator] api_token_sha256") -> None:
    """Bearer token check of an operator route (constant-time compare of its SHA-256);
    ``setting`` names the config key that enables it."""
    if not expected_sha256:
        raise ApiError(403, "operator-api-disabled", f"set {setting} to use the operator API")
    digest = token_digest(bearer_token(request, "operator token"))
    if not hmac.compare_digest(digest, expected_sha256.encode()):
        raise ApiError(401, "auth-invalid", "unknown operator token")


def _operator(request: web.Request) -> OutboxOperator:
    operator = started(request, OPERATOR_KEY, "database-unavailable")
    authorize(request, operator.token_sha256)
    return operator


def as_json(letter: DeadLetter) -> dict[str, Any]:
    body: Any
    try:
        body = json.loads(letter.body)
    except ValueError:
        body = letter.body.decode(errors="replace")
    return {"message_id": letter.message_id, "kind": letter.kind, "path": letter.path,
            "attempts": letter.attempts, "dead_at": isoformat(letter.dead_at),
            "status": letter.status, "response": letter.response,
            "requeues": letter.requeues, "body": body}


def _message_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise InvalidField("message_id", "expected a message id (a UUID)") from None


async def list_dead(request: web.Request) -> web.Response:
    """The dead letters, each with the peer's status and error body and when it died."""
    operator = _operator(request)
    limit = query_int(request.query, "limit", low=1, high=1000, default=100)
    async with operator.pool.acquire() as conn:
        letters = await Outbox.dead_letters(conn, limit)
    return json_response({"dead": [as_json(letter) for letter in letters]})


async def requeue(request: web.Request) -> web.Response:
    """Attempts start again from 0; the relay delivers it once, under the same id."""
    operator = _operator(request)
    mid = _message_id(request.match_info["message_id"])
    async with operator.pool.acquire() as conn:
        revived = await Outbox.revive(conn, mid)
    if not revived:
        raise ApiError(404, "not-found", f"no dead message {mid!r}")
    log.warning("dead letter %s requeued by an operator (HTTP)", mid)
    return json_response({"message_id": mid, "status": "requeued"})


OUTBOX_OPERATOR = Access("outboxOperatorToken", {
    "type": "http", "scheme": "bearer",
    "description": "the site operator's token; its SHA-256 is [operator] api_token_sha256 "
                   "(the callback site falls back to [guard] operator_token_sha256; "
                   "neither: 403 operator-api-disabled)"},
    errors={401: ("auth-missing", "auth-invalid"), 403: ("operator-api-disabled",)})
_NOT_READY = {503: ("database-unavailable",)}
DEAD_LETTER: Schema = {
    "type": "object",
    "required": ["message_id", "kind", "path", "attempts", "dead_at", "status", "response",
                 "requeues", "body"],
    "properties": {
        "message_id": {"type": "string", "format": "uuid"}, "kind": {"type": "string"},
        "path": {"type": "string"}, "attempts": {"type": "integer", "minimum": 0},
        "dead_at": TIMESTAMP, "status": nullable({"type": "integer"}),
        "response": {"type": "object", "description": "the peer's error body"},
        "requeues": {"type": "integer", "minimum": 0},
        "body": {"description": "the message as sent (JSON, or text)"}}}
OPERATIONS = (
    Operation("GET", DEAD_PATH, list_dead, "Messages the peer refused for good, newest first",
              "outbox", {200: Reply("dead letters", {
                  "type": "object", "required": ["dead"],
                  "properties": {"dead": {"type": "array", "items": DEAD_LETTER}}})},
              access=OUTBOX_OPERATOR,
              params=(Param("limit", "query", {"type": "integer", "minimum": 1,
                                               "maximum": 1000, "default": 100}),),
              errors={400: ("invalid-field",), **_NOT_READY}),
    Operation("POST", REQUEUE_PATH, requeue, "Send a dead message again (same id)", "outbox",
              {200: Reply("requeued", {
                  "type": "object", "required": ["message_id", "status"],
                  "properties": {"message_id": {"type": "string", "format": "uuid"},
                                 "status": {"const": "requeued"}}})},
              access=OUTBOX_OPERATOR,
              params=(Param("message_id", "path", {"type": "string"}, "the message id"),),
              errors={400: ("invalid-field",), 404: ("not-found",), **_NOT_READY}),
)


async def cli(database: DatabaseSettings, command: str, message_id: str | None = None,
              limit: int = 100) -> int:
    """``outbox dead`` / ``outbox requeue MESSAGE_ID`` against the site's database."""
    url = resolve_url(database.url, database.name)
    pool = await create_pool(url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            if command == "dead":
                for letter in await Outbox.dead_letters(conn, limit):
                    print(json.dumps(as_json(letter), ensure_ascii=False, default=str))
                return 0
            assert message_id is not None
            try:
                mid = _message_id(message_id)
            except ApiError as exc:
                print(f"outbox requeue: {exc.message}: {message_id!r}")
                return 2
            if not await Outbox.revive(conn, mid):
                print(f"outbox requeue: no dead message {mid}")
                return 1
            log.warning("dead letter %s requeued by an operator (command line)", mid)
            print(f"requeued {mid}")
            return 0
    finally:
        await pool.close()
