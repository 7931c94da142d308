"""What the IVR says out of hours: why it is closed and when it opens, in both languages."""

from __future__ import annotations

from datetime import date, datetime

import pytest

from ivr_platform.hours import TOKYO, BusinessHours, SpecialDay, Window
from ivr_platform.hours_speech import closed_announcement
from ivr_platform.speech import ENGLISH, JAPANESE

NINE_TO_SIX = (Window.parse("09:00-12:00"), Window.parse("15:00-18:00"))
SHOP = BusinessHours(weekly=(NINE_TO_SIX,) * 5 + ((Window.parse("10:00-12:00"),), ()),
                     special=(SpecialDay(date(2026, 12, 29), date(2027, 1, 3), ()),))


def tokyo(*args: int) -> datetime:
    return datetime(*args, tzinfo=TOKYO)  # type: ignore[misc]


@pytest.mark.parametrize(("at", "ja", "en"), [
    (tokyo(2026, 12, 7, 13, 0),     # Monday lunch break: later today
     "ただいまの時間は、営業時間外です。本日は、午後三時から営業いたします。",
     "We are closed at this time. We open today at three p.m."),
    (tokyo(2026, 12, 7, 7, 30),
     "ただいまの時間は、営業時間外です。本日は、午前九時から営業いたします。",
     "We are closed at this time. We open today at nine a.m."),
    (tokyo(2026, 12, 7, 18, 0),     # Monday evening: tomorrow
     "ただいまの時間は、営業時間外です。明日は、午前九時から営業いたします。",
     "We are closed at this time. We open tomorrow at nine a.m."),
    (tokyo(2026, 12, 13, 10, 0),    # Sunday: Monday
     "本日は定休日です。明日は、午前九時から営業いたします。",
     "We are closed today. We open tomorrow at nine a.m."),
    (tokyo(2026, 5, 1, 18, 30),     # Friday evening: Saturday morning
     "ただいまの時間は、営業時間外です。明日は、午前十時から営業いたします。",
     "We are closed at this time. We open tomorrow at ten a.m."),
    (tokyo(2026, 5, 2, 12, 30),     # Saturday noon, then 3-6 May holidays: Thursday the 7th
     "ただいまの時間は、営業時間外です。次の営業は、五月七日木曜日、午前九時からです。",
     "We are closed at this time. We open on Thursday, May seventh at nine a.m."),
    (tokyo(2026, 5, 4, 10, 0),      # みどりの日
     "本日は祝日のため、休業しております。次の営業は、五月七日木曜日、午前九時からです。",
     "We are closed today for a public holiday. We open on Thursday, May seventh at nine a.m."),
    (tokyo(2026, 12, 30, 10, 0),    # 年末年始: Monday 4 January
     "本日は休業日です。次の営業は、一月四日月曜日、午前九時からです。",
     "We are closed today. We open on Monday, January fourth at nine a.m."),
])
def test_closed_announcements(at: datetime, ja: str, en: str) -> None:
    assert closed_announcement(SHOP, at, JAPANESE) == ja
    assert closed_announcement(SHOP, at, ENGLISH) == en


def test_nothing_to_say_while_open_and_no_opening_to_promise() -> None:
    assert closed_announcement(SHOP, tokyo(2026, 12, 7, 9, 0), JAPANESE) is None
    never = BusinessHours(weekly=((),) * 7)
    assert closed_announcement(never, tokyo(2026, 12, 7, 9, 0), JAPANESE) == "本日は定休日です。"
