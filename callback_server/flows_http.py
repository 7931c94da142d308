"""The merchant's IVR flows over HTTP (the merchant's bearer token selects the tenant; all
declared as :class:`shared.openapi.Operation`):

* ``POST /v1/ivr/flows?file=&author=``: the body is the flow's TOML text (UTF-8); it is
  validated and stored as the next version: 201 new, 200 when this very text is already a
  version (its number); 400 ``invalid-flow`` with ``file``, ``line`` and ``node``
* ``POST /v1/ivr/flows/validate?file=``: the same checks, nothing stored (dry run)
* ``GET /v1/ivr/flows``: the versions, newest first, and which one is active
* ``GET /v1/ivr/flows/{version}``: one version with its text
* ``POST /v1/ivr/flows/{version}/activate?author=``: new rounds of the merchant's
  call-backs run it (on every process of the site within about a second,
  :mod:`callback_server.active_flows`); rounds already running keep theirs

Error ids: ``invalid-flow`` (400), ``invalid-field`` (400, with ``field``), ``not-found``
(404), ``flow-too-large`` (413), ``auth-*`` (401), ``flows-unavailable`` (503 before the
database is connected), ``database-unavailable`` (503 while it is away).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable

import asyncpg
from aiohttp import web

from callback_server.flows_store import (
    MAX_FLOW_BYTES,
    FlowStore,
    Prepare,
    SiteCheck,
    valid_json,
    versions_json,
)
from shared.http import (
    ApiError,
    InvalidField,
    authenticated_merchant,
    database_errors_as_503,
    json_response,
    started,
)
from shared.openapi import (
    MERCHANT,
    TIMESTAMP,
    Operation,
    Param,
    Reply,
    Schema,
    add_operations,
    nullable,
    string,
)

STORE_KEY = web.AppKey("ivr_flow_store", FlowStore)
FILE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
AUTHOR = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")
DEFAULT_FILE = "flow.toml"


def install(app: web.Application, pool: Callable[[web.Application], asyncpg.Pool],
            site_check: SiteCheck = lambda merchant, flow: (),
            prepare: Prepare | None = None) -> None:
    """Mount the routes; the store opens on ``pool(app)`` at start-up (after the
    database's ``cleanup_ctx``)."""
    add_operations(app, OPERATIONS)

    async def flows_ctx(app: web.Application) -> AsyncIterator[None]:
        app[STORE_KEY] = FlowStore(pool(app), site_check, prepare)
        yield

    app.cleanup_ctx.append(flows_ctx)


def _store(request: web.Request) -> FlowStore:
    return started(request, STORE_KEY, "flows-unavailable")


def _query(request: web.Request, name: str, default: str, pattern: re.Pattern[str]) -> str:
    value = request.query.get(name, default)
    if not pattern.fullmatch(value):
        raise InvalidField(name, f"expected {pattern.pattern}")
    return value


def _file(request: web.Request) -> str:
    return _query(request, "file", DEFAULT_FILE, FILE)


def _author(request: web.Request) -> str:
    return _query(request, "author", "api", AUTHOR)


def _version(request: web.Request) -> int:
    text = request.match_info["version"]
    if not (text.isascii() and text.isdigit() and len(text) <= 9 and int(text) > 0):
        raise InvalidField("version", "expected a version number 1..999999999")
    return int(text)


async def _text(request: web.Request) -> str:
    """The body as text: 413 past :data:`MAX_FLOW_BYTES`, 400 when it is not UTF-8."""
    if request.content_length is not None and request.content_length > MAX_FLOW_BYTES:
        raise _too_large()
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_FLOW_BYTES:
            raise _too_large()
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid-flow", f"{_file(request)}: not UTF-8 text "
                       f"(byte {exc.start})", file=_file(request), line=None,
                       node=None) from None


def _too_large() -> ApiError:
    return ApiError(413, "flow-too-large", f"a flow is at most {MAX_FLOW_BYTES} bytes")


@database_errors_as_503
async def upload_flow(request: web.Request) -> web.Response:
    """Store a flow (its TOML text as the body) as the merchant's next version, once it
    validates: the node types and keys, every target, every node reachable, no loop
    without a way out, the confirm gate the site requires and the prompts it plays.
    Uploading a text that is already a version answers that version (200)."""
    merchant = authenticated_merchant(request)
    store = _store(request)
    file, author = _file(request), _author(request)
    version, created = await store.upload(merchant, await _text(request), file, author)
    return json_response(version.to_json(), status=201 if created else 200)


async def validate_flow(request: web.Request) -> web.Response:
    """Validate a flow as an upload would, store nothing (dry run)."""
    merchant = authenticated_merchant(request)
    file = _file(request)
    flow = await _store(request).checked(merchant, await _text(request), file)
    return json_response(valid_json(flow))


@database_errors_as_503
async def list_flows(request: web.Request) -> web.Response:
    """The merchant's flow versions, newest first, and the active one (null: its rounds
    run the flow configured for it, ``[[merchants]] ivr_flow``)."""
    merchant = authenticated_merchant(request)
    return json_response(versions_json(await _store(request).list(merchant)))


@database_errors_as_503
async def get_flow(request: web.Request) -> web.Response:
    """One version of the merchant's flow, with its text."""
    merchant = authenticated_merchant(request)
    number = _version(request)
    found = await _store(request).get(merchant, number)
    if found is None:
        raise ApiError(404, "not-found", f"no flow version {number}")
    return json_response(found.to_json(with_source=True))


@database_errors_as_503
async def activate_flow(request: web.Request) -> web.Response:
    """Make a version the merchant's active flow: one row flipped; the previous version
    stays (activate it again to roll back). Rounds that start from now on run it; rounds
    already running keep the flow they started with. The site's checks run again first
    (400 ``invalid-flow`` if a prompt or guidance it plays is gone)."""
    merchant = authenticated_merchant(request)
    number = _version(request)
    found = await _store(request).activate(merchant, number, _author(request))
    return json_response(found.to_json())


# --- declarations -----------------------------------------------------------------------

VERSION: Schema = {
    "type": "object",
    "required": ["merchant_id", "version", "name", "sha256", "filename", "created_by",
                 "created_at", "active"],
    "properties": {
        "merchant_id": {"type": "string"}, "version": {"type": "integer", "minimum": 1},
        "name": {"type": "string", "description": "the flow's own name"},
        "sha256": {"type": "string", "description": "of the text's UTF-8 bytes, hex"},
        "filename": {"type": "string"}, "created_by": {"type": "string"},
        "created_at": TIMESTAMP, "active": {"type": "boolean"},
        "source": {"type": "string", "description": "the TOML text (one version only)"}}}
TOML: Schema = {"type": "string", "description": "the flow, TOML (callback_server.ivr_flow)"}
_FILE = Param("file", "query", string(128, pattern=FILE.pattern),
              f"the name its errors are reported under (default {DEFAULT_FILE})")
_AUTHOR = Param("author", "query", string(128), "who uploads or activates (default api)")
_VERSION = Param("version", "path", {"type": "integer", "minimum": 1, "maximum": 999999999})
_TAG = "ivr flows"
_INVALID = {400: ("invalid-flow",), 413: ("flow-too-large",)}
_UNAVAILABLE = {503: ("flows-unavailable", "database-unavailable")}
_EXAMPLE = """name = "short"
start = "main"

[nodes.main]
type = "menu"
prompt = ["sound:cbgw/welcome-menu"]
choices = { "0" = "operator", "9" = "main" }
on_fail = "goodbye"

[nodes.operator]
type = "operator"
target = "operator"
on_fail = "goodbye"

[nodes.goodbye]
type = "hangup"
prompt = ["sound:cbgw/goodbye"]
"""

OPERATIONS = [
    Operation("POST", "/v1/ivr/flows", upload_flow, "Upload a flow version", _TAG,
              {200: Reply("this text is already that version", VERSION),
               201: Reply("stored as a new version", VERSION)},
              access=MERCHANT, params=(_FILE, _AUTHOR), body=TOML, body_type="text/plain",
              examples={"flow": _EXAMPLE}, errors={**_INVALID, **_UNAVAILABLE}),
    Operation("POST", "/v1/ivr/flows/validate", validate_flow, "Validate a flow (dry run)",
              _TAG, {200: Reply("valid", {
                  "type": "object", "required": ["valid", "name", "start", "nodes"],
                  "properties": {"valid": {"const": True}, "name": {"type": "string"},
                                 "start": {"type": "string"},
                                 "nodes": {"type": "array", "items": {"type": "string"}}}})},
              access=MERCHANT, params=(_FILE,), body=TOML, body_type="text/plain",
              examples={"flow": _EXAMPLE}, errors={**_INVALID, 503: ("flows-unavailable",)}),
    Operation("GET", "/v1/ivr/flows", list_flows, "The merchant's flow versions", _TAG,
              {200: Reply("newest first", {
                  "type": "object", "required": ["active", "items"],
                  "properties": {"active": nullable({"type": "integer"}),
                                 "items": {"type": "array", "items": VERSION}}})},
              access=MERCHANT, errors=_UNAVAILABLE),
    Operation("GET", "/v1/ivr/flows/{version}", get_flow, "One flow version", _TAG,
              {200: Reply("with its text", VERSION)}, access=MERCHANT, params=(_VERSION,),
              errors={404: ("not-found",), **_UNAVAILABLE}),
    Operation("POST", "/v1/ivr/flows/{version}/activate", activate_flow,
              "Activate a flow version", _TAG, {200: Reply("now active", VERSION)},
              access=MERCHANT, params=(_VERSION, _AUTHOR),
              errors={400: ("invalid-flow",), 404: ("not-found",), **_UNAVAILABLE}),
]
