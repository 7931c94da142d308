"""Parse link messages into value types at the edge of the callback site.

Errors are :class:`shared.http.ApiError` 400 ``invalid-field`` naming the
field, so the sender can see exactly what is wrong::

    {"error": {"id": "invalid-field", "message": "caller: not an E.164 number", "field": "caller"}}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.http import (
    ApiError,
    InvalidField,
    optional_timestamp,
    parse_json_object,
    require_timestamp,
)
from shared.openapi import TIMESTAMP, Schema, nullable
from shared.phone import E164, InvalidNumber

_EDGE_CALL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_MERCHANT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
ANNOUNCE_MODES = frozenset({"early_media", "answer"})


def invalid(field: str, message: str) -> ApiError:
    return InvalidField(field, message)


@dataclass(frozen=True, slots=True)
class IntakeRequest:
    """``POST /v1/link/callbacks``: the edge hands us a caller to call back."""

    edge_call_id: str
    merchant_id: str
    caller: E164
    dialed: str | None
    received_at: datetime
    hungup_at: datetime | None
    announce_mode: str | None


def parse_intake(body: bytes) -> IntakeRequest:
    return intake_from(parse_json_object(body))


def intake_from(data: dict[str, Any]) -> IntakeRequest:
    """A call-back request from its parsed JSON object (a single request's body, or one
    message of a batch)."""
    return IntakeRequest(
        edge_call_id=_text(data, "edge_call_id", _EDGE_CALL_ID),
        merchant_id=_text(data, "merchant_id", _MERCHANT_ID),
        caller=_number(data, "caller"),
        dialed=_optional(data, "dialed"),
        received_at=require_timestamp(data, "received_at"),
        hungup_at=optional_timestamp(data, "hungup_at"),
        announce_mode=_announce_mode(data),
    )


def _text(data: dict[str, Any], key: str, pattern: re.Pattern[str]) -> str:
    value = data.get(key)
    if value is None:
        raise invalid(key, "required")
    if not isinstance(value, str) or not pattern.match(value):
        raise invalid(key, f"must match {pattern.pattern}")
    return value


def _optional(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise invalid(key, "expected a string of at most 64 characters")
    return value


def _number(data: dict[str, Any], key: str) -> E164:
    value = data.get(key)
    if not isinstance(value, str):
        raise invalid(key, "required E.164 string such as +819012345678")
    try:
        return E164.parse(value)
    except InvalidNumber as exc:
        raise invalid(key, str(exc)) from None


def _announce_mode(data: dict[str, Any]) -> str | None:
    value = data.get("announce_mode")
    if value is not None and value not in ANNOUNCE_MODES:
        raise invalid("announce_mode", f"expected one of {', '.join(sorted(ANNOUNCE_MODES))}")
    return value if isinstance(value, str) else None


# --- JSON Schemas of what the parser above takes and the API answers --------------------

#: ``POST /v1/link/callbacks`` (and each message body of its batch)
INTAKE_SCHEMA: Schema = {
    "type": "object", "required": ["edge_call_id", "merchant_id", "caller", "received_at"],
    "properties": {
        "edge_call_id": {"type": "string", "pattern": _EDGE_CALL_ID.pattern},
        "merchant_id": {"type": "string", "pattern": _MERCHANT_ID.pattern},
        "caller": {"type": "string", "description": "E.164 (+819012345678); any other "
                                                    "string is refused by the guard"},
        "dialed": nullable({"type": "string", "maxLength": 64}),
        "received_at": TIMESTAMP, "hungup_at": nullable(TIMESTAMP),
        "announce_mode": nullable({"enum": sorted(ANNOUNCE_MODES)})}}
INTAKE_EXAMPLE: dict[str, Any] = {
    "edge_call_id": "edge-1700.42", "merchant_id": "acme", "caller": "+819012345678",
    "dialed": "+81120123456", "received_at": "2026-11-22T01:02:03.456Z",
    "hungup_at": "2026-11-22T01:02:06.001Z", "announce_mode": "early_media"}
INTAKE_ANSWER: Schema = {
    "type": "object", "required": ["callback_id", "status"],
    "properties": {"callback_id": {"type": "string"}, "status": {"type": "string"},
                   "reason": {"type": "string"}}}
#: ``GET /v1/callbacks/{id}``
CALLBACK_SCHEMA: Schema = {
    "type": "object",
    "required": ["callback_id", "edge_call_id", "merchant_id", "caller", "status", "reason",
                 "attempts", "max_attempts", "received_at", "accepted_at", "next_attempt_at",
                 "finished_at", "legs"],
    "properties": {
        "callback_id": {"type": "string"}, "edge_call_id": {"type": "string"},
        "merchant_id": {"type": "string"}, "caller": {"type": "string"},
        "status": {"type": "string"}, "reason": nullable({"type": "string"}),
        "attempts": {"type": "integer"}, "max_attempts": {"type": "integer"},
        "received_at": TIMESTAMP, "accepted_at": TIMESTAMP,
        "next_attempt_at": TIMESTAMP, "finished_at": nullable(TIMESTAMP),
        "legs": {"type": "array", "items": {
            "type": "object",
            "properties": {"channel_id": {"type": "string"}, "attempt_no": {"type": "integer"},
                           "leg": {"type": "string"}, "carrier_id": nullable({"type": "string"}),
                           "status": {"type": "string"}, "cause": nullable({"type": "integer"}),
                           "created_at": TIMESTAMP}}},
        "flows": {"type": "array", "description": "the IVR flow each round played",
                  "items": {
            "type": "object", "required": ["attempt_no", "ivr_flow", "ivr_flow_version",
                                           "started_at"],
            "properties": {"attempt_no": {"type": "integer"}, "ivr_flow": {"type": "string"},
                           "ivr_flow_version": nullable({"type": "integer"}),
                           "started_at": TIMESTAMP}}}}}
