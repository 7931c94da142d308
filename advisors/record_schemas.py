"""JSON Schemas of the consultation record (:meth:`advisors.records.ConsultationRecord.
to_json`): as the ``consultation`` link message, and as the listings of both sites give
it. What the schemas cannot say (times in order, talk within the connected time, an
answer needing an advisor) the record checks itself, naming the field."""

from __future__ import annotations

from typing import Any

from advisors.records import (
    MAX_INT,
    MAX_PARTS,
    EndReason,
    Method,
    RingOutcome,
)
from shared.openapi import E164_NUMBER, MONEY, TIMESTAMP, Schema, nullable

_ID: Schema = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"}
_WORD: Schema = {"type": "string", "pattern": r"^[a-z][a-z0-9_]{0,31}$"}
_ROW: Schema = {"type": "integer", "minimum": 1, "maximum": MAX_INT}


def _object(properties: dict[str, Schema]) -> Schema:
    return {"type": "object", "required": list(properties), "properties": properties,
            "additionalProperties": False}


def _parts(item: Schema) -> Schema:
    return {"type": "array", "maxItems": MAX_PARTS, "items": item}


RING = _object({"advisor_id": _ROW, "call_id": _ID, "started_at": TIMESTAMP,
                "ended_at": nullable(TIMESTAMP), "outcome": {"enum": list(RingOutcome)}})
HOLD = _object({"started_at": TIMESTAMP, "ended_at": nullable(TIMESTAMP)})
TRANSFER = _object({"at": TIMESTAMP, "to_advisor_id": nullable(_ROW),
                    "to_number": nullable(E164_NUMBER), "outcome": _WORD})
_LEG_FIELDS: dict[str, Schema] = {"call_id": _ID, "role": _WORD, "carrier_id": nullable(_ID),
                                  "cost": nullable({**MONEY, "additionalProperties": False})}
#: ``cost_unknown`` (sent only when true): the leg's CDR did not come within the wait
LEG_COST = {**_object(_LEG_FIELDS),
            "properties": {**_LEG_FIELDS, "cost_unknown": {"type": "boolean"}}}
#: the record's fields, in the order of ``ConsultationRecord.to_json``
PROPERTIES: dict[str, Schema] = {
    "consultation_id": _ID,
    "merchant_id": {"type": "string", "pattern": "^[a-z0-9-]{1,64}$"},
    "callback_id": nullable(_ID), "edge_call_id": nullable(_ID),
    "customer_number": E164_NUMBER, "customer_id": nullable(_ROW),
    "advisor_id": nullable(_ROW), "group_id": nullable(_ROW),
    "method": {"enum": list(Method)}, "requested_at": TIMESTAMP, "rings": _parts(RING),
    "answered_at": nullable(TIMESTAMP), "holds": _parts(HOLD),
    "transfers": _parts(TRANSFER), "ended_at": TIMESTAMP,
    "talk_s": {"type": "integer", "minimum": 0, "maximum": MAX_INT},
    "end_reason": {"enum": list(EndReason)}, "customer_call_id": nullable(_ID),
    "leg_costs": _parts(LEG_COST),
}

#: ``POST /v1/link/events`` with ``kind`` ``consultation``
MESSAGE = _object({"kind": {"const": "consultation"}, **PROPERTIES})
#: one record in a listing or read back: the record and when this site stored it
LISTED = _object({**PROPERTIES, "recorded_at": TIMESTAMP})

EXAMPLE: dict[str, Any] = {
    "consultation_id": "co-7f3a", "merchant_id": "acme", "callback_id": "cb-0f3a9c",
    "edge_call_id": "edge-1700.42", "customer_number": "+819012345678", "customer_id": 7,
    "advisor_id": 12, "group_id": 3, "method": "group",
    "requested_at": "2026-11-22T01:03:50.000000Z",
    "rings": [{"advisor_id": 11, "call_id": "co-7f3a-r1",
               "started_at": "2026-11-22T01:03:51.000000Z",
               "ended_at": "2026-11-22T01:04:11.000000Z", "outcome": "missed"},
              {"advisor_id": 12, "call_id": "co-7f3a-r2",
               "started_at": "2026-11-22T01:04:11.000000Z",
               "ended_at": "2026-11-22T01:04:15.000000Z", "outcome": "answered"}],
    "answered_at": "2026-11-22T01:04:15.000000Z",
    "holds": [{"started_at": "2026-11-22T01:05:00.000000Z",
               "ended_at": "2026-11-22T01:05:20.000000Z"}],
    "transfers": [], "ended_at": "2026-11-22T01:14:15.000000Z", "talk_s": 600,
    "end_reason": "customer_hangup", "customer_call_id": "cb-0f3a9c-1-customer",
    "leg_costs": [{"call_id": "cb-0f3a9c-1-customer", "role": "customer",
                   "carrier_id": "carrier-b", "cost": {"amount": "1.3980", "currency": "USD"}},
                  {"call_id": "co-7f3a-r2", "role": "advisor", "carrier_id": None,
                   "cost": None}],
}
