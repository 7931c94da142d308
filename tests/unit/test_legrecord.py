"""The leg record Asterisk's hangup handler writes, and the days it is filed under."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from callback_server.legrecord import (
    LOOKUP_ENDPOINT,
    RECORD_ARG,
    LegRecord,
    LegRecords,
    answer_time,
    days_for,
)
from callback_server.testing import FakeAri
from shared import ari


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


class _Asterisk(FakeAri):
    """A fake whose lookups are answered by the test, as the dialplan would."""

    app = "callback"


async def test_concurrent_fetches_of_one_leg_share_one_lookup() -> None:
    asterisk = _Asterisk()
    records = LegRecords(asterisk, timeout_s=5)  # type: ignore[arg-type]
    started = datetime.now(UTC)
    first = asyncio.create_task(records.fetch("leg-1", started))
    second = asyncio.create_task(records.fetch("leg-1", started))
    impatient = asyncio.create_task(records.fetch("leg-1", started))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    lookups = [c for c in originated(asterisk) if c[0] == LOOKUP_ENDPOINT]
    assert len(lookups) == 1  # one Local channel for the three callers
    impatient.cancel()
    token = lookups[0][1]
    assert records.on_stasis_start(ari.StasisStart(
        ari.Channel(id=token + ";2"), args=(RECORD_ARG, "leg-1", "1795323945.5|1795323950.25|16")))
    one, two = await asyncio.wait_for(asyncio.gather(first, second), 1)
    assert one == two and one is not None and one.cause == 16
    assert ("hangup", token) in asterisk.calls
    # the next fetch is a new lookup, not the finished one
    later = asyncio.create_task(records.fetch("leg-1", started))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    lookups = [c for c in originated(asterisk) if c[0] == LOOKUP_ENDPOINT]
    assert len(lookups) == 2
    records.on_stasis_start(ari.StasisStart(ari.Channel(id=lookups[1][1] + ";2"),
                                            args=(RECORD_ARG, "leg-1", "")))
    assert await asyncio.wait_for(later, 1) is None  # no record this time


def originated(asterisk: FakeAri) -> list[tuple[str, str | None]]:
    return [(args[0], args[1]) for name, args in asterisk.calls if name == "originate"]
