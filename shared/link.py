"""The signed HTTPS link between the sites: client, server middleware, idempotent receive.

Sending side: :class:`LinkClient` signs the raw body and POSTs it over the
routes chosen by the per-kind :class:`~shared.link_policy.LinkPolicy`
(``primary_backup`` with health probes and failback, ``both``, or ``pinned``).
Messages are not sent directly by application code; they go through
:mod:`shared.outbox`, which passes each row's ``kind``.

Batches: :func:`encode_batch` puts several messages, each with its own message
id, in one signed request to ``batch_path(path)``; the receiver answers each
on its own (:func:`parse_batch`, :func:`batch_answer`), and the relay settles
each on its own (:func:`parse_batch_answer`). See :mod:`shared.outbox`.

Peers are pinned: each site's certificate is issued for its name (``shared.pki``:
CN and a DNS name). The client sends every request for its peer's name
(``LinkClient(peer_identity=...)``: the TLS handshake fails unless the server's
certificate is the peer's, whatever the route's host), and the server takes link
requests only from a client certificate of its peer (:func:`pin_peer`; anyone
else, the site's own certificate included, gets 403 ``peer-not-allowed``).

Receiving side: :func:`signature_middleware` verifies every request under
``/v1/link/`` before any handler sees it (the peer's certificate, bounded body
size and body read time), :func:`accept_once` makes the handler idempotent by message id inside
the handler's own transaction, and :func:`serve_options` gives both servers
the same connection limits and timeouts (slow-loris protection).

Client error tree (what the relay retries)::

    LinkError
      ├── LinkUnavailable   no route got an answer (transport error, timeout)
      │     └── LinkBusy    the peer answered 5xx or 429 (with its Retry-After, if any)
      └── LinkRejected      the peer answered 4xx: our message or our keys are wrong
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from shared.access_log import AccessLogger
from shared.config import LinkRoute
from shared.http import ApiError, Handler, InvalidField, error_response
from shared.link_policy import (
    BATCH_MAX_MESSAGES,
    LinkMode,
    LinkPolicy,
    RouteBook,
    RouteStatus,
)
from shared.metrics import common as metrics
from shared.signing import MAX_MESSAGE_ID, SignatureError, Signer, Verifier
from shared.waits import cancel_and_wait

log = logging.getLogger("shared.link")

LINK_PREFIX = "/v1/link/"
#: the operator's outbox routes (:mod:`shared.outbox_operator`): bearer token, not signed
OPERATOR_PREFIX = "/v1/link/outbox/"
_MESSAGE_ID = web.RequestKey("link_message_id", str)
_RAW_BODY = web.RequestKey("link_raw_body", bytes)
VERIFIER_KEY = web.AppKey("link_verifier", Verifier)
#: the one client certificate identity the link routes take (see :func:`pin_peer`)
PEER_IDENTITY_KEY = web.AppKey("link_peer_identity", str)
BODY_TIMEOUT_KEY = web.AppKey("link_body_timeout_s", float)

#: Seconds a client has to send a whole request body once its headers are in.
DEFAULT_BODY_TIMEOUT_S = 10.0
#: Idle keep-alive time of the server; also its deadline for a request's headers.
SERVER_KEEPALIVE_S = 30.0
#: The client drops idle pooled connections sooner than the server would.
CLIENT_KEEPALIVE_S = 15.0


class LinkError(Exception):
    pass


class LinkUnavailable(LinkError):
    pass


class LinkBusy(LinkUnavailable):
    """The peer answered 5xx or 429: the route works, the peer cannot take the message
    now. ``retry_after_s``: its ``Retry-After`` in seconds (None: not given)."""

    def __init__(self, message: str, status: int, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


#: errno values of a connection that cannot be made at all (nothing listens, no route)
_REFUSED_ERRNOS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})


def connection_refused(exc: BaseException) -> bool:
    """Whether ``exc`` says the route is plainly not there: the connection was refused or
    unroutable, or the peer's certificate is not the pinned one. A timeout is not: a
    loaded machine is slow, not gone."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return True
    if isinstance(exc, aiohttp.ClientConnectorError):
        return exc.os_error.errno in _REFUSED_ERRNOS
    return isinstance(exc, ConnectionRefusedError)


def retry_after_s(value: str | None) -> float | None:
    """A ``Retry-After`` header's delay in seconds (the HTTP-date form is not used here)."""
    try:
        seconds = float(value) if value is not None else -1.0
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 86_400 else None


class LinkRejected(LinkError):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"peer refused the message with HTTP {status}: {body}")
        self.status = status
        self.body = body


class _RouteFailed(Exception):
    """One route got no answer: transport error or timeout (internal)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    status: int
    body: Any
    route: str
    elapsed_s: float


@dataclass
class LinkClient:
    """POSTs signed messages over the routes the policy picks for their kind.

    Without a ``policy`` every kind is ``primary_backup`` over ``routes`` in
    order, with health probes of ``GET /healthz`` every 5 s. :meth:`start`
    opens the session and starts the probes; :meth:`close` stops both.
    """

    routes: Sequence[LinkRoute]
    signer: Signer
    ssl_context: ssl.SSLContext | None
    timeout_s: float = 10.0
    connect_timeout_s: float = 3.0
    quarantine_s: float = 15.0
    policy: LinkPolicy = field(default_factory=LinkPolicy)
    max_connections: int = 64
    #: the peer's certificate identity: every https request is made for this name, so the
    #: handshake fails unless the server presents the peer's certificate (None: the URL's
    #: host name, as any HTTPS client)
    peer_identity: str | None = None
    _session: aiohttp.ClientSession | None = None
    _book: RouteBook = field(init=False)
    _probe_task: asyncio.Task[None] | None = None
    _background: set[asyncio.Task[Delivery]] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.routes:
            raise ValueError("a LinkClient needs at least one route")
        self._book = RouteBook(self.routes, self.policy, quarantine_s=self.quarantine_s)

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.ssl_context or False,
                                             limit=self.max_connections,
                                             keepalive_timeout=CLIENT_KEEPALIVE_S)
            timeout = aiohttp.ClientTimeout(total=self.timeout_s,
                                            sock_connect=self.connect_timeout_s)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        if self._probe_task is None and self.policy.health.enabled:
            self._probe_task = asyncio.create_task(self._probe_forever(), name="link probes")

    async def close(self) -> None:
        tasks = [t for t in (self._probe_task, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(Exception):   # its own failure: nobody waits for its answer now
                await cancel_and_wait(task)     # the caller's cancellation is passed on
        self._probe_task = None
        self._background.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- routes and health ---------------------------------------------------------------

    def ordered_routes(self, kind: str | None = None) -> list[LinkRoute]:
        """The routes a message of ``kind`` would use, in the order they are tried."""
        return self._book.plan(kind)[1]

    def route_status(self) -> dict[str, RouteStatus]:
        """Up/down and counters per route (for ``/healthz`` and tests)."""
        return self._book.status()

    async def probe_once(self) -> dict[str, bool]:
        """Probe every route now; returns ``{route: ok}`` (also fed to the health book)."""
        names = [r.name for r in self.routes]
        results = await asyncio.gather(*(self._probe(r) for r in self.routes))
        return dict(zip(names, results, strict=True))

    async def _probe_forever(self) -> None:
        interval = self.policy.health.interval_s
        while True:
            started = time.monotonic()
            await self.probe_once()
            await asyncio.sleep(max(0.05, interval - (time.monotonic() - started)))

    async def _probe(self, route: LinkRoute) -> bool:
        await self.start()
        assert self._session is not None
        health = self.policy.health
        try:
            async with self._session.get(route.url + health.path,
                                         timeout=aiohttp.ClientTimeout(total=health.timeout_s),
                                         server_hostname=self._tls_name(route)) as resp:
                await resp.read()
                ok, detail = True, f"HTTP {resp.status}"  # the peer answered over the route
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
            self._book.probed(route.name, ok, detail, refused=connection_refused(exc))
            return ok
        self._book.probed(route.name, ok, detail)
        return ok

    # --- sending -------------------------------------------------------------------------

    async def post(self, path: str, body: bytes, message_id: str, *,
                   kind: str | None = None, timeout_s: float | None = None) -> Delivery:
        """Deliver one message by the policy for ``kind``.

        Returns the first acknowledgement (2xx/3xx); raises :class:`LinkRejected`
        on a 4xx, :class:`LinkBusy` when the peer answered 5xx or 429 (the other routes
        reach the same peer: not tried) and :class:`LinkUnavailable` when no route got
        an answer. ``timeout_s``: each route's time for an answer (and to connect), when
        shorter than the client's (a caller on the line waits for this one).
        """
        await self.start()
        mode, routes = self._book.plan(kind)
        limits = None if timeout_s is None else aiohttp.ClientTimeout(
            total=timeout_s, sock_connect=min(timeout_s, self.connect_timeout_s))
        if mode is LinkMode.BOTH and len(routes) > 1:
            return await self._post_concurrently(routes, path, body, message_id, limits)
        errors: list[str] = []
        for route in routes:
            try:
                return await self._post_one(route, path, body, message_id, limits)
            except _RouteFailed as exc:
                errors.append(str(exc))
        raise LinkUnavailable("; ".join(errors))

    async def _post_concurrently(self, routes: Sequence[LinkRoute], path: str, body: bytes,
                                 message_id: str, limits: aiohttp.ClientTimeout | None
                                 ) -> Delivery:
        tasks = [asyncio.create_task(self._post_one(r, path, body, message_id, limits),
                                     name=f"link post {r.name}") for r in routes]
        errors: list[str] = []
        rejected: LinkRejected | None = None
        busy: LinkBusy | None = None
        try:
            for next_done in asyncio.as_completed(tasks):
                try:
                    return await next_done
                except _RouteFailed as exc:
                    errors.append(str(exc))
                except LinkRejected as exc:
                    rejected = rejected or exc
                except LinkBusy as exc:
                    busy = busy or exc
        finally:
            for task in tasks:
                if not task.done():  # the slower route finishes in the background
                    self._background.add(task)
                    task.add_done_callback(self._forget)
        if rejected is not None:
            raise rejected
        if busy is not None:
            raise busy
        raise LinkUnavailable("; ".join(errors))

    def _tls_name(self, route: LinkRoute) -> str | None:
        return self.peer_identity if route.url.startswith("https:") else None

    def _forget(self, task: asyncio.Task[Delivery]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the route's health was already recorded

    async def _post_one(self, route: LinkRoute, path: str, body: bytes, message_id: str,
                        limits: aiohttp.ClientTimeout | None = None) -> Delivery:
        assert self._session is not None
        headers = self.signer.headers("POST", path, body, message_id=message_id)
        headers["content-type"] = "application/json"
        started = time.monotonic()
        self._book.attempt(route.name)
        try:
            async with self._session.post(route.url + path, data=body, headers=headers,
                                          server_hostname=self._tls_name(route),
                                          timeout=limits or self._session.timeout) as resp:
                text = await resp.text()
                status = resp.status
                retry_after = retry_after_s(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{route.name}: {type(exc).__name__}: {exc}"
            self._book.failed(route.name, error, refused=connection_refused(exc))
            metrics().link_requests.labels(route.name, "failed").inc()
            raise _RouteFailed(error) from exc
        elapsed = time.monotonic() - started
        payload = _json_or_text(text)
        if status >= 500 or status == 429:
            self._book.reachable(route.name)
            metrics().link_requests.labels(route.name, "busy").inc()
            raise LinkBusy(f"{route.name}: HTTP {status}" + (
                f" (retry after {retry_after:g} s)" if retry_after is not None else ""),
                status, retry_after)
        if status >= 400:
            self._book.reachable(route.name)
            metrics().link_requests.labels(route.name, "rejected").inc()
            raise LinkRejected(status, payload)
        self._book.delivered(route.name)
        metrics().link_requests.labels(route.name, "ok").inc()
        return Delivery(status, payload, route.name, elapsed)


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"text": text[:500]}


# --- receiving side ----------------------------------------------------------------------


def serve_options(*, keepalive_timeout_s: float = SERVER_KEEPALIVE_S,
                  shutdown_timeout_s: float = 15.0) -> dict[str, Any]:
    """Keyword arguments for ``web.run_app(...)`` or ``web.AppRunner(app, ...)``.

    What each protects against:

    * ``keepalive_timeout``: aiohttp arms this timer when a connection opens
      and after each response, and does not re-arm it while request headers
      trickle in. So it is both the idle keep-alive time and the deadline for a
      complete request head: a slow-loris client that dribbles headers is
      disconnected after it. (The body has its own deadline, see
      :func:`signature_middleware`.) Keep the client's keep-alive shorter
      (:data:`CLIENT_KEEPALIVE_S`) so the client never reuses a connection
      the server is closing.
    * ``max_line_size`` / ``max_field_size`` / ``max_headers``: a link request
      has a dozen short headers; anything bigger is refused with 400.
    * ``lingering_time``: after refusing a body (413) the server reads and
      discards at most this long, then closes.
    * ``shutdown_timeout``: in-flight requests get this long on SIGTERM.
    * ``access_log_class``: the access log's line leaves out the secrets a path holds
      (a page link's token, a recording link's signature), :mod:`shared.access_log`.

    Other clients are not blocked by a slow or huge request in any case: each
    connection is its own task on the event loop.
    """
    return {
        "keepalive_timeout": keepalive_timeout_s,
        "max_line_size": 8190,
        "max_field_size": 8190,
        "max_headers": 64,
        "lingering_time": 2.0,
        "shutdown_timeout": shutdown_timeout_s,
        "access_log_class": AccessLogger,
    }


def _too_large(request: web.Request) -> ApiError | None:
    limit = request.app._client_max_size
    declared = request.content_length
    if declared is not None and limit and declared > limit:
        return ApiError(413, "body-too-large",
                        f"request body of {declared} bytes exceeds {limit} bytes")
    return None


def pin_peer(app: web.Application, identity: str | None) -> None:
    """Take link requests only from a client certificate issued for ``identity`` (its CN or
    a DNS name; ``shared.pki`` issues both as the site's name). None: no pin (plain HTTP)."""
    if identity:
        app[PEER_IDENTITY_KEY] = identity


def certificate_names(peercert: Any) -> set[str]:
    """The CN and DNS names of a verified peer certificate (``SSLSocket.getpeercert()``)."""
    if not isinstance(peercert, dict):
        return set()
    names = {value for rdn in peercert.get("subject", ()) for key, value in rdn
             if key == "commonName"}
    names |= {value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS"}
    return names


def _not_the_peer(request: web.Request) -> ApiError | None:
    expected = request.app.get(PEER_IDENTITY_KEY)
    if expected is None:
        return None
    transport = request.transport
    names = certificate_names(None if transport is None
                              else transport.get_extra_info("peercert"))
    if expected in names:
        return None
    log.warning("refused %s %s from %s: client certificate %s is not the peer %r",
                request.method, request.path, request.remote, sorted(names) or "(none)",
                expected)
    return ApiError(403, "peer-not-allowed",
                    f"the link takes only the certificate of {expected!r}")


@web.middleware
async def signature_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Verify signatures on ``/v1/link/`` before the handler; 401 with a JSON error id.

    With :func:`pin_peer`, a client whose certificate is not the peer's gets 403
    ``peer-not-allowed`` first. The operator's routes under ``/v1/link/outbox/`` are
    not link messages: they are left to their bearer token (:mod:`shared.outbox_operator`).

    A declared ``Content-Length`` above the application's ``client_max_size``
    is refused with 413 before any of the body is read; a body that arrives
    slower than ``app[BODY_TIMEOUT_KEY]`` seconds (default
    :data:`DEFAULT_BODY_TIMEOUT_S`) gets 408 ``body-timeout``.
    """
    if not request.path.startswith(LINK_PREFIX) or request.path.startswith(OPERATOR_PREFIX):
        return await handler(request)
    stranger = _not_the_peer(request)
    if stranger is not None:
        return error_response(stranger)
    too_large = _too_large(request)
    if too_large is not None:
        return error_response(too_large)
    verifier = request.app[VERIFIER_KEY]
    if request.content.is_eof():  # the whole body came with the head: nothing to wait for
        body = await request.read()
    else:
        timeout_s = request.app.get(BODY_TIMEOUT_KEY, DEFAULT_BODY_TIMEOUT_S)
        try:
            async with asyncio.timeout(timeout_s):
                body = await request.read()
        except TimeoutError:
            log.warning("refused %s %s from %s: body not received within %.0f s",
                        request.method, request.path, request.remote, timeout_s)
            response = error_response(ApiError(408, "body-timeout",
                                               f"request body not received within {timeout_s} s"))
            response.force_close()
            return response
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
        answer = await first_answer(conn, msg_id)
        assert answer is not None
        log.info("duplicate %s message %s: returning the first answer", kind, msg_id)
        return answer
    status, body = await handler(conn)
    await conn.execute(
        "UPDATE inbound_messages SET response_status = $2, response_body = $3 "
        "WHERE message_id = $1", msg_id, status, body)
    return status, body


async def first_answer(conn: asyncpg.Connection, msg_id: str) -> Answer | None:
    """The answer stored for a message id claimed before (None: never claimed)."""
    row = await conn.fetchrow(
        "SELECT response_status, response_body FROM inbound_messages WHERE message_id = $1",
        msg_id)
    return None if row is None else (int(row["response_status"]), dict(row["response_body"]))


# --- batches: several messages in one signed request -------------------------------------

#: The batch route of a message path: ``/v1/link/callbacks`` -> ``/v1/link/callbacks/batch``.
BATCH_SUFFIX = "/batch"


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One message of a batch request: its own id (deduplicated like a single message's) and
    the JSON object a single request to the message path would carry as its body."""

    message_id: str
    body: dict[str, Any]


def batch_path(path: str) -> str:
    return path.rstrip("/") + BATCH_SUFFIX


def encode_batch(messages: Sequence[tuple[str, bytes]]) -> bytes:
    """The body of a batch request, from ``(message id, encoded JSON object)`` pairs.

    The bodies are spliced in as they are (the outbox's stored bytes), not re-encoded::

        {"messages": [{"message_id": "...", "body": {...}}, ...]}
    """
    parts = [b'{"message_id":' + json.dumps(mid).encode() + b',"body":' + body + b"}"
             for mid, body in messages]
    return b'{"messages":[' + b",".join(parts) + b"]}"


def parse_batch(data: Any, *, max_messages: int = BATCH_MAX_MESSAGES) -> list[BatchItem]:
    """The messages of a parsed batch body; 400 ``invalid-field`` naming the first bad one.

    Refused as a whole: no ``messages`` list, none or more than ``max_messages``
    messages, an item without a ``message_id`` (a string of 1 to 128 characters)
    or without a ``body`` object, or one id twice. Whether each body is a valid
    message is for the handler of the message path to say, message by message.
    """
    messages = data.get("messages") if isinstance(data, dict) else None
    if not isinstance(messages, list):
        raise InvalidField("messages", "required list of {message_id, body}")
    if not 1 <= len(messages) <= max_messages:
        raise InvalidField("messages", f"must hold 1 to {max_messages} messages, "
                                       f"not {len(messages)}")
    items: list[BatchItem] = []
    seen: set[str] = set()
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidField(where, "expected an object {message_id, body}")
        mid = message.get("message_id")
        if not isinstance(mid, str) or not 1 <= len(mid) <= MAX_MESSAGE_ID \
                or not mid.isprintable():
            raise InvalidField(f"{where}.message_id",
                               f"required string of 1 to {MAX_MESSAGE_ID} printable characters")
        if mid in seen:
            raise InvalidField(f"{where}.message_id", f"{mid!r} appears twice in this batch")
        seen.add(mid)
        body = message.get("body")
        if not isinstance(body, dict):
            raise InvalidField(f"{where}.body", "expected a JSON object")
        items.append(BatchItem(mid, body))
    return items


def batch_answer(items: Sequence[BatchItem], answers: Sequence[Answer]) -> dict[str, Any]:
    """The body of a batch's ``200``: each message's own status and answer, in order."""
    return {"results": [{"message_id": item.message_id, "status": status, "body": body}
                        for item, (status, body) in zip(items, answers, strict=True)]}


def batch_schema(body: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of a batch request whose messages' bodies are ``body``."""
    return {
        "type": "object", "required": ["messages"],
        "properties": {"messages": {
            "type": "array", "minItems": 1, "maxItems": BATCH_MAX_MESSAGES,
            "items": {"type": "object", "required": ["message_id", "body"],
                      "properties": {"message_id": {"type": "string", "minLength": 1,
                                                    "maxLength": MAX_MESSAGE_ID},
                                     "body": body}}}}}


def batch_answer_schema(answer: str) -> dict[str, Any]:
    """The JSON Schema of a batch's ``200``; ``answer`` names what a single request to the
    message path answers."""
    return {
        "type": "object", "required": ["results"],
        "properties": {"results": {"type": "array", "items": {
            "type": "object", "required": ["message_id", "status", "body"],
            "properties": {"message_id": {"type": "string"}, "status": {"type": "integer"},
                           "body": {"type": "object", "description": "what a single request "
                                    f"would have answered: {answer} or an Error"}}}}}}


def parse_batch_answer(body: Any) -> dict[str, Answer]:
    """Answers by message id from a batch's ``200``; items that are malformed are left out
    (the sender retries those messages)."""
    results = body.get("results") if isinstance(body, dict) else None
    answers: dict[str, Answer] = {}
    for result in results if isinstance(results, list) else ():
        if not isinstance(result, dict):
            continue
        mid, status, answer = result.get("message_id"), result.get("status"), result.get("body")
        if isinstance(mid, str) and isinstance(status, int) and isinstance(answer, dict):
            answers[mid] = (status, answer)
    return answers


MIN_KEEP_SEEN_S = 24 * 3600


async def purge_seen(conn: asyncpg.Connection, keep_s: int = 7 * 24 * 3600, *,
                     batch: int = 10_000) -> int:
    """Forget message ids older than ``keep_s`` (never less than 24 h). Returns rows deleted.

    Deletes in batches of ``batch`` rows, each its own statement, so a large
    backlog never holds long locks. Ids younger than 24 h are never deleted,
    whatever ``keep_s`` says: the sender may still retry them.
    """
    keep_s = max(int(keep_s), MIN_KEEP_SEEN_S)
    total = 0
    while True:
        result: str = await conn.execute(
            "DELETE FROM inbound_messages WHERE message_id IN ("
            "  SELECT message_id FROM inbound_messages"
            "  WHERE received_at < now() - $1 * interval '1 second' LIMIT $2)",
            keep_s, batch)
        deleted = int(result.split()[-1])
        total += deleted
        if deleted < batch:
            break
    if total:
        log.info("forgot %d received message ids older than %d s", total, keep_s)
    return total
