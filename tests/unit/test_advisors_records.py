"""The consultation record (advisors.records): invariants refused with the field named,
the JSON round trip (exact money, microseconds), and strict parsing of the wire form."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema_rs import Draft202012Validator

import advisors
from advisors import record_schemas
from advisors.records import (
    FIELDS,
    ConsultationRecord,
    EndReason,
    Hold,
    InvalidRecord,
    LegCost,
    Method,
    Ring,
    RingOutcome,
    Transfer,
    wire_time,
)
from shared.money import Money
from tests.purity import io_imports

T0 = datetime(2026, 12, 5, 1, 0, 0, 123456, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def answered(**changes: Any) -> ConsultationRecord:
    """A consultation rung twice (a miss, then an answer), held once, 95 s of talk."""
    record = ConsultationRecord(
        consultation_id="co-7f3a", merchant_id="acme", callback_id="cb-0f3a9c",
        edge_call_id="edge-1700.42", customer_number="+819012345678", customer_id=7,
        advisor_id=12, group_id=3, method=Method.GROUP, requested_at=at(0),
        rings=(Ring(11, "co-7f3a-r1", at(1), at(21), RingOutcome.MISSED),
               Ring(12, "co-7f3a-r2", at(21), at(25), RingOutcome.ANSWERED)),
        answered_at=at(25), holds=(Hold(at(40), at(50)),),
        transfers=(), ended_at=at(120), talk_s=95, end_reason=EndReason.CUSTOMER_HANGUP,
        customer_call_id="cb-0f3a9c-1-customer",
        leg_costs=(LegCost("cb-0f3a9c-1-customer", "customer", "carrier-b",
                           Money.of("0.2097", "USD")),
                   LegCost("co-7f3a-r2", "advisor", None, Money.of("45", "JPY")),
                   LegCost("co-7f3a-r1", "advisor", "carrier-a", None)))
    return dataclasses.replace(record, **changes)


def unanswered(**changes: Any) -> ConsultationRecord:
    return answered(**{"advisor_id": None, "rings": (), "answered_at": None, "holds": (),
                       "talk_s": 0, "end_reason": EndReason.NO_ADVISOR, **changes})


def refused(field: str, **changes: Any) -> InvalidRecord:
    with pytest.raises(InvalidRecord) as caught:
        answered(**changes)
    assert caught.value.field == field, caught.value
    return caught.value


def test_a_full_record_is_valid_and_says_it_was_answered() -> None:
    assert answered().answered
    assert not unanswered().answered


def test_the_module_is_pure() -> None:
    assert io_imports(Path(advisors.__file__).parent / "records.py") == []


def test_the_json_round_trip_is_exact() -> None:
    record = answered(transfers=(Transfer(at(100), None, "+81312345678", "completed"),))
    wire = json.loads(json.dumps(record.to_json()))
    back = ConsultationRecord.from_json(wire)
    assert back == record
    assert back.leg_costs[0].cost == Money(Decimal("0.2097"), "USD")
    assert str(back.leg_costs[0].cost.amount) == "0.2097"   # scale kept, not 0.20970...
    assert wire["requested_at"] == "2026-12-05T01:00:00.123456Z"
    assert wire["rings"][1] == {"advisor_id": 12, "call_id": "co-7f3a-r2",
                                "started_at": "2026-12-05T01:00:21.123456Z",
                                "ended_at": "2026-12-05T01:00:25.123456Z",
                                "outcome": "answered"}
    assert wire["leg_costs"][2]["cost"] is None


def test_times_in_another_zone_go_out_in_utc() -> None:
    tokyo = timezone(timedelta(hours=9))
    record = answered(requested_at=T0.astimezone(tokyo))
    assert record.to_json()["requested_at"] == "2026-12-05T01:00:00.123456Z"
    assert ConsultationRecord.from_json(record.to_json()) == record
    assert wire_time(None) is None


def test_enum_values_given_as_strings_become_members() -> None:
    ring = Ring(12, "r", at(1), None, "withdrawn")  # type: ignore[arg-type]  # on purpose
    assert ring.outcome is RingOutcome.WITHDRAWN
    record = answered(method="code", end_reason="advisor_hangup")
    assert record.method is Method.CODE and record.end_reason is EndReason.ADVISOR_HANGUP


@pytest.mark.parametrize(("field", "changes"), [
    ("talk_s", {"talk_s": -1}),
    ("talk_s", {"talk_s": True}),
    ("talk_s", {"talk_s": 96}),                        # 95 s from answer to end
    ("advisor_id", {"advisor_id": None}),
    ("ended_at", {"ended_at": at(-1), "answered_at": None, "talk_s": 0, "holds": (),
                  "rings": (), "end_reason": EndReason.FAILED}),
    ("answered_at", {"answered_at": at(-5)}),
    ("answered_at", {"answered_at": at(121)}),
    ("requested_at", {"requested_at": datetime(2026, 12, 5, 1, 0)}),   # naive
    ("consultation_id", {"consultation_id": ""}),
    ("consultation_id", {"consultation_id": "co 7"}),
    ("merchant_id", {"merchant_id": "ACME"}),
    ("customer_number", {"customer_number": "09012345678"}),
    ("customer_id", {"customer_id": 0}),
    ("group_id", {"group_id": 2**31}),
    ("method", {"method": "web"}),
    ("end_reason", {"end_reason": "hung_up"}),
    ("end_reason", {"end_reason": EndReason.NO_ADVISOR}),
    ("end_reason", {"end_reason": EndReason.LINES_BUSY}),
    ("rings[0].started_at", {"rings": (Ring(11, "r1", at(-1), at(2), RingOutcome.MISSED),)}),
    ("rings[0].ended_at", {"rings": (Ring(11, "r1", at(1), at(121), RingOutcome.MISSED),)}),
    ("holds[0].started_at", {"holds": (Hold(at(24), at(30)),)}),
    ("holds[0].ended_at", {"holds": (Hold(at(100), at(130)),)}),
    ("transfers[0].at", {"transfers": (Transfer(at(10), 13, None, "failed"),)}),
    ("transfers[0].at", {"transfers": (Transfer(at(130), 13, None, "failed"),)}),
    ("leg_costs", {"leg_costs": (LegCost("x", "customer", None, None),) * 2}),
    ("rings", {"rings": [Ring(11, "r1", at(1), at(2), RingOutcome.MISSED)]}),
    ("holds", {"holds": ("not a hold",)}),
])
def test_an_invariant_broken_is_refused_naming_the_field(field: str,
                                                         changes: dict[str, Any]) -> None:
    refused(field, **changes)


def test_an_unanswered_consultation_has_no_talk_hold_or_answered_reason() -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("talk_s", {"talk_s": 1}),
        ("holds[0].started_at", {"holds": (Hold(at(1), None),)}),
        ("transfers[0].at", {"transfers": (Transfer(at(1), 2, None, "x"),)}),
        ("end_reason", {"end_reason": EndReason.CUSTOMER_HANGUP}),
        ("end_reason", {"end_reason": EndReason.CUT_OFF})]
    for field, changes in cases:
        with pytest.raises(InvalidRecord) as caught:
            unanswered(**changes)
        assert caught.value.field == field
    for reason in (EndReason.LINES_BUSY, EndReason.CUSTOMER_ABANDONED, EndReason.FAILED,
                   EndReason.FORCED_END):
        assert unanswered(end_reason=reason).end_reason is reason


def test_talk_may_round_the_connected_time_up() -> None:
    assert answered(ended_at=at(119.5), talk_s=95).talk_s == 95   # 94.5 s connected


@pytest.mark.parametrize(("build", "field"), [
    (lambda: Ring(0, "r", at(0), None, RingOutcome.MISSED), "advisor_id"),
    (lambda: Ring(1, "", at(0), None, RingOutcome.MISSED), "call_id"),
    (lambda: Ring(1, "r", at(5), at(4), RingOutcome.MISSED), "ended_at"),
    (lambda: Ring(1, "r", at(5), None, "rang"), "outcome"),  # type: ignore[arg-type]
    (lambda: Hold(at(5), at(4)), "ended_at"),
    (lambda: Hold(datetime(2026, 1, 1), None), "started_at"),
    (lambda: Transfer(at(1), None, None, "completed"), "to_advisor_id"),
    (lambda: Transfer(at(1), 3, "+81312345678", "completed"), "to_advisor_id"),
    (lambda: Transfer(at(1), None, "0312345678", "completed"), "to_number"),
    (lambda: Transfer(at(1), 3, None, "Done!"), "outcome"),
    (lambda: LegCost("c", "", None, None), "role"),
    (lambda: LegCost("c", "customer", "carrier b", None), "carrier_id"),
    (lambda: LegCost("c", "customer", None, Money.of("1e13", "USD")), "cost"),
    (lambda: LegCost("c", "customer", None, "1.00"), "cost"),  # type: ignore[arg-type]
    (lambda: LegCost("c", "customer", None, Money.of("1", "USD"), cost_unknown=True),
     "cost_unknown"),
    (lambda: LegCost("c", "customer", "carrier-b", None, cost_unknown=True), "cost_unknown"),
    (lambda: LegCost("c", "customer", None, None, cost_unknown=1),  # type: ignore[arg-type]
     "cost_unknown"),
])
def test_parts_check_themselves(build: Any, field: str) -> None:
    with pytest.raises(InvalidRecord) as caught:
        build()
    assert caught.value.field == field


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda w: w.pop("talk_s"), "talk_s"),
    (lambda w: w.update(extra=1), "extra"),
    (lambda w: w.update(talk_s="95"), "talk_s"),
    (lambda w: w.update(advisor_id=12.0), "advisor_id"),
    (lambda w: w.update(method=None), "method"),
    (lambda w: w.update(requested_at="2026-12-05T01:00:00"), "requested_at"),
    (lambda w: w.update(requested_at=17), "requested_at"),
    (lambda w: w.update(rings={}), "rings"),
    (lambda w: w.update(rings=[{}] * 101), "rings"),
    (lambda w: w["rings"][1].update(outcome="picked"), "rings[1].outcome"),
    (lambda w: w["rings"][0].pop("ended_at"), "rings[0].ended_at"),
    (lambda w: w["holds"].append("x"), "holds[1]"),
    (lambda w: w["leg_costs"][0].update(cost={"amount": 0.2, "currency": "USD"}),
     "leg_costs[0].cost"),
    (lambda w: w["leg_costs"][0].update(cost={"amount": "NaN", "currency": "USD"}),
     "leg_costs[0].cost"),
    (lambda w: w["leg_costs"][0].update(cost={"amount": "1", "currency": "XXX"}),
     "leg_costs[0].cost"),
    (lambda w: w["leg_costs"][0].update(cost={"amount": "1"}), "leg_costs[0].cost"),
    (lambda w: w.update(customer_number=None), "customer_number"),
    (lambda w: w["leg_costs"][0].update(cost_unknown=True), "leg_costs[0].cost_unknown"),
    (lambda w: w["leg_costs"][1].update(cost=None, carrier_id=None, cost_unknown="yes"),
     "leg_costs[1].cost_unknown"),
])
def test_the_wire_form_is_parsed_strictly(mutate: Any, field: str) -> None:
    wire = answered().to_json()
    mutate(wire)
    with pytest.raises(InvalidRecord) as caught:
        ConsultationRecord.from_json(wire)
    assert caught.value.field == field, caught.value


def test_a_message_kind_is_ignored_only_when_asked() -> None:
    wire = {"kind": "consultation", **answered().to_json()}
    with pytest.raises(InvalidRecord):
        ConsultationRecord.from_json(wire)
    assert ConsultationRecord.from_json(wire, ignore=("kind",)) == answered()


_times = st.integers(min_value=0, max_value=10**6).map(lambda us: T0 + timedelta(microseconds=us))
_amounts = st.decimals(min_value=Decimal("-1e9"), max_value=Decimal("1e9"),
                       allow_nan=False, allow_infinity=False, places=6)


@given(talk=st.integers(min_value=0, max_value=3600), offset=_times,
       amount=_amounts, currency=st.sampled_from(["JPY", "USD", "KWD"]))
def test_any_valid_record_round_trips(talk: int, offset: datetime, amount: Decimal,
                                      currency: str) -> None:
    record = answered(requested_at=offset - timedelta(seconds=1), answered_at=offset,
                      rings=(), holds=(), ended_at=offset + timedelta(seconds=talk),
                      talk_s=talk,
                      leg_costs=(LegCost("c-1", "customer", None, Money(amount, currency)),))
    assert ConsultationRecord.from_json(json.loads(json.dumps(record.to_json()))) == record


def test_the_json_schema_follows_the_record() -> None:
    """``advisors.record_schemas`` (the OpenAPI documents of both sites) takes what
    ``from_json`` takes and refuses what it refuses by shape."""
    message = Draft202012Validator(record_schemas.MESSAGE, validate_formats=True)
    assert tuple(record_schemas.PROPERTIES) == FIELDS
    wire = {"kind": "consultation", **answered(
        transfers=(Transfer(at(100), None, "+81312345678", "completed"),)).to_json()}
    assert message.is_valid(wire)
    assert message.is_valid({"kind": "consultation", **unanswered().to_json()})
    unknown = answered(leg_costs=(LegCost("c-1", "customer", None, None, cost_unknown=True),))
    assert unknown.to_json()["leg_costs"][0]["cost_unknown"] is True
    assert message.is_valid({"kind": "consultation", **unknown.to_json()})
    assert ConsultationRecord.from_json(unknown.to_json()) == unknown
    assert "cost_unknown" not in answered().to_json()["leg_costs"][0]
    example = ConsultationRecord.from_json(record_schemas.EXAMPLE)
    assert message.is_valid({"kind": "consultation", **example.to_json()})
    mutations: list[Callable[[dict[str, Any]], object]] = [
        lambda w: w.pop("talk_s"), lambda w: w.update(extra=1),
        lambda w: w.update(method="web"), lambda w: w["rings"][0].update(outcome="rang"),
        lambda w: w["leg_costs"][0].update(cost={"amount": 0.2, "currency": "USD"}),
        lambda w: w["leg_costs"][1].update(cost=None, carrier_id=None, cost_unknown="yes")]
    for mutate in mutations:
        bad = json.loads(json.dumps(wire))
        mutate(bad)
        assert not message.is_valid(bad)
        with pytest.raises(InvalidRecord):
            ConsultationRecord.from_json(bad, ignore=("kind",))
    listed = Draft202012Validator(record_schemas.LISTED, validate_formats=True)
    assert listed.is_valid({**answered().to_json(), "recorded_at": wire_time(T0)})
