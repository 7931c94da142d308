"""Business hours: weekly windows, Japanese public holidays, special days, Tokyo time."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ivr_platform.hours import (
    JAPAN,
    TOKYO,
    BusinessHours,
    MerchantHours,
    SpecialDay,
    Status,
    Window,
)
from ivr_platform.hours_config import parse_merchant_hours
from shared.config import ConfigError, Section, load
from shared.phone import normalise

# The Cabinet Office's calendar (内閣府「国民の祝日について」), 2026 and 2027. The days it
# lists as 「休日」 are substitute holidays (振替休日) and 国民の休日.
OFFICIAL_2026 = {
    date(2026, 1, 1): "元日", date(2026, 1, 12): "成人の日",
    date(2026, 2, 11): "建国記念の日", date(2026, 2, 23): "天皇誕生日",
    date(2026, 3, 20): "春分の日", date(2026, 4, 29): "昭和の日",
    date(2026, 5, 3): "憲法記念日", date(2026, 5, 4): "みどりの日",
    date(2026, 5, 5): "こどもの日", date(2026, 5, 6): "振替休日",
    date(2026, 7, 20): "海の日", date(2026, 8, 11): "山の日",
    date(2026, 9, 21): "敬老の日", date(2026, 9, 22): "国民の休日",
    date(2026, 9, 23): "秋分の日", date(2026, 10, 12): "スポーツの日",
    date(2026, 11, 3): "文化の日", date(2026, 11, 23): "勤労感謝の日",
}
OFFICIAL_2027 = {
    date(2027, 1, 1): "元日", date(2027, 1, 11): "成人の日",
    date(2027, 2, 11): "建国記念の日", date(2027, 2, 23): "天皇誕生日",
    date(2027, 3, 21): "春分の日", date(2027, 3, 22): "振替休日",
    date(2027, 4, 29): "昭和の日", date(2027, 5, 3): "憲法記念日",
    date(2027, 5, 4): "みどりの日", date(2027, 5, 5): "こどもの日",
    date(2027, 7, 19): "海の日", date(2027, 8, 11): "山の日",
    date(2027, 9, 20): "敬老の日", date(2027, 9, 23): "秋分の日",
    date(2027, 10, 11): "スポーツの日", date(2027, 11, 3): "文化の日",
    date(2027, 11, 23): "勤労感謝の日",
}

WEEKDAY_9_TO_6 = (Window.parse("09:00-18:00"),)
OFFICE = BusinessHours(weekly=(WEEKDAY_9_TO_6,) * 5 + ((), ()))


def tokyo(*args: int) -> datetime:
    return datetime(*args, tzinfo=TOKYO)  # type: ignore[misc]


@pytest.mark.parametrize(("year", "official"), [(2026, OFFICIAL_2026), (2027, OFFICIAL_2027)])
def test_the_calendar_is_the_cabinet_offices(year: int, official: dict[date, str]) -> None:
    day, found = date(year, 1, 1), {}
    while day.year == year:
        name = JAPAN.holiday_name(day)
        if name is not None:
            found[day] = name
        day += timedelta(days=1)
    assert sorted(found) == sorted(official)
    for day, name in official.items():
        assert name in found[day], day


@pytest.mark.parametrize(("day", "name"), sorted({**OFFICIAL_2026, **OFFICIAL_2027}.items()))
def test_every_official_holiday_on_a_weekday_closes_the_office(day: date, name: str) -> None:
    at = tokyo(day.year, day.month, day.day, 10, 0)
    status = OFFICE.status(at)
    assert not status.open
    if day.weekday() < 5:
        assert status.status is Status.HOLIDAY
        assert status.reason.startswith("holiday: ") and name in status.reason
    else:
        assert status.status is Status.CLOSED_WEEKDAY or status.status is Status.HOLIDAY


def test_reasons_name_the_holiday_the_weekday_and_the_window() -> None:
    assert OFFICE.status(tokyo(2026, 1, 1, 10, 0)).reason == "holiday: 元日"
    assert OFFICE.status(tokyo(2026, 5, 6, 10, 0)).reason == "holiday: 憲法記念日 振替休日"
    assert OFFICE.status(tokyo(2026, 9, 22, 10, 0)).reason == "holiday: 国民の休日"
    assert OFFICE.status(tokyo(2026, 12, 6, 10, 0)).reason == "closed on Sunday"
    early = OFFICE.status(tokyo(2026, 12, 7, 8, 59))
    assert (early.open, early.status, early.reason) == (
        False, Status.OUTSIDE_WINDOWS, "outside hours: Monday 09:00-18:00")
    now = OFFICE.status(tokyo(2026, 12, 7, 9, 0))
    assert (now.open, now.reason, now.until) == (True, "open: Monday 09:00-18:00",
                                                 tokyo(2026, 12, 7, 18, 0))


def test_holidays_may_follow_the_weekly_windows() -> None:
    shop = BusinessHours(weekly=OFFICE.weekly, holidays_closed=False)
    assert shop.is_open(tokyo(2026, 5, 6, 10, 0))


def test_window_edges_start_included_end_excluded() -> None:
    split = BusinessHours(weekly=((Window.parse("08:30-12:00"), Window.parse("15:00-18:00")),)
                          + ((),) * 6)
    monday = (2026, 12, 7)
    assert not split.is_open(tokyo(*monday, 8, 29, 59))
    assert split.is_open(tokyo(*monday, 8, 30))
    assert split.is_open(tokyo(*monday, 11, 59, 59, 999999))
    assert not split.is_open(tokyo(*monday, 12, 0))
    assert split.next_opening(tokyo(*monday, 12, 0)) == tokyo(*monday, 15, 0)
    assert split.next_opening(tokyo(*monday, 18, 0)) == tokyo(2026, 12, 14, 8, 30)
    assert split.next_opening(tokyo(*monday, 10, 0)) == tokyo(*monday, 10, 0)


def test_a_night_split_at_midnight_stays_open_across_it() -> None:
    night = BusinessHours(weekly=((Window.parse("22:00-24:00"),),
                                  (Window.parse("00:00-02:00"),)) + ((),) * 5)
    assert night.is_open(tokyo(2026, 12, 7, 23, 59, 59))
    assert night.is_open(tokyo(2026, 12, 8, 0, 0))
    status = night.status(tokyo(2026, 12, 7, 23, 0))
    assert status.until == tokyo(2026, 12, 8, 0, 0)
    assert not night.is_open(tokyo(2026, 12, 8, 2, 0))
    assert night.next_opening(tokyo(2026, 12, 8, 2, 0)) == tokyo(2026, 12, 14, 22, 0)


def test_next_opening_skips_golden_week_and_substitute_holiday() -> None:
    # Friday 2026-05-01 after hours: 2-3 weekend, 3-6 holidays (5/6 振替休日): Thursday 5/7.
    assert OFFICE.next_opening(tokyo(2026, 5, 1, 18, 0)) == tokyo(2026, 5, 7, 9, 0)
    # 2026-09-19..23: weekend, 敬老の日, 国民の休日, 秋分の日.
    assert OFFICE.next_opening(tokyo(2026, 9, 18, 20, 0)) == tokyo(2026, 9, 24, 9, 0)


def test_special_days_close_or_open_with_their_own_windows() -> None:
    hours = BusinessHours(
        weekly=OFFICE.weekly,
        special=(SpecialDay(date(2026, 12, 29), date(2027, 1, 3), (), "年末年始"),
                 SpecialDay(date(2026, 12, 28), date(2026, 12, 28),
                            (Window.parse("09:00-12:00"),), "仕事納め"),
                 SpecialDay(date(2027, 1, 1), date(2027, 1, 1), ()),
                 SpecialDay(date(2026, 12, 6), date(2026, 12, 6), (Window.parse("10:00-15:00"),))),
    )
    closed = hours.status(tokyo(2026, 12, 30, 10, 0))
    assert (closed.open, closed.status, closed.reason) == (False, Status.SPECIAL_DAY,
                                                           "special day: 年末年始")
    morning = hours.status(tokyo(2026, 12, 28, 11, 0))
    assert morning.reason == "open: special day 仕事納め 09:00-12:00"
    afternoon = hours.status(tokyo(2026, 12, 28, 13, 0))
    assert (afternoon.status, afternoon.reason) == (
        Status.OUTSIDE_WINDOWS, "outside hours: special day 仕事納め 09:00-12:00")
    # the first entry covering a date wins; a special day opens a Sunday
    assert hours.status(tokyo(2027, 1, 1, 10, 0)).reason == "special day: 年末年始"
    assert hours.is_open(tokyo(2026, 12, 6, 10, 0))
    # after the 28th's morning: closed to 1/3, 1/4 is a Monday
    assert hours.next_opening(tokyo(2026, 12, 28, 12, 0)) == tokyo(2027, 1, 4, 9, 0)


def test_tokyo_has_no_dst_and_any_zone_is_accepted() -> None:
    # 00:30 UTC is 09:30 in Tokyo on every day of the year.
    for month in range(1, 13):
        day = next(date(2026, month, d) for d in range(1, 15)
                   if date(2026, month, d).weekday() == 2 and JAPAN.holiday_name(
                       date(2026, month, d)) is None)
        at = datetime(day.year, day.month, day.day, 0, 30, tzinfo=UTC)
        assert OFFICE.status(at).open, at
    # the night London changes its clocks: Tokyo's answer follows the instant only
    london = datetime(2026, 3, 29, 1, 30, tzinfo=ZoneInfo("Europe/London"))  # 00:30 UTC
    assert OFFICE.next_opening(london) == tokyo(2026, 3, 30, 9, 0)
    # a Monday 08:59:59 Tokyo given in UTC the day before
    assert not OFFICE.is_open(datetime(2026, 12, 6, 23, 59, 59, tzinfo=UTC))
    assert OFFICE.is_open(datetime(2026, 12, 7, 0, 0, tzinfo=UTC))
    with pytest.raises(ValueError, match="timezone-aware"):
        OFFICE.is_open(datetime(2026, 12, 7, 10, 0))


def test_never_open_has_no_next_opening() -> None:
    closed = BusinessHours(weekly=((),) * 7,
                           special=(SpecialDay(date(2027, 2, 1), date(2027, 2, 1),
                                               (Window.parse("10:00-11:00"),)),))
    assert closed.next_opening(tokyo(2026, 12, 7, 10, 0)) == tokyo(2027, 2, 1, 10, 0)
    assert closed.next_opening(tokyo(2027, 2, 1, 11, 0)) is None


@pytest.mark.parametrize(("text", "message"), [
    ("9-18", "expected HH:MM-HH:MM"),
    ("09:00", "expected HH:MM-HH:MM"),
    ("09:60-10:00", "no such time of day '09:60'"),
    ("09:00-24:01", "no such time of day '24:01'"),
    ("24:00-24:00", "cannot start at 24:00"),
    ("18:00-09:00", "ends before it starts"),
    ("10:00-10:00", "ends before it starts"),
    ("０９:00-10:00", "expected HH:MM-HH:MM"),
])
def test_bad_windows_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Window.parse(text)


# --- TOML -----------------------------------------------------------------------------

EXAMPLE = """\
[hours]
monday = ["08:30-12:00", "15:00-18:00"]
tuesday = ["08:30-18:00"]
wednesday = ["08:30-18:00"]
thursday = ["08:30-18:00"]
friday = ["08:30-18:00"]
saturday = ["10:00-16:00"]

[[hours.special]]
date = 2026-12-29
until = 2027-01-03
closed = true
note = "年末年始"

[[hours.special]]
date = "2026-12-28"
windows = ["09:00-12:00"]
note = "仕事納め"

[[hours.numbers]]
number = "03-1234-5678"
saturday = []
public_holidays = "weekly"

[[hours.numbers.special]]
date = 2027-05-06
closed = true
"""


def _parse(tmp_path: Path, text: str) -> MerchantHours:
    path = tmp_path / "hours.toml"
    path.write_text(text)
    source = load(path, "IVR", {})
    hours = parse_merchant_hours(Section(source, source.data, "").section("hours"))
    source.check_unknown()
    return hours


def test_toml_example_per_merchant_and_per_number(tmp_path: Path) -> None:
    hours = _parse(tmp_path, EXAMPLE)
    shop = hours.default
    assert shop.is_open(tokyo(2026, 12, 12, 10, 0))          # Saturday
    assert not shop.is_open(tokyo(2026, 12, 13, 10, 0))      # Sunday: absent, closed
    assert shop.status(tokyo(2027, 1, 2, 10, 0)).reason == "special day: 年末年始"
    assert shop.is_open(tokyo(2027, 5, 6, 10, 0))
    assert shop.status(tokyo(2027, 1, 11, 10, 0)).reason == "holiday: 成人の日"
    line = hours.for_number(normalise("+81312345678"))
    assert not line.is_open(tokyo(2026, 12, 12, 10, 0))      # its Saturday is closed
    assert line.is_open(tokyo(2027, 1, 11, 10, 0))           # holidays follow the weekdays
    assert line.is_open(tokyo(2026, 12, 7, 9, 0))            # Monday: the merchant's
    assert line.status(tokyo(2026, 12, 30, 10, 0)).reason == "special day: 年末年始"
    assert line.status(tokyo(2027, 5, 6, 10, 0)).reason == "special day"  # its own
    assert hours.for_number(normalise("0501234567")) is shop


def _line(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(("old", "new", "message"), [
    ('tuesday = ["08:30-18:00"]', 'tusday = ["08:30-18:00"]',
     "{line}: hours.tusday: unknown key (did you mean tuesday?)"),
    ('tuesday = ["08:30-18:00"]', 'tuesday = ["08:30-18:00", "07:00-09:00"]',
     "{line}: hours.tuesday: windows 07:00-09:00 and 08:30-18:00 overlap"),
    ('tuesday = ["08:30-18:00"]', 'tuesday = ["08:00-09:00", "10:00-11:00", "12:00-13:00", '
                                  '"14:00-15:00"]',
     "{line}: hours.tuesday: at most 3 windows a day, got 4"),
    ('tuesday = ["08:30-18:00"]', 'tuesday = ["08:30-18:00", "19-20"]',
     "{line}: hours.tuesday[1]: expected HH:MM-HH:MM, got '19-20'"),
    ('tuesday = ["08:30-18:00"]', 'tuesday = "08:30-18:00"',
     "{line}: hours.tuesday: expected an array of strings"),
    ("until = 2027-01-03", "until = 2026-12-01",
     "{line}: hours.special[0].until: 2026-12-01 is before date 2026-12-29"),
    ('date = "2026-12-28"', 'date = "28/12/2026"',
     "{line}: hours.special[1].date: expected a date (YYYY-MM-DD), got '28/12/2026'"),
    ('date = "2026-12-28"', 'date = "2027-01-02"',
     "{line}: hours.special[1].date: 2027-01-02..2027-01-02 overlaps special[0] "
     "(2026-12-29..2027-01-03)"),
    ('windows = ["09:00-12:00"]', 'windows = ["09:00-12:00"]\nclosed = true  # and windows',
     "{line}: hours.special[1].closed: a special day is either closed = true or has windows"),
    ('windows = ["09:00-12:00"]', 'windows = []',
     "{line}: hours.special[1].windows: empty: use closed = true for a closed day"),
    ('public_holidays = "weekly"', 'public_holidays = "open"',
     "{line}: hours.numbers[0].public_holidays: expected one of closed, weekly, got 'open'"),
    ('number = "03-1234-5678"', 'number = "03-12x4-5678"',
     "{line}: hours.numbers[0].number: number must be digits"),
    ('note = "仕事納め"', 'note = "仕事納め"\nnotes = "x"',
     "{line}: hours.special[1].notes: unknown key (did you mean note?)"),
])
def test_toml_errors_name_line_and_key(tmp_path: Path, old: str, new: str,
                                       message: str) -> None:
    assert old in EXAMPLE
    text = EXAMPLE.replace(old, new, 1)
    needle = new.splitlines()[-1]
    with pytest.raises(ConfigError) as err:
        _parse(tmp_path, text)
    assert str(err.value).startswith(f"{tmp_path}/hours.toml:" + message.format(
        line=_line(text, needle)))


def test_a_number_given_twice_is_refused(tmp_path: Path) -> None:
    text = EXAMPLE + '\n[[hours.numbers]]\nnumber = "+81312345678"\n'
    with pytest.raises(ConfigError, match=r"hours.numbers\[1\].number: \+81312345678 has hours"):
        _parse(tmp_path, text)
