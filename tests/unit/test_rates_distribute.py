"""The pure parts of deck distribution: the lead, the parts of a message, their checks,
the bounded inflate, and a carrier without a deck in force dropped ``no-deck``."""

from __future__ import annotations

import base64
import gzip
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from routing_rates import deck_receiver, distribute
from routing_rates.carriers import Carrier
from routing_rates.decision import rank_routes
from routing_rates.duration import DEFAULT_DURATION
from routing_rates.index import Row
from routing_rates.store import DeckInfo
from routing_rates.tariff import Terms
from shared.http import InvalidField
from shared.money import FxTable

NOW = datetime(2026, 12, 5, 2, 0, tzinfo=UTC)
CARRIER = Carrier("carrier-b", "B", currency="USD", timezone="Asia/Tokyo",
                  dial_string="PJSIP/{digits}@carrier-b")


def deck(rows: int = 2, effective: datetime | None = NOW + timedelta(minutes=5)) -> DeckInfo:
    return DeckInfo(17, "carrier-b", "scheduled", effective, 4, "b.csv", "a" * 64, "generic",
                    rows, 0, NOW)


def canonical(n: int) -> bytes:
    return b"".join(f"{8190 + i}\tJP\t0.{i % 9000 + 1000:04d}\t60\t60\t60\t0\t0\tUSD\t\t\t\\N"
                    f"\t\\N\t{i + 2}\n".encode() for i in range(n))


def test_the_effective_time_must_be_at_least_the_lead_ahead() -> None:
    lead = distribute.Distribution(lead_s=60)
    assert lead.earliest(NOW) == NOW + timedelta(seconds=60)
    lead.check(NOW + timedelta(seconds=60), NOW)
    with pytest.raises(distribute.DistributionRefused, match="less than 60 s ahead"):
        lead.check(NOW + timedelta(seconds=59), NOW)
    with pytest.raises(distribute.DistributionRefused, match="2026-12-05T02:01:00"):
        lead.check(NOW, NOW)


def test_split_keeps_every_byte_in_order() -> None:
    data = os.urandom(100_001)
    pieces = distribute.split(data, 32_768)
    assert [len(p) for p in pieces] == [32_768, 32_768, 32_768, 1_697]
    assert b"".join(pieces) == data
    assert distribute.split(b"", 10) == [b""]
    with pytest.raises(ValueError):
        distribute.split(b"x", 0)


def test_messages_of_a_large_deck_fit_the_link_and_parse_back() -> None:
    rows = canonical(25_000)
    sent = distribute.messages(deck(25_000), CARRIER, rows, NOW, chunk_bytes=8_192)
    assert len(sent) > 1 and len({mid for mid, _ in sent}) == len(sent)
    parts = [deck_receiver.parse_part(payload) for _, payload in sent]
    assert [p.part for p in parts] == list(range(len(sent)))
    assert {(p.parts, p.version, p.sha256, p.carrier) for p in parts} == {
        (len(sent), 17, distribute.content_hash(rows), CARRIER)}
    assert parts[0].effective_from == NOW + timedelta(minutes=5)
    inflated = deck_receiver.inflate(b"".join(p.data for p in parts), 25_000 * 100)
    assert inflated == rows
    # the same activation gives the same ids; another activation other ids
    assert [m for m, _ in distribute.messages(deck(25_000), CARRIER, rows, NOW, 8_192)] \
        == [m for m, _ in sent]
    later = distribute.messages(deck(25_000), CARRIER, rows, NOW + timedelta(seconds=1), 8_192)
    assert not {m for m, _ in later} & {m for m, _ in sent}


def test_a_deck_not_scheduled_is_not_sent() -> None:
    with pytest.raises(distribute.DistributionRefused, match="not scheduled"):
        distribute.messages(deck(effective=None), CARRIER, b"", NOW)


def good() -> dict[str, Any]:
    [(_, payload)] = distribute.messages(deck(), CARRIER, canonical(2), NOW)
    return payload


@pytest.mark.parametrize(("field", "value"), [
    ("kind", "cdr"), ("encoding", "zstd"), ("carrier", None), ("carrier", {"id": "x"}),
    ("carrier", good()["carrier"] | {"id": "Not An Id"}),
    ("carrier", good()["carrier"] | {"timezone": "Mars/Olympus"}),
    ("carrier", good()["carrier"] | {"currency": "XXQ"}),
    ("carrier", good()["carrier"] | {"name": 5}),
    ("carrier", good()["carrier"] | {"periods": [{"name": "p", "days": [9]}]}),
    ("parts", 0), ("parts", distribute.MAX_PARTS + 1), ("part", 1), ("part", -1),
    ("part", True), ("data", 5), ("data", "a$b="), ("version", 0), ("version", "17"),
    ("sha256", "A" * 64), ("sha256", "a" * 63), ("file_sha256", None),
    ("effective_from", "2026-12-05T03:00:00"), ("activated_at", "soon"),
    ("decimals", 13), ("profile", "p" * 300), ("source", None),
    ("rows", distribute.MAX_ROWS + 1),
])
def test_a_malformed_part_names_its_field(field: str, value: object) -> None:
    body = good() | {field: value}
    with pytest.raises(InvalidField) as refused:
        deck_receiver.parse_part(body)
    assert refused.value.status == 400 and refused.value.fields["field"] == field


def test_a_missing_field_is_named() -> None:
    body = good()
    del body["effective_from"]
    with pytest.raises(InvalidField, match="effective_from"):
        deck_receiver.parse_part(body)


def test_inflate_refuses_what_is_not_gzip_or_too_large() -> None:
    data = gzip.compress(b"x" * 10_000)
    assert deck_receiver.inflate(data, 10_000) == b"x" * 10_000
    with pytest.raises(InvalidField, match="inflates past 9999 bytes"):
        deck_receiver.inflate(data, 9_999)
    with pytest.raises(InvalidField, match="not gzip"):
        deck_receiver.inflate(b"plain text", 100)
    with pytest.raises(InvalidField, match="not complete"):
        deck_receiver.inflate(data[:-10], 10_000)
    assert base64.b64decode(good()["data"])  # the example body decodes too


def test_gzip_bytes_are_the_same_each_time() -> None:
    rows = canonical(100)
    assert distribute.gzip_bytes(rows) == distribute.gzip_bytes(rows)
    assert gzip.decompress(distribute.gzip_bytes(rows)) == rows


def test_the_documented_examples_are_valid_messages() -> None:
    examples = deck_receiver.RATE_DECK_EXAMPLES
    part = deck_receiver.parse_message(examples["rate_deck"])
    assert isinstance(part, deck_receiver.DeckPart)
    assert distribute.content_hash(deck_receiver.inflate(part.data, 4096)) == part.sha256
    assert deck_receiver.parse_message(examples["rate_deck_cancel"]) == \
        deck_receiver.DeckWithdrawal("carrier-a", 17, datetime(2026, 12, 5, 2, 55, tzinfo=UTC))


def test_a_withdrawal_is_the_message_of_a_cancelled_version() -> None:
    mid, payload = distribute.withdrawal(deck(), NOW)
    assert payload == {"kind": "rate_deck_cancel", "carrier_id": "carrier-b", "version": 17,
                       "cancelled_at": NOW.isoformat()}
    assert mid == distribute.withdrawal(deck(), NOW + timedelta(hours=1))[0]  # once a version
    assert deck_receiver.parse_message(payload) == deck_receiver.DeckWithdrawal(
        "carrier-b", 17, NOW)
    for field, value in (("carrier_id", "Carrier B"), ("carrier_id", None), ("version", 0),
                         ("cancelled_at", "now")):
        with pytest.raises(InvalidField) as refused:
            deck_receiver.parse_message(payload | {field: value})
        assert refused.value.fields["field"] == field


def test_a_carrier_without_a_deck_in_force_is_dropped_no_deck() -> None:
    terms = Terms(Decimal("0.05"), 60, 60, 60, Decimal(0), Decimal(0), "USD", 4)
    other = Carrier("carrier-c", "C", dial_string="PJSIP/{digits}@c")
    routes, dropped = rank_routes(
        [(CARRIER, None, None, ""), (other, Row("8190", "m", terms), 3, "")], "819012345678",
        DEFAULT_DURATION, FxTable.from_mapping("JPY", {"USD": "150"}), "JPY",
        no_deck={"carrier-b"})
    assert [q.carrier_id for q in routes] == ["carrier-c"]
    assert [(d.carrier_id, d.reason) for d in dropped] == [("carrier-b", "no-deck")]
