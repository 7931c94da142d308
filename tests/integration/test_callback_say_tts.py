"""A say node's text rendered by the real Open JTalk through the adapter (IvrRunner and
IvrServices) into the guidance library, where the callback Asterisk reads it: played as
``sound:cbgw-guidance/_tts/<key>``, cached by the filled text."""

from __future__ import annotations

import asyncio
import time
import wave
from pathlib import Path

from callback_server.ivr_services import IvrServices, prerender, site_speech
from ivr_platform.guidance import GUIDANCE_PREFIX
from ivr_platform.media_config import MediaSettings
from shared.language import Language
from tests.unit.test_callback_ivr_say import SAY, STATIC
from tests.unit.test_callback_ivr_verbs import flow_of
from tests.unit.test_callback_ivr_verbs_runner import CHANNEL, answered
from tests.unit.test_callback_stasis import Call

SPEECH = f"{GUIDANCE_PREFIX}_tts/"


async def played_speech(call: Call, timeout_s: float = 60.0) -> str:
    """The rendered text the call plays, once it does (a render takes a moment)."""
    for _ in range(int(timeout_s * 20)):
        media = [m for _, played, *_ in call.ari.named("play") for m in played
                 if m.startswith(SPEECH)]
        if media:
            return media[-1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"nothing rendered was played: {call.ari.named('play')}")


def wav_of(guidance: Path, media: str) -> Path:
    return guidance / "_tts" / f"{media.removeprefix(SPEECH)}.wav"


async def keyed(services: IvrServices, digits: str) -> Call:
    call = await answered(flow_of(SAY), services=services)
    await call.finish_prompt(CHANNEL)
    await call.keys(CHANNEL, digits)
    return call


async def test_open_jtalk_renders_the_filled_text_once_per_text_into_the_library(
        tmp_path: Path) -> None:
    guidance = tmp_path / "cbgw-guidance"
    speech = site_speech(MediaSettings(guidance_dir=guidance))
    services = IvrServices(speech=speech)
    first = await played_speech(await keyed(services, "4071"))
    wav = wav_of(guidance, first)
    with wave.open(str(wav), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
        assert w.getnframes() / w.getframerate() > 2.0      # the sentence, not a clip
    assert (guidance / "_tts").stat().st_mode & 0o755 == 0o755   # Asterisk reads it
    rendered = wav.stat().st_ino              # a render publishes a new file (os.replace)

    used = time.time()
    again = await keyed(services, "4071")                  # the same filled text: a hit
    plays = [m for _, played, *_ in again.ari.named("play") for m in played]
    assert plays[-1] == first                              # at once, without a render
    assert wav.stat().st_ino == rendered
    assert wav.stat().st_mtime >= used - 0.01               # touched: its last use (LRU)

    other = await played_speech(await keyed(services, "4072"))
    assert other != first and wav_of(guidance, other).is_file()
    assert sorted(p.name for p in (guidance / "_tts").glob("*.wav")) == sorted(
        [wav.name, wav_of(guidance, other).name])


async def test_a_fixed_text_is_rendered_before_any_call(tmp_path: Path) -> None:
    speech = site_speech(MediaSettings(guidance_dir=tmp_path))
    assert speech is not None
    flow = flow_of(STATIC)
    await prerender(speech, flow, Language.JAPANESE)
    ready = speech.cached("Welcome.", Language.ENGLISH)    # the node's language: en
    assert ready is not None
    call = await answered(flow, services=IvrServices(speech=speech))
    assert call.ari.named("play")[-1][1] == (f"{SPEECH}{ready.stem}",)
