"""Business hours at the edge: the pure decision (closed message, reject, nothing
stored) at a fixed instant, the merchant's [hours] from TOML, and the sentences a day
can need (what is rendered ahead)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from edge_server.config import HoursPrompts
from edge_server.flow import Deciding, Done, Idle, Refusing, transition
from edge_server.flow_messages import (
    PROMPT_CLOSED,
    AnnounceMode,
    Answer,
    CallArrived,
    Command,
    Hangup,
    HangupReason,
    Log,
    MerchantSettings,
    Outcome,
    Play,
    PlaybackFinished,
    RecordCall,
    RequestDecision,
    StoreRequest,
)
from ivr_platform.hours import TOKYO, BusinessHours
from ivr_platform.hours_speech import closed_announcement, closed_texts
from ivr_platform.speech import reading
from shared.config import ConfigError, Merchant, OutsideHours, load, parse_merchants, root
from shared.language import Language
from shared.phone import E164

DIALED = E164("81120123456")
SECOND = E164("81120987654")
MERCHANT = """
[[merchants]]
id = "acme"
name = "ACME"
numbers = ["0120123456", "0120987654"]
"""
HOURS = MERCHANT + """
[merchants.hours]
monday = ["09:00-12:00", "13:00-18:00"]
tuesday = ["09:00-12:00", "13:00-18:00"]
wednesday = ["09:00-12:00", "13:00-18:00"]
thursday = ["09:00-12:00", "13:00-18:00"]
friday = ["09:00-12:00", "13:00-18:00"]
saturday = ["10:00-15:00"]
outside_hours = "drop"

[[merchants.hours.special]]
date = 2026-12-29
until = 2027-01-03
closed = true
note = "年末年始"

[[merchants.hours.numbers]]
number = "0120987654"
sunday = ["10:00-16:00"]
"""


def tokyo(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=TOKYO)


def merchants(tmp_path: Path, text: str) -> tuple[Merchant, ...]:
    path = tmp_path / "site.toml"
    path.write_text(text)
    source = load(path, "TEST", {})
    parsed = parse_merchants(root(source))
    source.check_unknown()
    return parsed


@pytest.fixture
def acme(tmp_path: Path) -> Merchant:
    return merchants(tmp_path, HOURS)[0]


def settings(m: Merchant, number: E164 = DIALED,
             mode: AnnounceMode = AnnounceMode.EARLY_MEDIA,
             language: Language = Language.JAPANESE) -> MerchantSettings:
    assert m.hours is not None
    return MerchantSettings(m.id, announce_mode=mode, language=language,
                            hours=m.hours.for_number(number))


def arrive(merchant: MerchantSettings, at: datetime, caller: str = "09012345678",
           dialed: E164 = DIALED) -> CallArrived:
    return CallArrived("1700000000.1", caller, "allowed_not_screened", dialed, merchant, at=at)


def plays(commands: list[Command]) -> list[Play]:
    return [c for c in commands if isinstance(c, Play)]


# --- the decision -------------------------------------------------------------------------

@pytest.mark.parametrize(("at", "say", "detail", "why"), [
    # 成人の日 2027 is Monday 11 January: a public holiday, closed
    ("2027-01-11T10:00", "本日は祝日のため、休業しております。明日は、午前九時から営業いたします。",
     "holiday: 成人の日; opens 2027-01-12T09:00:00+09:00", "holiday"),
    # a special day (the year-end closing): the next opening is after it, on a Monday
    ("2026-12-30T10:00", "本日は休業日です。次の営業は、一月四日月曜日、午前九時からです。",
     "special day: 年末年始; opens 2027-01-04T09:00:00+09:00", "special_day"),
    # a Tuesday at lunch: between two windows
    ("2026-12-08T12:30", "ただいまの時間は、営業時間外です。本日は、午後一時から営業いたします。",
     "outside hours: Tuesday 09:00-12:00, 13:00-18:00; opens 2026-12-08T13:00:00+09:00",
     "outside_windows"),
    # 3 a.m.: closed, opens this morning
    ("2026-12-08T03:00", "ただいまの時間は、営業時間外です。本日は、午前九時から営業いたします。",
     "outside hours: Tuesday 09:00-12:00, 13:00-18:00; opens 2026-12-08T09:00:00+09:00",
     "outside_windows"),
])
def test_closed_the_caller_hears_when_it_opens_and_is_rejected_with_nothing_stored(
        acme: Merchant, at: str, say: str, detail: str, why: str) -> None:
    state, commands = transition(Idle(), arrive(settings(acme), tokyo(at)))
    assert isinstance(state, Refusing) and state.outcome is Outcome.CLOSED
    assert plays(commands) == [Play(PROMPT_CLOSED, early=True, language=Language.JAPANESE,
                                    say=say)]
    assert not [c for c in commands if isinstance(c, RequestDecision | StoreRequest | Answer)]
    record = next(c for c in commands if isinstance(c, RecordCall))
    assert (record.outcome, record.detail, record.closed) == (Outcome.CLOSED, detail, why)
    assert record.caller == E164("819012345678")
    assert Log("closed", detail) in commands
    state, commands = transition(state, PlaybackFinished())
    assert state == Done(Outcome.CLOSED)
    assert Hangup(HangupReason.BUSY) in commands


def test_open_the_call_goes_on_to_the_call_back_decision(acme: Merchant) -> None:
    state, commands = transition(Idle(), arrive(settings(acme), tokyo("2026-12-08T10:00")))
    assert isinstance(state, Deciding)
    assert any(isinstance(c, RequestDecision) for c in commands) and not plays(commands)


def test_a_number_with_its_own_hours_is_open_when_the_merchant_is_closed(
        acme: Merchant) -> None:
    sunday = tokyo("2026-12-06T11:00")
    state, _ = transition(Idle(), arrive(settings(acme), sunday))
    assert isinstance(state, Refusing)
    state, _ = transition(Idle(), arrive(settings(acme, SECOND), sunday, dialed=SECOND))
    assert isinstance(state, Deciding)


def test_answer_mode_answers_plays_the_closed_message_and_hangs_up_normally(
        acme: Merchant) -> None:
    merchant = settings(acme, mode=AnnounceMode.ANSWER, language=Language.ENGLISH)
    state, commands = transition(Idle(), arrive(merchant, tokyo("2026-12-08T20:00")))
    assert commands.index(Answer()) < commands.index(plays(commands)[0])
    assert plays(commands)[0].say == "We are closed at this time. We open tomorrow at nine a.m."
    assert plays(commands)[0].early is False
    _, commands = transition(state, PlaybackFinished())
    assert Hangup(HangupReason.NORMAL) in commands


def test_a_withheld_caller_out_of_hours_hears_the_closed_message_not_dial_186(
        acme: Merchant) -> None:
    state, commands = transition(Idle(), arrive(settings(acme), tokyo("2026-12-08T20:00"),
                                                caller="anonymous"))
    assert isinstance(state, Refusing) and state.outcome is Outcome.CLOSED
    assert plays(commands)[0].media == PROMPT_CLOSED
    assert next(c for c in commands if isinstance(c, RecordCall)).caller is None


def test_without_hours_the_line_is_always_open(tmp_path: Path) -> None:
    (m,) = merchants(tmp_path, MERCHANT)
    assert m.hours is None and m.outside_hours is OutsideHours.WAIT
    state, _ = transition(Idle(), arrive(MerchantSettings("acme"), tokyo("2027-01-01T03:00")))
    assert isinstance(state, Deciding)


def test_hours_without_the_arrival_time_is_a_bug_not_an_open_line(acme: Merchant) -> None:
    event = CallArrived("1", "09012345678", None, DIALED, settings(acme))
    with pytest.raises(ValueError, match="CallArrived.at"):
        transition(Idle(), event)


# --- the configuration --------------------------------------------------------------------

def test_merchant_hours_parse_per_number_with_the_drop_policy(acme: Merchant) -> None:
    assert acme.outside_hours is OutsideHours.DROP
    assert acme.hours is not None
    assert acme.hours.for_number(SECOND).weekly[6] != ()
    assert acme.hours.for_number(DIALED).weekly[6] == ()


@pytest.mark.parametrize(("extra", "message"), [
    ("tuesdy = []\n", r"site.toml:\d+: merchants\[0\].hours.tuesdy: unknown key "
                      r"\(did you mean tuesday\?\)"),
    ('outside_hours = "later"\n', r"merchants\[0\].hours.outside_hours: expected one of"),
    ('monday = ["18:00-09:00"]\n', r"merchants\[0\].hours.monday\[0\]: .*ends before"),
])
def test_a_bad_hours_table_is_named_by_file_line_and_key(tmp_path: Path, extra: str,
                                                         message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        merchants(tmp_path, MERCHANT + "[merchants.hours]\n" + extra)


def test_the_prompts_directory_asterisk_sees_defaults_to_the_one_written(
        tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text('[hours]\nprompts_dir = "var/closed"\n')
    hours = HoursPrompts.parse(root(load(path, "TEST", {})).section("hours"))
    assert hours.prompts_dir == hours.asterisk_prompts_dir == tmp_path / "var/closed"
    path.write_text('[hours]\nasterisk_prompts_dir = "/x"\n')
    with pytest.raises(ConfigError, match="hours.asterisk_prompts_dir: needs prompts_dir"):
        HoursPrompts.parse(root(load(path, "TEST", {})).section("hours"))


# --- what is rendered ahead ---------------------------------------------------------------

@pytest.mark.parametrize("day", [date(2026, 12, 8), date(2026, 12, 12), date(2026, 12, 13),
                                 date(2026, 12, 30), date(2027, 1, 11)])
@pytest.mark.parametrize("language", [Language.JAPANESE, Language.ENGLISH])
def test_a_days_texts_are_every_closed_message_of_that_day(
        acme: Merchant, day: date, language: Language) -> None:
    assert acme.hours is not None
    hours: BusinessHours = acme.hours.default
    texts = closed_texts(hours, day, reading(language))
    heard = set()
    at = datetime(day.year, day.month, day.day, tzinfo=TOKYO)
    while at.date() == day:      # every 5 minutes of the day
        text = closed_announcement(hours, at, reading(language))
        if text is not None:
            heard.add(text)
        at += timedelta(minutes=5)
    assert heard == texts and 1 <= len(texts) <= 7
