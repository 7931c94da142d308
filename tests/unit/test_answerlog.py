"""Asterisk's log of answers (cel_custom): what the server reads for a leg whose
Asterisk died with it up, and how the log is moved aside."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path

from callback_server.answerlog import AnswerLog
from callback_server.legrecord import LOOKUP_ENDPOINT, RECORD_ARG, LegRecord, LegRecords
from callback_server.testing import FakeAri
from shared import ari

ANSWERED = datetime(2026, 11, 22, 5, 5, 45, 500001, tzinfo=UTC)


def _log(tmp_path: Path, *lines: str) -> AnswerLog:
    path = tmp_path / "cbgw-answers.csv"
    path.write_text("".join(line + "\n" for line in lines))
    return AnswerLog(path)


async def test_a_leg_answer_is_found_to_the_microsecond(tmp_path: Path) -> None:
    log = _log(tmp_path, "cb-1-leg-10,1795323940.000000", "cb-1-leg-1,1795323945.500001")
    assert await log.answered_at("cb-1-leg-1") == ANSWERED
    assert await log.answered_at("cb-1-leg") is None      # a prefix is not a channel id
    assert await log.answered_at("cb-2-leg-1") is None


async def test_no_log_and_an_unreadable_line_read_as_no_answer(tmp_path: Path) -> None:
    assert await AnswerLog(tmp_path / "absent.csv").answered_at("cb-1-leg-1") is None
    assert await _log(tmp_path, "cb-1-leg-1,garbage").answered_at("cb-1-leg-1") is None


async def test_the_log_moved_aside_is_still_read_and_moved_once_a_day(tmp_path: Path) -> None:
    log = _log(tmp_path, "cb-1-leg-1,1795323945.500001")
    log.rotate(0.0)                                  # no previous log: moved now
    assert not log.path.exists() and log.previous.exists()
    assert await log.answered_at("cb-1-leg-1") == ANSWERED
    log.path.write_text("cb-2-leg-1,1795323945.500001\n")      # Asterisk's next answer
    moved = log.previous.stat().st_ctime
    log.rotate(moved + 3600)                          # an hour later: too early
    assert log.path.exists()
    assert await log.answered_at("cb-1-leg-1") == ANSWERED
    log.rotate(moved + 86_400)                         # a day later: the older one goes
    assert not log.path.exists()
    assert await log.answered_at("cb-1-leg-1") is None
    assert await log.answered_at("cb-2-leg-1") == ANSWERED
    log.rotate(moved + 2 * 86_400)                     # nothing to move: nothing happens
    assert await log.answered_at("cb-2-leg-1") == ANSWERED


class _Asterisk(FakeAri):
    app = "callback"


async def _fetch(records: LegRecords, asterisk: FakeAri, value: str) -> LegRecord | None:
    fetch = asyncio.create_task(records.fetch("cb-1-leg-1", datetime.now(UTC)))
    for _ in range(5):
        await asyncio.sleep(0)
    token = next(args[1] for name, args in asterisk.calls
                 if name == "originate" and args[0] == LOOKUP_ENDPOINT)
    records.on_stasis_start(ari.StasisStart(ari.Channel(id=f"{token};2"),
                                            args=(RECORD_ARG, "cb-1-leg-1", value)))
    return await asyncio.wait_for(fetch, 1)


async def test_a_leg_with_no_record_but_a_logged_answer_is_answered_with_no_end(
        tmp_path: Path) -> None:
    asterisk = _Asterisk()
    log = _log(tmp_path, "cb-1-leg-1,1795323945.500001")
    records = LegRecords(asterisk, answers=log)  # type: ignore[arg-type]
    assert await _fetch(records, asterisk, "") == LegRecord(ANSWERED, None, 0)


async def test_the_hangup_record_wins_over_the_logged_answer(tmp_path: Path) -> None:
    asterisk = _Asterisk()
    log = _log(tmp_path, "cb-1-leg-1,1795323945.500001")
    records = LegRecords(asterisk, answers=log)  # type: ignore[arg-type]
    record = await _fetch(records, asterisk, "1795323945.500001|1795323950.25|16")
    assert record is not None and record.ended_at is not None and record.cause == 16
    os.remove(log.path)
    assert await _fetch(LegRecords(asterisk, answers=log), asterisk, "") is None  # type: ignore[arg-type]
