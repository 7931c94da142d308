"""A merchant's uploaded guidance played by the real callback Asterisk 22: converted by
ffmpeg into the instance's ``sounds/cbgw-guidance`` (what ``[media] guidance_dir`` points
at), then played on a call answered by SIPp as ``sound:cbgw-guidance/<merchant>/<name>``,
in either language; each plays as long as its file (one of 1 s, one of 3 s), and a
guidance that is not there fails at once. A say node's text rendered by Open JTalk into
the library's ``_tts`` plays there too.

Holds the stack's lock (``demo.stack.LOCK_PATH``) while it drives the shared Asterisk."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from callback_server.ivr_services import IvrServices, site_speech
from ivr_platform.audio import wav_seconds
from ivr_platform.guidance import GuidanceLibrary
from ivr_platform.media_config import MediaSettings
from ivr_platform.speech import spoken_text
from shared.ari import Connected, PlaybackFinished, PlaybackStarted, StasisStart
from shared.language import Language
from tests.harness.asterisk import (
    AsteriskSite,
    expect_event,
    qualify,
    reset,
    running_locked,
    sounds_dir,
)
from tests.harness.sipp import role
from tests.integration.test_ivr_audio import tone

pytestmark = pytest.mark.e2e

MERCHANT = "e2e-guidance"
CUSTOMER = "09012345678"


@pytest.fixture(scope="module")
def callback() -> Iterator[AsteriskSite]:
    with running_locked("callback") as site:
        yield site


@pytest.fixture
async def library(callback: AsteriskSite, tmp_path: Path) -> AsyncIterator[GuidanceLibrary]:
    await reset(callback)
    host, _ = sounds_dir("callback", "cbgw-guidance", callback.root)
    library = GuidanceLibrary(host)
    await library.add(MERCHANT, "one-second", tone(tmp_path / "one.mp3", 1.0))
    await library.add(MERCHANT, "three-seconds", tone(tmp_path / "three.m4a", 3.0))
    yield library
    shutil.rmtree(host / MERCHANT)


async def test_uploaded_guidance_plays_as_long_as_its_file_in_either_language(
        callback: AsteriskSite, library: GuidanceLibrary, tmp_path: Path) -> None:
    with role("uas_answer_forever.xml", "carrier-b", tmp_path):
        await qualify(callback, "carrier-b")
        async with callback.client() as ari:
            events = ari.events()
            await expect_event(events, Connected)     # the Stasis app exists: originate
            try:
                await ari.originate(f"PJSIP/{CUSTOMER}@carrier-b", channel_id="guidance-b",
                                    caller_id="0120123456", timeout=10)
                await expect_event(events, StasisStart, channel_id="guidance-b")
                for name, language, seconds in (("one-second", "ja", 1.0),
                                                ("three-seconds", "en", 3.0)):
                    await ari.play("guidance-b", [f"sound:cbgw-guidance/{MERCHANT}/{name}"],
                                   playback_id=f"p-{name}", lang=language)
                    started = await expect_event(events, PlaybackStarted,
                                                 channel_id="guidance-b")
                    finished = await expect_event(events, PlaybackFinished,
                                                  channel_id="guidance-b", within_s=8)
                    assert finished.playback.state == "done", finished
                    assert started.timestamp and finished.timestamp
                    played = (finished.timestamp - started.timestamp).total_seconds()
                    assert seconds - 0.3 <= played <= seconds + 1.0, (name, played)
                await ari.play("guidance-b", [f"sound:cbgw-guidance/{MERCHANT}/never-uploaded"],
                               playback_id="p-missing", lang="ja")
                missing = await expect_event(events, PlaybackFinished, channel_id="guidance-b",
                                             within_s=3)
                assert missing.playback.state == "failed", missing
                await ari.hangup("guidance-b")
            finally:
                await events.aclose()


async def test_a_say_text_rendered_into_the_library_plays_as_long_as_its_file(
        callback: AsteriskSite, tmp_path: Path) -> None:
    """What a flow's say node plays: Open JTalk's render in the library's ``_tts``."""
    await reset(callback)
    host, _ = sounds_dir("callback", "cbgw-guidance", callback.root)
    services = IvrServices(speech=site_speech(MediaSettings(guidance_dir=host)))
    text = spoken_text((("ご注文番号は", False), ("4071", True), ("ですね。", False)),
                       Language.JAPANESE)
    media = await services.speak(text, Language.JAPANESE)
    assert media is not None and media.startswith("sound:cbgw-guidance/_tts/")
    seconds = wav_seconds(host / "_tts" / f"{media.rsplit('/', 1)[1]}.wav")
    with role("uas_answer_forever.xml", "carrier-b", tmp_path):
        await qualify(callback, "carrier-b")
        async with callback.client() as ari:
            events = ari.events()
            await expect_event(events, Connected)
            try:
                await ari.originate(f"PJSIP/{CUSTOMER}@carrier-b", channel_id="say-b",
                                    caller_id="0120123456", timeout=10)
                await expect_event(events, StasisStart, channel_id="say-b")
                await ari.play("say-b", [media], playback_id="p-say", lang="ja")
                started = await expect_event(events, PlaybackStarted, channel_id="say-b")
                finished = await expect_event(events, PlaybackFinished, channel_id="say-b",
                                              within_s=seconds + 8)
                assert finished.playback.state == "done", finished
                assert started.timestamp and finished.timestamp
                played = (finished.timestamp - started.timestamp).total_seconds()
                assert seconds - 0.3 <= played <= seconds + 1.0, (seconds, played)
                await ari.hangup("say-b")
            finally:
                await events.aclose()
