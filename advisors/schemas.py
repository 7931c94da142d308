"""Input of the admin API and the CLI, parsed once into value types; the JSON shapes out.

Every parser takes a JSON object (the CLI builds one from its options) and raises
:class:`shared.http.InvalidField` naming the field at fault: the API answers it as 400
``invalid-field``, the CLI prints it. Unknown fields are errors too (a typo is not
silently dropped). The JSON Schemas below document the same rules in ``/openapi.json``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from advisors.model import (
    Advisor,
    AfterCallMode,
    Contact,
    Customer,
    FirstParty,
    Group,
    PstnContact,
    Rules,
    SipContact,
    Via,
    WhenLinesBusy,
)
from advisors.presence import (
    GoOffline,
    GoOnline,
    Presence,
    PresenceEvent,
    SetBreak,
    SetWorking,
)
from shared.http import InvalidField
from shared.openapi import TIMESTAMP, Schema, nullable, string
from shared.phone import E164, InvalidNumber, normalise

_CODE = re.compile(r"\A[0-9]{4}\Z")
_SIP_USER = re.compile(r"\A[A-Za-z0-9._~+-]{1,64}\Z")
_PROMPT = re.compile(r"\A[A-Za-z0-9_./:-]{0,200}\Z")
MAX_IDS = 1000
MAX_NUMBERS = 20
#: what an advisor can set by API (and, later, by phone)
PRESENCE_VALUES = ("online", "offline", "working", "break")


# --- field readers ------------------------------------------------------------------------


def _only(data: Mapping[str, Any], allowed: tuple[str, ...], prefix: str = "") -> None:
    for key in data:
        if key not in allowed:
            raise InvalidField(prefix + key, f"unknown field (expected one of: "
                                             f"{', '.join(allowed)})")


def _text(data: Mapping[str, Any], field: str, max_len: int, *, min_len: int = 1) -> str:
    value = data[field]
    if not isinstance(value, str) or not min_len <= len(value) <= max_len:
        raise InvalidField(field, f"expected a string of {min_len}..{max_len} characters")
    if not value.isprintable() or value != value.strip():
        raise InvalidField(field, "control characters or surrounding spaces")
    return value


def _int(data: Mapping[str, Any], field: str, low: int, high: int) -> int:
    value = data[field]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidField(field, f"expected an integer {low}..{high}")
    return value


def _ids(data: Mapping[str, Any], field: str) -> tuple[int, ...]:
    value = data[field]
    if not isinstance(value, list) or len(value) > MAX_IDS or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise InvalidField(field, "expected a list of positive integer ids")
    return tuple(sorted(set(value)))


def _number(value: Any, field: str) -> E164:
    if not isinstance(value, str):
        raise InvalidField(field, "expected a phone number string")
    try:
        return normalise(value)
    except InvalidNumber as exc:
        raise InvalidField(field, str(exc)) from None


def _missing(data: Mapping[str, Any], required: tuple[str, ...]) -> None:
    for key in required:
        if key not in data:
            raise InvalidField(key, "required")


def parse_contact(value: Any, field: str = "contact") -> Contact:
    if not isinstance(value, dict):
        raise InvalidField(field, 'expected {"kind": "pstn", "number": ...} or '
                                  '{"kind": "sip", "user": ...}')
    kind = value.get("kind")
    if kind == "pstn":
        _only(value, ("kind", "number"), field + ".")
        return PstnContact(_number(value.get("number"), field + ".number"))
    if kind == "sip":
        _only(value, ("kind", "user"), field + ".")
        user = value.get("user")
        if not isinstance(user, str) or not _SIP_USER.match(user):
            raise InvalidField(field + ".user", "expected 1..64 of A-Z a-z 0-9 . _ ~ + -")
        return SipContact(user)
    raise InvalidField(field + ".kind", "expected pstn or sip")


# --- advisors -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AdvisorInput:
    """A new advisor's fields, or the changed ones (None: unchanged)."""

    display_name: str | None = None
    name_prompt: str | None = None
    code: str | None = None
    contact: Contact | None = None
    price_per_minute_yen: int | None = None
    max_concurrent: int | None = None
    groups: tuple[int, ...] | None = None


ADVISOR_FIELDS = ("display_name", "name_prompt", "code", "contact", "price_per_minute_yen",
                  "max_concurrent", "groups")


def parse_advisor(data: Mapping[str, Any], *, create: bool) -> AdvisorInput:
    _only(data, ADVISOR_FIELDS)
    if create:
        _missing(data, ("display_name", "code", "contact", "price_per_minute_yen"))
    code = None
    if "code" in data:
        code = data["code"]
        if not isinstance(code, str) or not _CODE.match(code):
            raise InvalidField("code", "expected 4 digits, such as \"0123\"")
    prompt = None
    if "name_prompt" in data:
        prompt = data["name_prompt"]
        if not isinstance(prompt, str) or not _PROMPT.match(prompt):
            raise InvalidField("name_prompt", "expected a sound reference of up to 200 of "
                                              "A-Z a-z 0-9 _ . / : -")
    return AdvisorInput(
        display_name=_text(data, "display_name", 64) if "display_name" in data else None,
        name_prompt=prompt, code=code,
        contact=parse_contact(data["contact"]) if "contact" in data else None,
        price_per_minute_yen=(_int(data, "price_per_minute_yen", 0, 100_000)
                              if "price_per_minute_yen" in data else None),
        max_concurrent=(_int(data, "max_concurrent", 1, 10)
                        if "max_concurrent" in data else None),
        groups=_ids(data, "groups") if "groups" in data else None)


# --- groups and customers -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OwnPrice:
    """A group's own price per minute as set (None: its dearest member's price)."""

    yen: int | None


@dataclass(frozen=True, slots=True)
class GroupInput:
    """A new group's fields, or the changed ones (None: unchanged)."""

    name: str | None = None
    members: tuple[int, ...] | None = None
    price: OwnPrice | None = None


def parse_group(data: Mapping[str, Any], *, create: bool) -> GroupInput:
    _only(data, ("name", "members", "price_per_minute_yen"))
    if create:
        _missing(data, ("name",))
    price = None
    if "price_per_minute_yen" in data:
        price = OwnPrice(None if data["price_per_minute_yen"] is None
                         else _int(data, "price_per_minute_yen", 0, 100_000))
    return GroupInput(name=_text(data, "name", 64) if "name" in data else None,
                      members=_ids(data, "members") if "members" in data else None,
                      price=price)


@dataclass(frozen=True, slots=True)
class CustomerInput:
    account: str | None = None
    name: str | None = None
    numbers: tuple[E164, ...] | None = None


def parse_customer(data: Mapping[str, Any], *, create: bool) -> CustomerInput:
    _only(data, ("account", "name", "numbers"))
    if create:
        _missing(data, ("account", "numbers"))
    numbers = None
    if "numbers" in data:
        raw = data["numbers"]
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_NUMBERS:
            raise InvalidField("numbers", f"expected a list of 1..{MAX_NUMBERS} numbers")
        numbers = tuple(sorted({_number(v, f"numbers[{i}]") for i, v in enumerate(raw)}))
    return CustomerInput(
        account=_text(data, "account", 64) if "account" in data else None,
        name=_text(data, "name", 64, min_len=0) if "name" in data else None,
        numbers=numbers)


# --- settings and presence ----------------------------------------------------------------

SETTINGS_LIMITS = {"wrap_up_s": (0, 3600), "ring_timeout_s": (5, 300),
                   "misses_before_break": (0, 100), "lines": (1, 100_000),
                   "queue_announce_s": (0, 600)}


#: the settings that take one of a few words
SETTINGS_CHOICES: dict[str, type[AfterCallMode] | type[FirstParty] | type[WhenLinesBusy]] = {
    "after_call": AfterCallMode, "click_to_call_first": FirstParty,
    "lines_busy": WhenLinesBusy}


def parse_settings(data: Mapping[str, Any], current: Rules) -> Rules:
    """``current`` with the fields of ``data`` changed."""
    _only(data, (*SETTINGS_CHOICES, *SETTINGS_LIMITS))
    words: dict[str, Any] = {}
    for key, kind in SETTINGS_CHOICES.items():
        if key in data:
            choices = [m.value for m in kind]
            if data[key] not in choices:
                raise InvalidField(key, "expected " + " or ".join(choices))
            words[key] = kind(data[key])
    words.update({k: _int(data, k, lo, hi) for k, (lo, hi) in SETTINGS_LIMITS.items()
                  if k in data})
    return replace(current, **words)


@dataclass(frozen=True, slots=True)
class PresenceInput:
    presence: str
    reason: str

    def event(self, at: datetime, via: Via) -> PresenceEvent:
        match self.presence:
            case "online":
                return GoOnline(at, via)
            case "offline":
                return GoOffline(at, via)
            case "working":
                return SetWorking(at, via)
            case _:
                return SetBreak(at, via, self.reason)


def parse_presence(data: Mapping[str, Any]) -> PresenceInput:
    _only(data, ("presence", "reason"))
    _missing(data, ("presence",))
    if data["presence"] not in PRESENCE_VALUES:
        raise InvalidField("presence", f"expected one of: {', '.join(PRESENCE_VALUES)}")
    reason = _text(data, "reason", 200, min_len=0) if "reason" in data else ""
    return PresenceInput(data["presence"], reason)


# --- out ----------------------------------------------------------------------------------


def presence_json(p: Presence) -> dict[str, Any]:
    return {"state": p.state.value, "desk": p.desk.value, "reason": p.reason,
            "consultations": p.load, "misses": p.misses,
            "idle_since": p.idle_since.isoformat() if p.idle_since else None}


def advisor_json(a: Advisor, p: Presence) -> dict[str, Any]:
    return {"id": a.id, "display_name": a.display_name, "name_prompt": a.name_prompt,
            "code": a.code, "contact": a.contact.to_json(),
            "price_per_minute_yen": a.price_per_minute_yen, "max_concurrent": a.max_concurrent,
            "groups": list(a.groups), "presence": presence_json(p),
            "sip_registered": a.sip_registered, "created_at": a.created_at.isoformat(),
            "retired_at": None if a.retired_at is None else a.retired_at.isoformat()}


def group_json(g: Group) -> dict[str, Any]:
    return {"id": g.id, "name": g.name, "members": list(g.members),
            "price_per_minute_yen": g.price_per_minute_yen}


def customer_json(c: Customer) -> dict[str, Any]:
    return {"id": c.id, "account": c.account, "name": c.name,
            "numbers": [str(n) for n in c.numbers]}


def settings_json(r: Rules) -> dict[str, Any]:
    return {"after_call": r.after_call.value, "wrap_up_s": r.wrap_up_s,
            "ring_timeout_s": r.ring_timeout_s, "misses_before_break": r.misses_before_break,
            "lines": r.lines, "click_to_call_first": r.click_to_call_first.value,
            "lines_busy": r.lines_busy.value, "queue_announce_s": r.queue_announce_s}


# --- JSON Schemas (documentation of the same rules) ----------------------------------------

_ID = {"type": "integer", "minimum": 1}
_IDS = {"type": "array", "items": _ID, "maxItems": MAX_IDS}
CONTACT: Schema = {"oneOf": [
    {"type": "object", "required": ["kind", "number"], "additionalProperties": False,
     "properties": {"kind": {"const": "pstn"},
                    "number": {"type": "string", "description": "national or E.164"}}},
    {"type": "object", "required": ["kind", "user"], "additionalProperties": False,
     "properties": {"kind": {"const": "sip"},
                    "user": string(64, pattern=r"^[A-Za-z0-9._~+-]+$",
                                   description="dialled through the edge trunk")}}]}
ADVISOR_INPUT: Schema = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "display_name": string(64, description="shown to customers (Japanese)"),
        "name_prompt": string(200, 0, pattern=r"^[A-Za-z0-9_./:-]*$",
                              description="the recorded prompt of the spoken name"),
        "code": {"type": "string", "pattern": "^[0-9]{4}$",
                 "description": "4 digits, unique within the merchant"},
        "contact": CONTACT,
        "price_per_minute_yen": {"type": "integer", "minimum": 0, "maximum": 100_000},
        "max_concurrent": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
        "groups": _IDS}}
ADVISOR_CREATE: Schema = {**ADVISOR_INPUT,
                          "required": ["display_name", "code", "contact",
                                       "price_per_minute_yen"]}
PRESENCE: Schema = {
    "type": "object", "properties": {
        "state": {"enum": ["offline", "standby", "working", "break", "wrap_up", "ringing",
                           "talking"]},
        "desk": {"enum": ["offline", "standby", "working", "break", "wrap_up"]},
        "reason": {"type": "string"}, "consultations": {"type": "integer"},
        "misses": {"type": "integer"}, "idle_since": nullable(TIMESTAMP)}}
ADVISOR: Schema = {"type": "object", "properties": {
    **ADVISOR_INPUT["properties"], "id": _ID, "presence": PRESENCE,
    "sip_registered": {"type": ["boolean", "null"],
                       "description": "a SIP contact: its softphone is registered at the "
                                      "edge; null: a PSTN contact or no endpoint known"},
    "created_at": TIMESTAMP,
    "retired_at": {"type": ["string", "null"], "format": "date-time",
                   "description": "when the advisor was retired (DELETE); null: current"}}}
_GROUP_PRICE: Schema = {
    "type": ["integer", "null"], "minimum": 0, "maximum": 100_000, "default": None,
    "description": "yen per minute of a consultation through the group (a customer "
                   "choosing it); null: its dearest member's price. A named advisor (a "
                   "code, a list) is always billed at their own price"}
GROUP_INPUT: Schema = {"type": "object", "additionalProperties": False,
                       "properties": {"name": string(64), "members": _IDS,
                                      "price_per_minute_yen": _GROUP_PRICE}}
GROUP_CREATE: Schema = {**GROUP_INPUT, "required": ["name"]}
GROUP: Schema = {"type": "object", "properties": {"id": _ID, "name": string(64),
                                                  "members": _IDS,
                                                  "price_per_minute_yen": _GROUP_PRICE}}
CUSTOMER_INPUT: Schema = {"type": "object", "additionalProperties": False, "properties": {
    "account": string(64), "name": string(64, 0),
    "numbers": {"type": "array", "minItems": 1, "maxItems": MAX_NUMBERS,
                "items": {"type": "string", "description": "national or E.164"}}}}
CUSTOMER_CREATE: Schema = {**CUSTOMER_INPUT, "required": ["account", "numbers"]}
CUSTOMER: Schema = {"type": "object", "properties": {
    "id": _ID, "account": string(64), "name": string(64, 0),
    "numbers": {"type": "array", "items": {"type": "string", "description": "E.164"}}}}
SETTINGS: Schema = {"type": "object", "additionalProperties": False, "properties": {
    "after_call": {"enum": ["timer", "manual"],
                   "description": "after a consultation: back to standby after wrap_up_s, "
                                  "or stay in after-call work until the advisor changes it"},
    "click_to_call_first": {"enum": [m.value for m in FirstParty],
                            "description": "web click-to-call: the party rung first; the "
                                           "other is rung once it has answered"},
    "lines_busy": {"enum": [m.value for m in WhenLinesBusy],
                   "description": "a new customer who finds all lines in use: the busy "
                                  "guidance, or the queue (music on hold, their place "
                                  "announced, up to the connect node's queue_s)"},
    **{k: {"type": "integer", "minimum": lo, "maximum": hi}
       for k, (lo, hi) in SETTINGS_LIMITS.items()}}}
PRESENCE_INPUT: Schema = {"type": "object", "required": ["presence"],
                          "additionalProperties": False, "properties": {
                              "presence": {"enum": list(PRESENCE_VALUES)},
                              "reason": string(200, 0)}}


def listing(item: Schema) -> Schema:
    return {"type": "object", "required": ["items"],
            "properties": {"items": {"type": "array", "items": item}}}
