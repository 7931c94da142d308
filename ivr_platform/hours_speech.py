"""What the IVR says when a call comes in out of hours (pure): why, and when it opens.

``closed_announcement(hours, at, JAPANESE)``, for a Friday evening before a holiday
Monday::

    ただいまの時間は、営業時間外です。次の営業は、五月七日木曜日、午前九時からです。

The first sentence follows :class:`~ivr_platform.hours.Status` (営業時間外, 祝日, 定休日,
休業日); the second says today, tomorrow or the day, from
:meth:`~ivr_platform.hours.BusinessHours.next_opening` (none when it never opens again).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from ivr_platform.hours import MINUTES_PER_DAY, BusinessHours, Status
from ivr_platform.speech import Reading
from shared.language import Language
from shared.timeutil import TOKYO

_WHY = {
    Language.JAPANESE: {
        Status.OUTSIDE_WINDOWS: "ただいまの時間は、営業時間外です。",
        Status.HOLIDAY: "本日は祝日のため、休業しております。",
        Status.CLOSED_WEEKDAY: "本日は定休日です。",
        Status.SPECIAL_DAY: "本日は休業日です。",
    },
    Language.ENGLISH: {
        Status.OUTSIDE_WINDOWS: "We are closed at this time.",
        Status.HOLIDAY: "We are closed today for a public holiday.",
        Status.CLOSED_WEEKDAY: "We are closed today.",
        Status.SPECIAL_DAY: "We are closed today.",
    },
}


def closed_announcement(hours: BusinessHours, at: datetime, reading: Reading) -> str | None:
    """The sentences for a call at ``at``; None while the line is open."""
    status = hours.status(at)
    if status.open:
        return None
    why = _WHY[reading.language][status.status]
    opening = hours.next_opening(at)
    if opening is None:
        return why
    return why + _when(opening, at.astimezone(TOKYO), reading)


def closed_texts(hours: BusinessHours, day: date, reading: Reading) -> frozenset[str]:
    """Every :func:`closed_announcement` a call on the local day ``day`` can hear.

    Within a day the sentences change only at the day's window boundaries (why it is
    closed, and the next opening, are the same between two of them), so one instant per
    stretch finds them all: at most ``2 * MAX_WINDOWS + 1``. What to render ahead of the
    day's calls."""
    plan = hours.plan(day)
    minutes = {0, *(w.start for w in plan.windows),
               *(w.end for w in plan.windows if w.end < MINUTES_PER_DAY)}
    midnight = datetime(day.year, day.month, day.day, tzinfo=TOKYO)
    texts = (closed_announcement(hours, midnight + timedelta(minutes=m), reading)
             for m in sorted(minutes))
    return frozenset(t for t in texts if t is not None)


def _when(opening: datetime, now: datetime, reading: Reading) -> str:
    clock = reading.clock(opening.time())
    days = (opening.date() - now.date()).days
    if reading.language is Language.JAPANESE:
        if days == 0:
            return f"本日は、{clock}から営業いたします。"
        if days == 1:
            return f"明日は、{clock}から営業いたします。"
        return f"次の営業は、{reading.day(opening.date())}、{clock}からです。"
    if days == 0:   # clock ends with "a.m." or "p.m.": the sentence's full stop
        return f" We open today at {clock}"
    if days == 1:
        return f" We open tomorrow at {clock}"
    return f" We open on {reading.day(opening.date())} at {clock}"

