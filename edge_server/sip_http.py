"""The call center's API of its advisors' SIP endpoints at the edge (merchant token).

* ``GET /v1/sip-endpoints``: the merchant's endpoints (user, endpoint name, realm, times).
* ``PUT /v1/sip-endpoints/{user}`` with ``{"password": "..."}`` (12-128 characters):
  creates the endpoint ``<merchant>.<user>`` (201) or sets its password (200); the
  softphone registers with that name and password. Only the digest hash is stored.
* ``DELETE /v1/sip-endpoints/{user}``: removes it (200), ``404 not-found`` if none.

Every change is pushed to the edge Asterisk at once by every edge server
(:mod:`edge_server.sip_push`). No reply and no log line holds the password or its hash.
"""

from __future__ import annotations

import logging

from aiohttp import web

from edge_server.sip_endpoints import (
    MAX_PASSWORD,
    MIN_PASSWORD,
    SIP_USER,
    SipEndpoints,
    check_password,
    check_user,
)
from edge_server.sip_push import SipEndpointSettings
from shared.db import CONNECTION_ERRORS
from shared.http import (
    ApiError,
    InvalidField,
    ServiceUnavailable,
    authenticated_merchant,
    json_response,
    read_json_object,
    started,
)
from shared.openapi import MERCHANT, TIMESTAMP, Operation, Param, Reply, Schema, string

log = logging.getLogger("edge.sip")

SIP_ENDPOINTS_KEY = web.AppKey("edge_sip_endpoints", SipEndpoints)
SIP_SETTINGS_KEY = web.AppKey("edge_sip_settings", SipEndpointSettings)

_USER_PATTERN = SIP_USER.pattern.replace(r"\A", "^").replace(r"\Z", "$")
ENDPOINT: Schema = {
    "type": "object", "required": ["user", "endpoint", "realm", "created_at", "updated_at"],
    "properties": {"user": string(64, pattern=_USER_PATTERN),
                   "endpoint": {"type": "string",
                                "description": "the name the softphone registers with: "
                                               "<merchant>.<user>"},
                   "realm": {"type": "string"}, "created_at": TIMESTAMP,
                   "updated_at": TIMESTAMP}}
PASSWORD_INPUT: Schema = {
    "type": "object", "required": ["password"], "additionalProperties": False,
    "properties": {"password": string(MAX_PASSWORD, MIN_PASSWORD,
                                      description="the softphone's digest password")}}
_USER_PARAM = (Param("user", "path", string(64, pattern=_USER_PATTERN)),)
_DB_DOWN = {503: ("database-unavailable",)}


def _user(request: web.Request) -> str:
    return check_user(request.match_info["user"])


def _password(data: dict[str, object]) -> str:
    unknown = set(data) - {"password"}
    if unknown:
        raise InvalidField(sorted(unknown)[0], "unknown field")
    return check_password(data.get("password"))


def _endpoints(request: web.Request) -> SipEndpoints:
    return started(request, SIP_ENDPOINTS_KEY, "database-unavailable")


def _database_down(what: str, exc: BaseException) -> ApiError:
    log.warning("SIP endpoints: %s failed: %s", what, exc)
    return ServiceUnavailable("database-unavailable", "database unavailable; retry")


async def list_endpoints(request: web.Request) -> web.Response:
    merchant = authenticated_merchant(request)
    try:
        found = await _endpoints(request).of_merchant(merchant)
    except CONNECTION_ERRORS as exc:
        raise _database_down("listing", exc) from None
    return json_response({"items": [e.to_json() for e in found]})


async def put_endpoint(request: web.Request) -> web.Response:
    """Create the endpoint (201) or set its password (200)."""
    merchant = authenticated_merchant(request)
    user = _user(request)
    password = _password(await read_json_object(request))
    realm = request.app[SIP_SETTINGS_KEY].realm
    try:
        endpoint, created = await _endpoints(request).put(merchant, user, password, realm)
    except CONNECTION_ERRORS as exc:
        raise _database_down("storing", exc) from None
    log.info("SIP endpoint %s %s", endpoint.endpoint_id,
             "created" if created else "given a new password")
    return json_response(endpoint.to_json(), status=201 if created else 200)


async def delete_endpoint(request: web.Request) -> web.Response:
    merchant = authenticated_merchant(request)
    user = _user(request)
    try:
        gone = await _endpoints(request).delete(merchant, user)
    except CONNECTION_ERRORS as exc:
        raise _database_down("deleting", exc) from None
    if not gone:
        raise ApiError(404, "not-found", f"no SIP endpoint {user}")
    log.info("SIP endpoint %s.%s deleted", merchant, user)
    return json_response({"user": user, "status": "deleted"})


OPERATIONS = (
    Operation("GET", "/v1/sip-endpoints", list_endpoints,
              "The merchant's advisors' SIP endpoints at the edge", "sip endpoints",
              {200: Reply("every one, by user", {"type": "object", "required": ["items"],
                                                 "properties": {"items": {
                                                     "type": "array", "items": ENDPOINT}}})},
              access=MERCHANT, errors=_DB_DOWN),
    Operation("PUT", "/v1/sip-endpoints/{user}", put_endpoint,
              "Create an advisor's SIP endpoint, or set its password", "sip endpoints",
              {200: Reply("the password is changed", ENDPOINT),
               201: Reply("the endpoint is created", ENDPOINT)},
              access=MERCHANT, params=_USER_PARAM, body=PASSWORD_INPUT,
              errors={400: ("invalid-field",), **_DB_DOWN}),
    Operation("DELETE", "/v1/sip-endpoints/{user}", delete_endpoint,
              "Remove an advisor's SIP endpoint", "sip endpoints",
              {200: Reply("removed", {"type": "object", "required": ["user", "status"],
                                      "properties": {"user": {"type": "string"},
                                                     "status": {"const": "deleted"}}})},
              access=MERCHANT, params=_USER_PARAM,
              errors={400: ("invalid-field",), 404: ("not-found",), **_DB_DOWN}),
)
