"""The leg record Asterisk's hangup handler writes, and the days it is filed under."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from callback_server.legrecord import LegRecord, answer_time, days_for


def test_an_answered_leg_record_reads_to_the_microsecond() -> None:
    record = LegRecord.parse("1795323945.500001|1795323950.25|16")
    assert record is not None and record.cause == 16 and record.answered
    assert record.answered_at == datetime(2026, 11, 22, 5, 5, 45, 500001, tzinfo=UTC)
    assert record.ended_at == datetime(2026, 11, 22, 5, 5, 50, 250000, tzinfo=UTC)


def test_an_unanswered_leg_has_no_answer_time() -> None:
    assert LegRecord.parse("0.000000|1795323950.25|19") == LegRecord(
        None, datetime(2026, 11, 22, 5, 5, 50, 250000, tzinfo=UTC), 19)


def test_an_end_in_the_answers_millisecond_never_precedes_the_answer() -> None:
    record = LegRecord.parse("1795323945.500400|1795323945.500|0")
    assert record is not None and record.answered_at is not None
    assert record.ended_at == record.answered_at


@pytest.mark.parametrize(("value", "message"), [
    ("1|2", "expected answer"), ("a|b|c", "not numbers"), ("1|2|3|4", "expected answer")])
def test_a_malformed_record_is_refused(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LegRecord.parse(value)


def test_an_empty_record_is_none() -> None:
    assert LegRecord.parse("") is None
    assert LegRecord.parse("  ") is None


def test_a_leg_is_looked_up_on_its_start_day_and_the_next() -> None:
    day = datetime(2026, 11, 22, 23, 50, tzinfo=UTC)
    assert days_for(day, day) == ["20261122"]
    assert days_for(day, day + timedelta(hours=3)) == ["20261122", "20261123"]
    assert days_for(day, day + timedelta(days=5)) == ["20261122", "20261123"]


def test_answer_time_is_exact_and_none_when_never_answered() -> None:
    assert answer_time("1764600000.123456") == datetime(2025, 12, 1, 14, 40, 0, 123456,
                                                         tzinfo=UTC)
    assert answer_time("0") is None
    assert answer_time("") is None
    assert answer_time(None) is None
