"""HTTP conventions shared by both servers.

Every error leaves as JSON with a stable id::

    {"error": {"id": "invalid-field", "message": "caller: not an E.164 number", "field": "caller"}}

Handlers raise :class:`ApiError` (or a subclass); :func:`error_middleware`
renders it, and also turns aiohttp's own exceptions (413 body too large, 404,
405) and unexpected crashes into the same shape. Bodies are capped with the
application's ``client_max_size`` (:data:`MAX_BODY_BYTES` by default).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from aiohttp import web

from shared.access_log import logged_path
from shared.db import CONNECTION_ERRORS
from shared.timeutil import TimestampError, parse_timestamp

_T = TypeVar("_T")

log = logging.getLogger("shared.http")

MAX_BODY_BYTES = 64 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error with an HTTP status and a stable machine-readable id."""

    def __init__(self, status: int, error_id: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.status = status
        self.error_id = error_id
        self.message = message
        self.fields = fields

    def body(self) -> dict[str, Any]:
        return {"error": {"id": self.error_id, "message": self.message, **self.fields}}


class InvalidField(ApiError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(400, "invalid-field", f"{field}: {message}", field=field)


class Unauthorized(ApiError):
    def __init__(self, error_id: str, message: str) -> None:
        super().__init__(401, error_id, message)


class ServiceUnavailable(ApiError):
    def __init__(self, error_id: str, message: str, retry_after_s: int = 5) -> None:
        super().__init__(503, error_id, message, retry_after_s=retry_after_s)


def started(request: web.Request, key: web.AppKey[_T], error_id: str) -> _T:
    """What a part put in the app when it started (a store on the database's pool):
    503 ``error_id`` (with Retry-After) until it has, e.g. while the database is not
    connected yet."""
    value = request.app.get(key)
    if value is None:
        raise ServiceUnavailable(error_id, "database not connected yet")
    return value


#: what every JSON answer says besides its type: a browser never reads it as anything
#: else (sniffing a value it echoes as HTML, or running it as a script) nor shows it as a
#: page (no framing, nothing loaded)
JSON_HEADERS = {"X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'"}


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None
                  ) -> web.Response:
    try:
        data = json.dumps(body, default=str, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a message echoing header bytes the server could not decode
        data = json.dumps(body, default=str).encode()
    return web.Response(body=data, status=status, content_type="application/json",
                        charset="utf-8", headers={**JSON_HEADERS, **(headers or {})})


def error_response(error: ApiError) -> web.Response:
    headers = {}
    if error.status == 503:
        headers["Retry-After"] = str(error.fields.get("retry_after_s", 5))
    return json_response(error.body(), status=error.status, headers=headers)


_HTTP_IDS = {400: "bad-request", 404: "not-found", 405: "method-not-allowed",
             413: "body-too-large", 415: "unsupported-media-type"}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if "%00" in request.raw_path:
            _refuse_nul(request)
        return await handler(request)
    except ApiError as exc:
        if exc.status >= 500:
            log.warning("%s %s -> %s %s", request.method, logged_path(request), exc.status,
                        exc.error_id)
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error_id = _HTTP_IDS.get(exc.status, f"http-{exc.status}")
        message = exc.text or exc.reason
        if exc.status == 413:
            message = f"request body exceeds {request.app._client_max_size} bytes"
        return error_response(ApiError(exc.status, error_id, message))
    except Exception:
        log.exception("unhandled error in %s %s", request.method, logged_path(request))
        return error_response(ApiError(500, "internal-error", "internal error"))


#: escapes a stored string cannot hold: NUL (PostgreSQL text refuses it) and surrogates
#: (paired ones are fine; an unpaired one cannot be encoded as UTF-8)
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def parse_json(raw: bytes) -> Any:
    """JSON from a request (a body, a cursor); 400 ``invalid-json`` for anything that is not
    JSON, including nesting too deep for the parser, and for strings holding NUL or an
    unpaired surrogate (no text column or UTF-8 encoder takes them)."""
    try:
        data = json.loads(raw)
    except ValueError as exc:  # undecodable, not JSON, or an integer of over 4,300 digits
        raise ApiError(400, "invalid-json", f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "invalid-json", "body is not valid JSON: nested too deeply") \
            from None
    if _SUSPECT_ESCAPE.search(raw) and not _storable(data):
        raise ApiError(400, "invalid-json", "body holds a string with NUL (\\u0000) or an "
                                            "unpaired surrogate")
    return data


def _storable(data: Any) -> bool:
    """No string in ``data`` (keys included) holds NUL or an unpaired surrogate."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and ("\x00" in item or not _encodable(item)):
            return False
    return True


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A JSON object body; 400 ``invalid-json`` otherwise."""
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise ApiError(400, "invalid-json", "body must be a JSON object")
    return data


def _refuse_nul(request: web.Request) -> None:
    """400 ``invalid-field`` for a path or query parameter holding NUL (no text column takes
    it)."""
    for name, value in (*request.match_info.items(), *request.query.items()):
        if "\x00" in name or "\x00" in value:
            raise InvalidField(name.replace("\x00", "\\x00"), "must not hold NUL (%00)")


async def read_json_object(request: web.Request, body: bytes | None = None) -> dict[str, Any]:
    """Parse a JSON object body; 400 ``invalid-json`` otherwise."""
    return parse_json_object(body if body is not None else await request.read())


def require_str(data: Mapping[str, Any], field: str, *, max_len: int = 256,
                optional: bool = False) -> str:
    value = data.get(field)
    if value is None and optional:
        return ""
    if not isinstance(value, str) or not value:
        raise InvalidField(field, "required string")
    if len(value) > max_len:
        raise InvalidField(field, f"longer than {max_len} characters")
    return value


def require_timestamp(data: Mapping[str, Any], field: str) -> datetime:
    """An ISO 8601 field with a zone, in UTC (:func:`shared.timeutil.parse_timestamp`);
    400 ``invalid-field`` naming it otherwise."""
    value = data.get(field)
    if not isinstance(value, str):
        raise InvalidField(field, "required ISO 8601 timestamp")
    try:
        return parse_timestamp(value, field)
    except TimestampError as exc:
        raise InvalidField(field, exc.reason) from None


def optional_timestamp(data: Mapping[str, Any], field: str) -> datetime | None:
    """:func:`require_timestamp`, or ``None`` when the field is absent or null."""
    return None if data.get(field) is None else require_timestamp(data, field)


def query_int(query: Mapping[str, str], name: str, *, low: int, high: int, default: int
              ) -> int:
    """An integer query parameter of ASCII digits in ``low..high``; 400 ``invalid-field``
    naming it otherwise."""
    text = query.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(high))
            and low <= int(text) <= high):
        raise InvalidField(name, f"expected an integer {low}..{high}")
    return int(text)


def database_errors_as_503(handler: Handler) -> Handler:
    """``handler`` with the database away answered 503 ``database-unavailable`` (with
    Retry-After: the client retries) instead of 500."""
    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except CONNECTION_ERRORS as exc:
            log.warning("%s %s: database unavailable: %s", request.method, logged_path(request),
                        exc)
            raise ServiceUnavailable("database-unavailable", "database unavailable; retry"
                                     ) from None
    return guarded


# --- API authentication ----------------------------------------------------------------


def bearer_token(request: web.Request, what: str = "token") -> str:
    """The token of ``Authorization: Bearer <token>``; 401 ``auth-missing`` without the
    header, ``auth-invalid`` for another scheme or a token that is not printable ASCII
    (a token is ASCII, RFC 6750, and its digest is of those bytes)."""
    header = request.headers.get("Authorization", "")
    if not header:
        raise Unauthorized("auth-missing", f"Authorization: Bearer <{what}> is required")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or not (token.isascii() and token.isprintable()):
        raise Unauthorized("auth-invalid", f"expected Authorization: Bearer <{what}>")
    return token


def token_digest(token: str) -> bytes:
    """The hex SHA-256 of a token from :func:`bearer_token`, as configured."""
    return hashlib.sha256(token.encode("ascii")).hexdigest().encode()


class MerchantTokens:
    """Bearer token → merchant id. Only SHA-256 digests are configured; compared in
    constant time, and every digest is compared so timing says nothing about which."""

    def __init__(self, digests: Sequence[tuple[str, str | None]]) -> None:
        """``digests``: (merchant id, hex SHA-256 of its token, or None for no API access)."""
        self._digests = [(d.encode(), mid) for mid, d in digests if d]

    def merchant_for(self, token: str) -> str | None:
        digest = token_digest(token)
        found = None
        for expected, merchant_id in self._digests:
            if hmac.compare_digest(digest, expected):
                found = merchant_id
        return found


TOKENS_KEY = web.AppKey("merchant_tokens", MerchantTokens)


def authenticated_merchant(request: web.Request) -> str:
    """The merchant whose ``Authorization: Bearer <token>`` this is; 401 otherwise."""
    merchant_id = request.app[TOKENS_KEY].merchant_for(bearer_token(request))
    if merchant_id is None:
        raise Unauthorized("auth-invalid", "unknown API token")
    return merchant_id


# --- health ----------------------------------------------------------------------------


@dataclass
class Health:
    """Live facts for ``/healthz``, filled in by the composition root."""

    ari_state: Callable[[], str] = field(default=lambda: "not started")
    extra: Callable[[], Mapping[str, Any]] = field(default=lambda: {})


HEALTH_KEY = web.AppKey("health", Health)
