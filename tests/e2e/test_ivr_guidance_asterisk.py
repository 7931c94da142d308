"""A merchant's uploaded guidance played by the real callback Asterisk 22: converted by
ffmpeg into the instance's ``sounds/cbgw-guidance`` (what ``[media] guidance_dir`` points
at), then played on a call answered by SIPp as ``sound:cbgw-guidance/<merchant>/<name>``,
in either language; each plays as long as its file (one of 1 s, one of 3 s), and a
guidance that is not there fails at once. A say node's text rendered by Open JTalk into
the library's ``_tts`` plays there too.

Holds the stack's lock (``demo.stack.LOCK_PATH``) while it drives the shared Asterisk."""

from __future__ import annotations

import contextlib
import functools
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from callback_server.ivr_services import IvrServices, site_speech
from ivr_platform.audio import wav_seconds
from ivr_platform.guidance import GuidanceLibrary, plays
from ivr_platform.media_config import MediaSettings
from ivr_platform.speech import spoken_text
from shared.ari import (
    AriClient,
    Connected,
    Event,
    PlaybackFinished,
    PlaybackStarted,
    StasisStart,
)
from shared.language import Language
from tests.harness.asterisk import (
    AsteriskSite,
    expect_event,
    locked_site_fixture,
    qualify,
    reset,
    sounds_dir,
)
from tests.harness.sipp import role
from tests.integration.test_ivr_audio import tone

pytestmark = pytest.mark.e2e

MERCHANT = "e2e-guidance"
CUSTOMER = "09012345678"


callback = locked_site_fixture("callback")


@pytest.fixture
async def library(callback: AsteriskSite, tmp_path: Path) -> AsyncIterator[GuidanceLibrary]:
    await reset(callback)
    host, _ = sounds_dir("callback", "cbgw-guidance", callback.root)
    library = GuidanceLibrary(host)
    await library.add(MERCHANT, "one-second", tone(tmp_path / "one.mp3", 1.0))
    await library.add(MERCHANT, "three-seconds", tone(tmp_path / "three.m4a", 3.0))
    yield library
    shutil.rmtree(host / MERCHANT)


Play = Callable[..., Awaitable[float | None]]


async def play_seconds(ari: AriClient, events: AsyncIterator[Event], channel_id: str,
                       media: str, lang: str, within_s: float = 8.0) -> float | None:
    """How long ``media`` played on the channel with ``lang`` (None: it failed)."""
    await ari.play(channel_id, [media], playback_id=f"p-{uuid.uuid4()}", lang=lang)
    seen: list[Event] = []      # a playback that fails may finish without starting
    finished = await expect_event(events, PlaybackFinished, channel_id=channel_id,
                                  within_s=within_s, seen=seen)
    if finished.playback.state != "done":
        return None
    started = next(e for e in seen if isinstance(e, PlaybackStarted))
    assert started.timestamp and finished.timestamp
    return (finished.timestamp - started.timestamp).total_seconds()


@contextlib.asynccontextmanager
async def answered(callback: AsteriskSite, tmp_path: Path, channel_id: str
                   ) -> AsyncIterator[Play]:
    """A call answered by SIPp in the Stasis app: how long a media plays on it
    (``play(media, lang, within_s=8)``, :func:`play_seconds`)."""
    with role("uas_answer_forever.xml", "carrier-b", tmp_path):
        await qualify(callback, "carrier-b")
        async with callback.client() as ari:
            events = ari.events()
            await expect_event(events, Connected)     # the Stasis app exists: originate
            try:
                await ari.originate(f"PJSIP/{CUSTOMER}@carrier-b", channel_id=channel_id,
                                    caller_id="0120123456", timeout=10)
                await expect_event(events, StasisStart, channel_id=channel_id)
                yield functools.partial(play_seconds, ari, events, channel_id)
                await ari.hangup(channel_id)
            finally:
                await events.aclose()


async def test_uploaded_guidance_plays_as_long_as_its_file_in_either_language(
        callback: AsteriskSite, library: GuidanceLibrary, tmp_path: Path) -> None:
    async with answered(callback, tmp_path, "guidance-b") as play:
        for name, language, seconds in (("one-second", "ja", 1.0),
                                        ("three-seconds", "en", 3.0)):
            played = await play(f"sound:cbgw-guidance/{MERCHANT}/{name}", language)
            assert played is not None and seconds - 0.3 <= played <= seconds + 1.0, (
                name, played)
        assert await play(f"sound:cbgw-guidance/{MERCHANT}/never-uploaded", "ja",
                          within_s=3) is None


async def test_a_guidance_per_language_plays_for_calls_in_that_language_with_a_fallback(
        callback: AsteriskSite, library: GuidanceLibrary, tmp_path: Path) -> None:
    """``one-second`` has a 3 s English file beside its file for every language: an
    English call plays the English one, a Japanese call the other; ``english-only`` (an
    English file alone) plays for a Japanese call too (Asterisk's default language), a
    ``japanese-only`` one not for an English call (:func:`ivr_platform.guidance.plays`)."""
    await library.add(MERCHANT, "one-second", tone(tmp_path / "en.mp3", 3.0),
                      Language.ENGLISH)
    await library.add(MERCHANT, "english-only", tone(tmp_path / "en1.mp3", 1.0),
                      Language.ENGLISH)
    await library.add(MERCHANT, "japanese-only", tone(tmp_path / "ja1.mp3", 1.0),
                      Language.JAPANESE)
    try:
        async with answered(callback, tmp_path, "lang-b") as play:
            played = {(name, lang): await play(f"sound:cbgw-guidance/{MERCHANT}/{name}", lang)
                      for name, lang in (("one-second", "en"), ("one-second", "ja"),
                                         ("english-only", "ja"), ("japanese-only", "en"))}
    finally:
        for language in Language:
            shutil.rmtree(library.root(language) / MERCHANT, ignore_errors=True)
    seconds = {key: None if s is None else round(s) for key, s in played.items()}
    assert seconds == {("one-second", "en"): 3, ("one-second", "ja"): 1,
                       ("english-only", "ja"): 1, ("japanese-only", "en"): None}, played
    # what check and the API's in-use guard assume is what Asterisk did
    assert [plays([Language.ENGLISH], Language.JAPANESE),
            plays([Language.JAPANESE], Language.ENGLISH)] == [True, False]


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
    async with answered(callback, tmp_path, "say-b") as play:
        played = await play(media, "ja", within_s=seconds + 8)
    assert played is not None and seconds - 0.3 <= played <= seconds + 1.0, (seconds, played)
