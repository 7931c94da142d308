"""Routes declared once, next to their handlers; the router and ``GET /openapi.json`` are
built from the same declarations, so the document cannot leave a route out.

A module declares each route as an :class:`Operation` (method, path, handler, who may
call it, parameters, request body JSON Schema, replies, error ids) and registers it with
:func:`add_operations`, which adds the route to the router and records the operation on
the application. :func:`serve_openapi` adds ``GET /openapi.json``, rendered on each
request from what the application holds then, so routes mounted later (the guard's,
the rates') are in it::

    add_operations(app, [
        Operation("GET", "/v1/things/{id}", get_thing, "One thing", access=MERCHANT,
                  params=(Param("id", "path", {"type": "string"}),),
                  replies={200: Reply("the thing", THING)}, errors={404: ("not-found",)}),
    ])

Error replies share one ``Error`` schema (``{"error": {"id", "message", ...}}``, see
:mod:`shared.http`); each operation lists, per status, the ids it can answer with
(``x-error-ids``, and an ``enum`` on ``error.id``). The ids that come with the route's
access (``auth-*``, ``signature-*``, ``operator-api-disabled``) and with a request body
(``invalid-json``, ``body-too-large``) and with parameters (``invalid-field``) are added
here, once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from shared.http import Handler, json_response
from shared.signing import (
    HEADER_ID,
    HEADER_KEY_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    BadSignature,
    BadTimestamp,
    MissingSignature,
    UnknownKey,
)

Schema = dict[str, Any]
ErrorIds = Mapping[int, Sequence[str]]


@dataclass(frozen=True, slots=True)
class Param:
    """A query, path or header parameter."""

    name: str
    where: Literal["query", "path", "header"]
    schema: Schema
    description: str = ""
    required: bool = False

    def to_json(self) -> Schema:
        out: Schema = {"name": self.name, "in": self.where, "schema": self.schema,
                       "required": self.required or self.where == "path"}
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True, slots=True)
class Reply:
    """A success reply: its JSON Schema (``None``: no body) and media type, and the other
    media types the route answers with on request (``also``: media type → schema)."""

    description: str
    schema: Schema | None = None
    content_type: str = "application/json"
    also: Mapping[str, Schema] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Access:
    """Who may call a route: its security scheme, the parameters that carry the
    credentials, and the errors the check answers with."""

    name: str
    scheme: Schema | None = None
    params: tuple[Param, ...] = ()
    errors: ErrorIds = field(default_factory=dict)


PUBLIC = Access("public")
_BEARER_ERRORS: ErrorIds = {401: ("auth-missing", "auth-invalid")}
MERCHANT = Access("merchantToken", {
    "type": "http", "scheme": "bearer",
    "description": "the merchant's API token; its SHA-256 is the merchant's "
                   "api_token_sha256, and it selects the tenant"}, errors=_BEARER_ERRORS)
OPERATOR = Access("operatorToken", {
    "type": "http", "scheme": "bearer",
    "description": "the guard operator's token; its SHA-256 is [guard] "
                   "operator_token_sha256 (unset: 403 operator-api-disabled)"},
    errors={**_BEARER_ERRORS, 403: ("operator-api-disabled",)})
_SIGNED = "part of the Ed25519 signature over f'{id}.{timestamp}.{METHOD}.{path}.{sha256 of " \
          "the raw body}' (shared.signing)"
LINK = Access("linkSignature", {
    "type": "apiKey", "in": "header", "name": HEADER_SIGNATURE,
    "description": "Ed25519 signature of the raw body, method and path by the peer site "
                   "(Standard Webhooks style; see shared.signing): webhook-id, "
                   "webhook-timestamp (±300 s), webhook-key-id and webhook-signature"},
    params=(
        Param(HEADER_ID, "header", {"type": "string", "minLength": 1, "maxLength": 128},
              "message id: a repeat gets the first answer back; " + _SIGNED, required=True),
        Param(HEADER_TIMESTAMP, "header", {"type": "string", "pattern": "^[0-9]+$"},
              "unix seconds, within 300 s of the receiver's clock; " + _SIGNED,
              required=True),
        Param(HEADER_KEY_ID, "header", {"type": "string"},
              "the signing key ids, space separated, one per signature", required=True),
        Param(HEADER_SIGNATURE, "header", {"type": "string"},
              "v1a,<base64 signature> per key id, space separated", required=True)),
    errors={401: tuple(e.error_id for e in (MissingSignature, BadTimestamp, UnknownKey,
                                            BadSignature)),
            403: ("peer-not-allowed",), 408: ("body-timeout",), 413: ("body-too-large",)})
_BODY_ERRORS: ErrorIds = {400: ("invalid-json",), 413: ("body-too-large",)}
#: a parameter holding NUL (``shared.http.error_middleware``)
_PARAM_ERRORS: ErrorIds = {400: ("invalid-field",)}


@dataclass(frozen=True)
class Operation:
    """One route: what :func:`add_operations` puts on the router and in the document."""

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    replies: Mapping[int, Reply]
    access: Access = PUBLIC
    params: Sequence[Param] = ()
    body: Schema | None = None
    body_required: bool = True
    #: the request body's media type; a body that is not JSON (``application/octet-stream``:
    #: an upload) is read by the handler, which answers its own errors
    body_type: str = "application/json"
    #: named request bodies the handler accepts (shown in the document; the contract tests
    #: send each one and check it is valid by ``body``)
    examples: Mapping[str, Any] = field(default_factory=dict)
    errors: ErrorIds = field(default_factory=dict)

    def all_errors(self) -> dict[int, list[str]]:
        merged: dict[int, list[str]] = {}
        json_body = self.body is not None and self.body_type == "application/json"
        sources = [self.access.errors, _BODY_ERRORS if json_body else {},
                   _PARAM_ERRORS if self.params else {}, self.errors]
        for source in sources:
            for status, ids in source.items():
                merged.setdefault(status, [])
                merged[status] += [i for i in ids if i not in merged[status]]
        return dict(sorted(merged.items()))

    def to_json(self) -> Schema:
        out: Schema = {"operationId": f"{self.method.lower()}{_camel(self.path)}",
                       "summary": self.summary, "tags": [self.tag]}
        description = (self.handler.__doc__ or "").strip()
        if description:
            out["description"] = description
        params = [*self.access.params, *self.params]
        if params:
            out["parameters"] = [p.to_json() for p in params]
        if self.body is not None:
            media: Schema = {"schema": self.body}
            if self.examples:
                media["examples"] = {k: {"value": v} for k, v in self.examples.items()}
            out["requestBody"] = {"required": self.body_required,
                                  "content": {self.body_type: media}}
        out["security"] = [] if self.access.scheme is None else [{self.access.name: []}]
        responses: Schema = {str(s): _reply(r) for s, r in self.replies.items()}
        for status, ids in self.all_errors().items():
            responses[str(status)] = _error_reply(status, ids)
        out["responses"] = responses
        return out


def _camel(path: str) -> str:
    words = path.replace("{", "").replace("}", "").replace(".", "/").replace("-", "/")
    return "".join(w[:1].upper() + w[1:] for w in words.split("/") if w)


def _reply(reply: Reply) -> Schema:
    out: Schema = {"description": reply.description}
    if reply.schema is not None:
        out["content"] = {reply.content_type: {"schema": reply.schema},
                          **{t: {"schema": x} for t, x in reply.also.items()}}
    return out


def _error_reply(status: int, ids: Sequence[str]) -> Schema:
    schema = {"allOf": [{"$ref": "#/components/schemas/Error"}, {
        "type": "object",
        "properties": {"error": {"type": "object",
                                 "properties": {"id": {"enum": list(ids)}}}}}]}
    out: Schema = {"description": "error ids: " + ", ".join(ids), "x-error-ids": list(ids),
                   "content": {"application/json": {"schema": schema}}}
    if status == 503:
        out["headers"] = {"Retry-After": {"description": "seconds to wait before retrying",
                                          "schema": {"type": "string"}}}
    return out


ERROR_SCHEMA: Schema = {
    "type": "object", "required": ["error"], "additionalProperties": False,
    "properties": {"error": {
        "type": "object", "required": ["id", "message"],
        "properties": {
            "id": {"type": "string", "description": "stable machine-readable id"},
            "message": {"type": "string", "description": "for people; may change"},
            "field": {"type": "string", "description": "the input field at fault"},
            "retry_after_s": {"type": "integer", "description": "with 503"},
            "reason": {"type": "string", "description": "why a destination was refused"}},
    }}}

OPERATIONS_KEY = web.AppKey("openapi_operations", list[Operation])
_INFO_KEY = web.AppKey("openapi_info", dict[str, Any])


def add_operations(app: web.Application, operations: Iterable[Operation]) -> None:
    """Put each operation on the router (a GET with its HEAD, as aiohttp's ``add_get``) and
    in the application's document."""
    declared = app.setdefault(OPERATIONS_KEY, [])
    for op in operations:
        if op.method == "GET":
            app.router.add_get(op.path, op.handler)
        else:
            app.router.add_route(op.method, op.path, op.handler)
        declared.append(op)


def document(app: web.Application) -> Schema:
    """The OpenAPI 3.1 document of what ``app`` has declared so far."""
    paths: dict[str, Schema] = {}
    schemes: dict[str, Schema] = {}
    for op in app.get(OPERATIONS_KEY, []):
        paths.setdefault(op.path, {})[op.method.lower()] = op.to_json()
        if op.access.scheme is not None:
            schemes[op.access.name] = op.access.scheme
    return {"openapi": "3.1.0", "info": app.get(_INFO_KEY, {"title": "API", "version": "1"}),
            "paths": dict(sorted(paths.items())),
            "components": {"schemas": {"Error": ERROR_SCHEMA}, "securitySchemes": schemes}}


async def openapi_json(request: web.Request) -> web.Response:
    """This document: every route this server serves, generated from the same
    declarations the router is built from."""
    return json_response(document(request.app))


OPENAPI_DOCUMENT: Schema = {"type": "object", "required": ["openapi", "info", "paths"]}


def serve_openapi(app: web.Application, title: str, description: str) -> None:
    """``GET /openapi.json`` on ``app``, titled for its site."""
    app[_INFO_KEY] = {"title": title, "version": "1", "description": description}
    add_operations(app, [Operation("GET", "/openapi.json", openapi_json,
                                   "OpenAPI 3.1 document of this server", "meta",
                                   {200: Reply("the document", OPENAPI_DOCUMENT)})])


# --- JSON Schema pieces the APIs share ---------------------------------------------------

def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def string(max_length: int, min_length: int = 1, **extra: Any) -> Schema:
    return {"type": "string", "minLength": min_length, "maxLength": max_length, **extra}


BINARY: Schema = {"type": "string", "format": "binary"}
TIMESTAMP: Schema = {"type": "string", "format": "date-time",
                     "description": "ISO 8601 with a zone (Z or +hh:mm)"}
E164_NUMBER: Schema = {"type": "string", "pattern": r"^\+[1-9][0-9]{6,14}$",
                       "description": "E.164, such as +819012345678"}
MONEY: Schema = {"type": "object", "required": ["amount", "currency"],
                 "properties": {"amount": {"type": "string", "description": "decimal"},
                                "currency": {"type": "string", "pattern": "^[A-Z]{3}$"}}}
HEALTH: Schema = {"type": "object", "required": ["status", "database", "ari"],
                  "properties": {"status": {"enum": ["ok", "degraded"]},
                                 "database": {"type": "string"}, "ari": {"type": "string"}}}
