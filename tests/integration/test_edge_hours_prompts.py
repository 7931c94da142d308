"""The edge's closed messages rendered ahead by the real engines (Open JTalk, espeak-ng,
sox), and the call that plays them: a closed call's early media starts from a file on
disk, never from a render; a sentence not rendered yet falls back to the fixed prompt
and is rendered for the next caller."""

from __future__ import annotations

import asyncio
import wave
from datetime import datetime
from pathlib import Path

import pytest

from edge_server.flow_messages import FlowTimings, MerchantSettings, Outcome
from edge_server.hours_prompts import ClosedPrompts
from edge_server.stasis import PRESENTATION_VAR, CallSession, MerchantDirectory, StasisDeps
from edge_server.testing import FakeAri, FakeCallStore, FakeDecider
from ivr_platform.hours import TOKYO, BusinessHours, Window
from ivr_platform.hours_speech import closed_announcement
from ivr_platform.speech import reading
from ivr_platform.tts import PromptCache
from shared import ari
from shared.language import Language
from shared.phone import E164

pytestmark = pytest.mark.integration

DIALED = E164("81120123456")
WEEKDAYS = (Window(9 * 60, 12 * 60), Window(13 * 60, 18 * 60))
HOURS = BusinessHours(weekly=(WEEKDAYS,) * 5 + ((), ()))
TUESDAY_NIGHT = datetime(2026, 12, 8, 20, 0, tzinfo=TOKYO)
ASTERISK_DIR = Path("/var/lib/asterisk-edge/data/sounds/cbgw-hours")


def prompts(tmp_path: Path, at: datetime = TUESDAY_NIGHT) -> ClosedPrompts:
    return ClosedPrompts(PromptCache(tmp_path / "closed"), ASTERISK_DIR,
                         [(HOURS, Language.JAPANESE), (HOURS, Language.ENGLISH)],
                         clock=lambda: at)


def seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


async def test_today_and_tomorrows_sentences_are_rendered_ahead(tmp_path: Path) -> None:
    closed = prompts(tmp_path)
    rendered = await closed.render_ahead(TUESDAY_NIGHT)
    # Tuesday and Wednesday alike: before 09:00 "today at nine", at lunch "today at
    # one", from 18:00 "tomorrow at nine"; in two languages.
    expected = closed.texts([TUESDAY_NIGHT.date(), datetime(2026, 12, 9).date()])
    assert rendered == len(expected) == 6
    say = closed_announcement(HOURS, TUESDAY_NIGHT, reading(Language.JAPANESE))
    assert say == "ただいまの時間は、営業時間外です。明日は、午前九時から営業いたします。"
    wav = closed.cache.cached(say, Language.JAPANESE)
    assert wav is not None and 2.0 < seconds(wav) < 10.0
    assert closed.media(say, Language.JAPANESE) == f"sound:{ASTERISK_DIR / wav.stem}"
    assert await closed.render_ahead(TUESDAY_NIGHT) == 0     # all cached: only stats


async def test_a_closed_call_plays_the_rendered_sentence_and_records_why(
        tmp_path: Path) -> None:
    closed = prompts(tmp_path)
    await closed.render_ahead(TUESDAY_NIGHT)
    fake, store = FakeAri({PRESENTATION_VAR: "allowed_not_screened"}), FakeCallStore()
    deps = StasisDeps(ari=fake, store=store, decider=FakeDecider(),
                      merchants=MerchantDirectory({DIALED: MerchantSettings("acme", hours=HOURS)}),
                      timings=FlowTimings(refusal_guard_s=0.5), resync_grace_s=0.0,
                      clock=lambda: TUESDAY_NIGHT, closed_prompts=closed)
    queue: asyncio.Queue[ari.Event] = asyncio.Queue()
    session = CallSession(deps, ari.StasisStart(ari.Channel(
        id="1700000000.7", caller_number="09012345678", exten="0120123456", state="Ring"),
        args=("inbound",)), queue)
    task = asyncio.create_task(session.run())
    await asyncio.sleep(0.05)
    queue.put_nowait(ari.PlaybackFinished(ari.Playback(id="1700000000.7-pb1", state="done")))
    await asyncio.wait_for(task, 3)
    say = closed_announcement(HOURS, TUESDAY_NIGHT, reading(Language.JAPANESE))
    key = closed.cache.key(say, Language.JAPANESE)
    assert ("play", "1700000000.7", f"sound:{ASTERISK_DIR / key} lang=ja") in fake.calls
    assert ("hangup", "1700000000.7", "busy") in fake.calls and "answer" not in fake.names()
    assert not store.stored
    (record,) = store.recorded
    assert record.outcome is Outcome.CLOSED and record.detail.startswith("outside hours")


async def test_a_sentence_not_rendered_yet_plays_the_fixed_prompt_and_is_rendered_after(
        tmp_path: Path) -> None:
    closed = prompts(tmp_path)
    say = closed_announcement(HOURS, TUESDAY_NIGHT, reading(Language.JAPANESE))
    assert say is not None
    assert closed.media(say, Language.JAPANESE) is None      # the fixed prompt plays
    for _ in range(200):
        if closed.cache.cached(say, Language.JAPANESE):
            break
        await asyncio.sleep(0.05)
    assert closed.media(say, Language.JAPANESE) is not None  # the next caller hears it


