"""A ``digits:`` read-back in Japanese on the real callback Asterisk 22: ``digits:123``
with ``lang=ja`` plays the Japanese digits rendered at install (イチ, ニー, サン), for as
long as they are, not Asterisk's English recordings it falls back to without them;
``lang=en`` still plays Asterisk's own English digits.

Holds the stack's lock (``demo.stack.LOCK_PATH``) while it drives the shared Asterisk."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest

from ivr_platform.speech import JAPANESE
from ivr_platform.tts import PromptCache
from shared.ari import Connected, PlaybackFinished, PlaybackStarted, StasisStart
from shared.language import Language
from tests.harness.asterisk import (
    AsteriskSite,
    expect_event,
    instance_tool,
    locked_site_fixture,
    qualify,
    reset,
    sounds_dir,
)
from tests.harness.sipp import role

pytestmark = pytest.mark.e2e

CUSTOMER = "09012345678"
CODE = "123"


callback = locked_site_fixture("callback")


def seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


async def test_digits_read_back_in_japanese_plays_the_japanese_digits(
        callback: AsteriskSite, tmp_path: Path) -> None:
    await reset(callback)
    cache = PromptCache(tmp_path / "cache")   # each digit as the platform reads it
    japanese = sum([seconds(await cache.get(JAPANESE.digits(d), Language.JAPANESE))
                    for d in CODE])
    _, inner = sounds_dir("callback", "en/digits", callback.root)   # Asterisk's own
    english_dir = callback.root / instance_tool().resolve_in_root(callback.root, inner).lstrip("/")
    english = sum(seconds(english_dir / f"{d}.wav") for d in CODE)
    with role("uas_answer_forever.xml", "carrier-b", tmp_path):
        await qualify(callback, "carrier-b")
        async with callback.client("cbgw-digits-test") as ari:   # its own Stasis app
            events = ari.events()
            await expect_event(events, Connected)
            try:
                await ari.originate(f"PJSIP/{CUSTOMER}@carrier-b", channel_id="digits-b",
                                    caller_id="0120123456", timeout=10)
                await expect_event(events, StasisStart, channel_id="digits-b")
                played = {}
                for language in ("ja", "en"):
                    await ari.play("digits-b", [f"digits:{CODE}"],
                                   playback_id=f"d-{language}", lang=language)
                    started = await expect_event(events, PlaybackStarted,
                                                 channel_id="digits-b")
                    finished = await expect_event(events, PlaybackFinished,
                                                  channel_id="digits-b", within_s=10)
                    assert finished.playback.state == "done", finished
                    assert started.timestamp and finished.timestamp
                    played[language] = (finished.timestamp - started.timestamp).total_seconds()
                await ari.hangup("digits-b")
            finally:
                await events.aclose()
    assert japanese - 0.2 <= played["ja"] <= japanese + 0.4, (played, japanese, english)
    assert english - 0.2 <= played["en"] <= english + 0.4, (played, japanese, english)
