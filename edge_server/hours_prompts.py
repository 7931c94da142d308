"""The closed messages, rendered before the calls that need them.

Out of hours the flow asks for a sentence saying when the line opens
(:func:`ivr_platform.hours_speech.closed_announcement`): 「ただいまの時間は、営業時間外です。
明日は、午前九時から営業いたします。」. Open JTalk takes about half a second for it, far too
long to keep a caller waiting for early media, so nothing is rendered while a caller
waits. A day's sentences are few and known in advance
(:func:`ivr_platform.hours_speech.closed_texts`: they change only at the day's window
boundaries), so :meth:`ClosedPrompts.run` renders, for every number's hours in its
merchant's language, today's and tomorrow's (Asia/Tokyo) into the prompt cache, and again
after each Tokyo midnight. At call time :meth:`ClosedPrompts.media` is a hash and a
``stat``: the file when it is there, else ``None`` (the caller hears the fixed
``sound:cbgw/closed`` instead) and the sentence is rendered for the next caller.

The cache directory must be one the edge's Asterisk can read (it runs in its own root):
``[edge.hours] prompts_dir`` is where this process writes, ``asterisk_prompts_dir`` the
same directory as Asterisk sees it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from ivr_platform.hours import BusinessHours
from ivr_platform.hours_speech import closed_texts
from ivr_platform.speech import reading
from ivr_platform.tts import PromptCache, TtsError
from shared.language import Language
from shared.timeutil import TOKYO

log = logging.getLogger("edge.hours")

#: what one pass renders: these many local days from today
DAYS_AHEAD = 2
#: a pass runs at least this often (and just after each Tokyo midnight)
REFRESH_S = 3600.0


class ClosedPrompts:
    """The pre-rendered closed messages of a set of schedules, each in its language."""

    def __init__(self, cache: PromptCache, asterisk_dir: Path,
                 schedules: Iterable[tuple[BusinessHours, Language]],
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.cache = cache
        self.asterisk_dir = asterisk_dir
        self.schedules = tuple(dict.fromkeys(schedules))
        self.clock = clock
        self._late: set[asyncio.Task[None]] = set()

    def media(self, text: str, language: Language) -> str | None:
        """``sound:`` URI of the rendered sentence for ARI ``play``; None (and a render
        started for the next caller) if it is not rendered yet."""
        if self.cache.cached(text, language) is not None:
            return f"sound:{self.asterisk_dir / self.cache.key(text, language)}"
        log.warning("closed message not rendered ahead (the fixed one plays): %s", text)
        task = asyncio.create_task(self._render_one(text, language))
        self._late.add(task)
        task.add_done_callback(self._late.discard)
        return None

    def texts(self, days: Iterable[date]) -> set[tuple[str, Language]]:
        """Every sentence a call on one of ``days`` can hear, with its language."""
        return {(text, language) for day in days for hours, language in self.schedules
                for text in closed_texts(hours, day, reading(language))}

    async def render_ahead(self, now: datetime) -> int:
        """Render today's and the next days' sentences; returns how many were missing."""
        today = now.astimezone(TOKYO).date()
        missing = [(text, language) for text, language
                   in sorted(self.texts(today + timedelta(days=n) for n in range(DAYS_AHEAD)))
                   if self.cache.cached(text, language) is None]
        for text, language in missing:
            await self._render_one(text, language)
        return len(missing)

    async def run(self) -> None:
        """Render ahead now, then after every Tokyo midnight (and at least hourly)."""
        while True:
            now = self.clock()
            rendered = await self.render_ahead(now)
            if rendered:
                log.info("closed messages: %d rendered ahead", rendered)
            await asyncio.sleep(_seconds_to_midnight(now))

    async def _render_one(self, text: str, language: Language) -> None:
        try:
            await self.cache.get(text, language)
        except (TtsError, OSError) as exc:
            log.error("cannot render the closed message %r: %s", text, exc)


def _seconds_to_midnight(now: datetime) -> float:
    """Until just after the next Tokyo midnight, at most :data:`REFRESH_S`."""
    local = now.astimezone(TOKYO)
    midnight = datetime(local.year, local.month, local.day, tzinfo=TOKYO) + timedelta(days=1)
    return min(REFRESH_S, (midnight - local).total_seconds() + 1.0)
