"""The link's batch envelope: the relay's bytes parse back to the same messages."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.http import ApiError
from shared.link import (
    BatchItem,
    batch_answer,
    batch_path,
    encode_batch,
    parse_batch,
    parse_batch_answer,
)


def test_encoded_batch_parses_back_to_the_stored_bodies_unchanged() -> None:
    bodies = [json.dumps({"n": i, "caller": "+81 9\u00e9\"x"}, separators=(",", ":")).encode()
              for i in range(3)]
    raw = encode_batch([(f"id-{i}\"\\", b) for i, b in enumerate(bodies)])
    items = parse_batch(json.loads(raw))
    assert items == [BatchItem(f"id-{i}\"\\", json.loads(b)) for i, b in enumerate(bodies)]


def test_batch_path() -> None:
    assert batch_path("/v1/link/callbacks") == "/v1/link/callbacks/batch"


@pytest.mark.parametrize(("data", "field"), [
    ([], "messages"),
    ({"messages": {}}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": ["x"]}, "messages[0]"),
    ({"messages": [{"body": {}}]}, "messages[0].message_id"),
    ({"messages": [{"message_id": "a\nb", "body": {}}]}, "messages[0].message_id"),
    ({"messages": [{"message_id": "m" * 129, "body": {}}]}, "messages[0].message_id"),
    ({"messages": [{"message_id": "m"}]}, "messages[0].body"),
    ({"messages": [{"message_id": "m", "body": {}}, {"message_id": "m", "body": {}}]},
     "messages[1].message_id"),
])
def test_bad_batches_are_refused_naming_the_field(data: Any, field: str) -> None:
    with pytest.raises(ApiError) as err:
        parse_batch(data)
    assert err.value.status == 400 and err.value.fields["field"] == field


def test_a_batch_holds_at_most_max_messages() -> None:
    data = {"messages": [{"message_id": str(i), "body": {}} for i in range(5)]}
    assert len(parse_batch(data, max_messages=5)) == 5
    with pytest.raises(ApiError, match="1 to 4 messages, not 5"):
        parse_batch(data, max_messages=4)


def test_answers_round_trip_and_malformed_results_are_left_out() -> None:
    items = [BatchItem("a", {}), BatchItem("b", {})]
    answer = batch_answer(items, [(202, {"ok": 1}), (422, {"error": {"id": "x"}})])
    assert parse_batch_answer(json.loads(json.dumps(answer))) == {
        "a": (202, {"ok": 1}), "b": (422, {"error": {"id": "x"}})}
    broken = {"results": [{"message_id": "a", "status": "202", "body": {}}, "x",
                          {"message_id": "b", "status": 202, "body": {"ok": 2}}]}
    assert parse_batch_answer(broken) == {"b": (202, {"ok": 2})}
    assert parse_batch_answer({"text": "<html>"}) == {}
    with pytest.raises(ValueError):
        batch_answer(items, [(202, {})])
