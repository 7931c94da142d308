from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.timeutil import TimestampError, parse_timestamp


def test_a_zone_is_required_and_the_result_is_utc() -> None:
    assert parse_timestamp("2026-11-22T10:00:00+09:00", "at") == datetime(2026, 11, 22, 1,
                                                                          tzinfo=UTC)
    assert parse_timestamp("2026-11-22T01:00:00Z", "at").tzinfo is UTC
    with pytest.raises(TimestampError, match="at: timestamp needs a time zone"):
        parse_timestamp("2026-11-22T01:00:00", "at")
    jst = timezone(timedelta(hours=9))
    assert parse_timestamp("2026-11-22T10:00:00", "--at", zoneless=jst) == \
        datetime(2026, 11, 22, 1, tzinfo=UTC)


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00",
                                  "9999-12-31T00:00:00Z", "0001-01-01T12:00:00Z"])
def test_instants_at_the_ends_of_the_range_are_refused(text: str) -> None:
    with pytest.raises(TimestampError, match="out of range") as caught:
        parse_timestamp(text, "since")
    assert caught.value.field == "since"


@pytest.mark.parametrize("text", ["yesterday", "", "2026-13-01T00:00:00Z", "9" * 5000])
def test_what_is_not_a_timestamp_is_refused(text: str) -> None:
    with pytest.raises(TimestampError, match="not an ISO 8601 timestamp"):
        parse_timestamp(text, "until")
