"""The signed HTTPS link between the sites: client, server middleware, idempotent receive.

Sending side: :class:`LinkClient` signs the raw body and POSTs it over one of
the configured routes (internet first, leased line as backup). Messages are
not sent directly by application code; they go through :mod:`shared.outbox`.

Receiving side: :func:`signature_middleware` verifies every request under
``/v1/link/`` before any handler sees it, and :func:`accept_once` makes the
handler idempotent by message id inside the handler's own transaction.

Client error tree (what the relay retries)::

    LinkError
      ├── LinkUnavailable   every route failed at the transport level or answered 5xx/429
      └── LinkRejected      the peer answered 4xx: our message or our keys are wrong
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from shared.config import LinkRoute
from shared.http import ApiError, Handler, error_response
from shared.signing import SignatureError, Signer, Verifier

log = logging.getLogger("shared.link")

LINK_PREFIX = "/v1/link/"
_MESSAGE_ID = web.RequestKey("link_message_id", str)
_RAW_BODY = web.RequestKey("link_raw_body", bytes)
VERIFIER_KEY = web.AppKey("link_verifier", Verifier)


class LinkError(Exception):
    pass


class LinkUnavailable(LinkError):
    pass


class LinkRejected(LinkError):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"peer refused the message with HTTP {status}: {body}")
        self.status = status
        self.body = body


@dataclass(frozen=True, slots=True)
class Delivery:
    status: int
    body: Any
    route: str
    elapsed_s: float


@dataclass
class _RouteHealth:
    failed_at: float = 0.0
    failures: int = 0


@dataclass
class LinkClient:
    """POSTs signed messages over the first healthy route.

    A route that failed is tried after the healthy ones for ``quarantine_s``;
    after that it is tried first again, which gives automatic failback.
    """

    routes: Sequence[LinkRoute]
    signer: Signer
    ssl_context: ssl.SSLContext | None
    timeout_s: float = 10.0
    connect_timeout_s: float = 3.0
    quarantine_s: float = 15.0
    _session: aiohttp.ClientSession | None = None
    _health: dict[str, _RouteHealth] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.routes:
            raise ValueError("a LinkClient needs at least one route")

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.ssl_context or False, limit=64)
            timeout = aiohttp.ClientTimeout(total=self.timeout_s,
                                            sock_connect=self.connect_timeout_s)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def ordered_routes(self) -> list[LinkRoute]:
        now = time.monotonic()

        def sick(route: LinkRoute) -> bool:
            h = self._health.get(route.name)
            return h is not None and h.failures > 0 and now - h.failed_at < self.quarantine_s

        return sorted(self.routes, key=sick)  # stable: configured order among equals

    async def post(self, path: str, body: bytes, message_id: str) -> Delivery:
        await self.start()
        assert self._session is not None
        errors: list[str] = []
        for route in self.ordered_routes():
            headers = self.signer.headers("POST", path, body, message_id=message_id)
            headers["content-type"] = "application/json"
            started = time.monotonic()
            try:
                async with self._session.post(route.url + path, data=body,
                                              headers=headers) as resp:
                    text = await resp.text()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self._mark(route, ok=False)
                errors.append(f"{route.name}: {type(exc).__name__}: {exc}")
                continue
            elapsed = time.monotonic() - started
            payload = _json_or_text(text)
            if status >= 500 or status == 429:
                self._mark(route, ok=False)
                errors.append(f"{route.name}: HTTP {status}")
                continue
            self._mark(route, ok=True)
            if status >= 400:
                raise LinkRejected(status, payload)
            return Delivery(status, payload, route.name, elapsed)
        raise LinkUnavailable("; ".join(errors))

    def _mark(self, route: LinkRoute, *, ok: bool) -> None:
        health = self._health.setdefault(route.name, _RouteHealth())
        if ok:
            health.failures = 0
        else:
            health.failures += 1
            health.failed_at = time.monotonic()


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"text": text[:500]}


# --- receiving side ----------------------------------------------------------------------


@web.middleware
async def signature_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Verify signatures on ``/v1/link/`` before the handler; 401 with a JSON error id."""
    if not request.path.startswith(LINK_PREFIX):
        return await handler(request)
    verifier = request.app[VERIFIER_KEY]
    body = await request.read()
    try:
        message_id = verifier.verify(request.method, request.raw_path, body, request.headers)
    except SignatureError as exc:
        log.warning("refused %s %s from %s: %s (%s)", request.method, request.path,
                    request.remote, exc.error_id, exc)
        return error_response(ApiError(401, exc.error_id, str(exc)))
    request[_MESSAGE_ID] = message_id
    request[_RAW_BODY] = body
    return await handler(request)


def message_id(request: web.Request) -> str:
    value = request.get(_MESSAGE_ID)
    if not isinstance(value, str):
        raise RuntimeError("message_id() on a request that did not pass signature_middleware")
    return value


def raw_body(request: web.Request) -> bytes:
    value = request.get(_RAW_BODY)
    if not isinstance(value, bytes):
        raise RuntimeError("raw_body() on a request that did not pass signature_middleware")
    return value


Answer = tuple[int, dict[str, Any]]


async def accept_once(conn: asyncpg.Connection, msg_id: str, kind: str,
                      handler: Callable[[asyncpg.Connection], Awaitable[Answer]]) -> Answer:
    """Run ``handler`` once per message id; repeats get the first answer back.

    Must be called inside a transaction on ``conn``, the same one in which the
    handler writes its facts, so the facts and the record of the message
    commit (or roll back) together. Two concurrent deliveries of one message
    (over both links) serialise on the primary key: the second waits for the
    first to commit and then returns its answer.
    """
    if not conn.is_in_transaction():
        raise RuntimeError("accept_once must run inside a transaction")
    claimed = await conn.fetchval(
        "INSERT INTO inbound_messages (message_id, kind, response_status, response_body) "
        "VALUES ($1, $2, 0, '{}'::jsonb) ON CONFLICT (message_id) DO NOTHING RETURNING true",
        msg_id, kind)
    if not claimed:
        row = await conn.fetchrow(
            "SELECT response_status, response_body FROM inbound_messages WHERE message_id = $1",
            msg_id)
        assert row is not None
        log.info("duplicate %s message %s: returning the first answer", kind, msg_id)
        return int(row["response_status"]), dict(row["response_body"])
    status, body = await handler(conn)
    await conn.execute(
        "UPDATE inbound_messages SET response_status = $2, response_body = $3 "
        "WHERE message_id = $1", msg_id, status, body)
    return status, body


async def purge_seen(conn: asyncpg.Connection, keep_s: int = 7 * 24 * 3600) -> int:
    """Forget message ids older than ``keep_s`` (at least 24 h). Returns rows deleted."""
    keep_s = max(keep_s, 24 * 3600)
    result = await conn.execute(
        "DELETE FROM inbound_messages WHERE received_at < now() - $1 * interval '1 second'",
        keep_s)
    return int(result.split()[-1])
