"""What the IVR says for numbers, yen, phone numbers, durations, times and dates."""

from __future__ import annotations

from datetime import date, time
from decimal import Decimal

import pytest

from ivr_platform.speech import ENGLISH, JAPANESE, phone_groups, reading
from shared.language import Language
from shared.money import Money
from shared.phone import normalise


@pytest.mark.parametrize(("amount", "ja", "en"), [
    (0, "ゼロ円", "zero yen"),
    (1, "一円", "one yen"),
    (10, "十円", "ten yen"),
    (15, "十五円", "fifteen yen"),
    (110, "百十円", "one hundred ten yen"),
    (300, "三百円", "three hundred yen"),
    (1000, "千円", "one thousand yen"),
    (1200, "千二百円", "one thousand two hundred yen"),
    (8000, "八千円", "eight thousand yen"),
    (10000, "一万円", "ten thousand yen"),
    (20001, "二万一円", "twenty thousand one yen"),
    (100000, "十万円", "one hundred thousand yen"),
    (1234567, "百二十三万四千五百六十七円",
     "one million two hundred thirty-four thousand five hundred sixty-seven yen"),
    (10000000, "千万円", "ten million yen"),
    (100000000, "一億円", "one hundred million yen"),
    (100010000, "一億一万円", "one hundred million ten thousand yen"),
    (1000000000000, "一兆円", "one trillion yen"),
    (-500, "マイナス五百円", "minus five hundred yen"),
])
def test_yen_the_japanese_way_and_in_english(amount: int, ja: str, en: str) -> None:
    assert JAPANESE.yen(amount) == ja
    assert ENGLISH.yen(amount) == en


def test_yen_takes_whole_jpy_money_only() -> None:
    assert JAPANESE.yen(Money(Decimal("1200"), "JPY")) == "千二百円"
    with pytest.raises(ValueError, match="not a whole amount of yen"):
        JAPANESE.yen(Money(Decimal("12.5"), "JPY"))
    with pytest.raises(ValueError, match="not a whole amount of yen"):
        JAPANESE.yen(Money(Decimal("12"), "USD"))
    with pytest.raises(TypeError, match="yen are integers"):
        JAPANESE.yen(12.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too large"):
        JAPANESE.number(10**16)


@pytest.mark.parametrize(("number", "groups", "ja", "en"), [
    ("03-1234-5678", ["03", "1234", "5678"],
     "ゼロ、サン、の、イチ、ニー、サン、ヨン、の、ゴー、ロク、ナナ、ハチ",
     "zero three, one two three four, five six seven eight"),
    ("09012345678", ["090", "1234", "5678"],
     "ゼロ、キュウ、ゼロ、の、イチ、ニー、サン、ヨン、の、ゴー、ロク、ナナ、ハチ",
     "zero nine zero, one two three four, five six seven eight"),
    ("0120-123-456", ["0120", "123", "456"],
     "ゼロ、イチ、ニー、ゼロ、の、イチ、ニー、サン、の、ヨン、ゴー、ロク",
     "zero one two zero, one two three, four five six"),
    ("+1 650 253 0000", ["1", "650", "253", "0000"],
     "イチ、の、ロク、ゴー、ゼロ、の、ニー、ゴー、サン、の、ゼロ、ゼロ、ゼロ、ゼロ",
     "one, six five zero, two five three, zero zero zero zero"),
])
def test_phone_numbers_digit_by_digit_in_their_groups(number: str, groups: list[str],
                                                     ja: str, en: str) -> None:
    e164 = normalise(number)
    assert phone_groups(e164) == groups
    assert JAPANESE.phone(e164) == ja
    assert ENGLISH.phone(e164) == en


def test_digits_refuse_anything_but_ascii_digits() -> None:
    assert JAPANESE.digits("4096") == "ヨン、ゼロ、キュウ、ロク"
    assert ENGLISH.digits("4096") == "four zero nine six"
    for bad in ("", "12a", "１２", "-1"):
        with pytest.raises(ValueError, match="expected ASCII digits"):
            JAPANESE.digits(bad)


@pytest.mark.parametrize(("seconds", "ja", "en"), [
    (0, "ゼロ秒", "zero seconds"),
    (1, "一秒", "one second"),
    (30, "三十秒", "thirty seconds"),
    (60, "一分", "one minute"),
    (90, "一分三十秒", "one minute thirty seconds"),
    (600, "十分", "ten minutes"),
    (3600, "一時間", "one hour"),
    (3725, "一時間二分五秒", "one hour two minutes five seconds"),
    (7260, "二時間一分", "two hours one minute"),
])
def test_durations(seconds: int, ja: str, en: str) -> None:
    assert JAPANESE.duration(seconds) == ja
    assert ENGLISH.duration(seconds) == en


def test_remaining_time_sentences() -> None:
    assert JAPANESE.remaining(60) == "残り一分です"
    assert ENGLISH.remaining(60) == "one minute remaining"
    assert JAPANESE.remaining(30) == "残り三十秒です"
    for bad in (-1, True):
        with pytest.raises(ValueError, match="non-negative seconds"):
            JAPANESE.duration(bad)


@pytest.mark.parametrize(("at", "ja", "en"), [
    (time(0, 0), "午前零時", "twelve a.m."),
    (time(9, 0), "午前九時", "nine a.m."),
    (time(8, 30), "午前八時三十分", "eight thirty a.m."),
    (time(12, 0), "午後零時", "twelve p.m."),
    (time(15, 15), "午後三時十五分", "three fifteen p.m."),
    (time(15, 5), "午後三時五分", "three oh five p.m."),
    (time(23, 59), "午後十一時五十九分", "eleven fifty-nine p.m."),
])
def test_times_of_day(at: time, ja: str, en: str) -> None:
    assert JAPANESE.clock(at) == ja
    assert ENGLISH.clock(at) == en


@pytest.mark.parametrize(("on", "ja", "en"), [
    (date(2026, 12, 4), "十二月四日金曜日", "Friday, December fourth"),
    (date(2027, 1, 1), "一月一日金曜日", "Friday, January first"),
    (date(2026, 3, 22), "三月二十二日日曜日", "Sunday, March twenty-second"),
    (date(2026, 5, 30), "五月三十日土曜日", "Saturday, May thirtieth"),
    (date(2026, 5, 12), "五月十二日火曜日", "Tuesday, May twelfth"),
    (date(2026, 5, 23), "五月二十三日土曜日", "Saturday, May twenty-third"),
])
def test_dates(on: date, ja: str, en: str) -> None:
    assert JAPANESE.day(on) == ja
    assert ENGLISH.day(on) == en


def test_reading_by_language() -> None:
    assert reading(Language.JAPANESE) is JAPANESE
    assert reading(Language.ENGLISH) is ENGLISH
