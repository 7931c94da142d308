"""The sounds installed on the real callback Asterisk 22 come in G.711 too, and a prompt on
a μ-law call plays untranslated: every ``.wav`` of the prompts, the Japanese digits and
the hold music has its ``.ulaw`` and ``.alaw`` beside it, decoding back to the wav's
samples within G.711's error, and while ``sound:cbgw/confirm-callback`` plays to a carrier
that answered PCMU, ``core show channel`` says ``WriteTranscode: No`` (with the ``.wav``
alone it said ``Yes (slin@8000)->(ulaw@8000)``: bench/asterisk_media.py), for as long as
the prompt is.

Holds the stack's lock (``demo.stack.LOCK_PATH``) while it drives the shared Asterisk."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import pytest

from shared.ari import Connected, PlaybackFinished, PlaybackStarted, StasisStart
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
from tests.unit.test_deploy_asterisk_sounds import DECODE, wav_samples, within_g711_error

pytestmark = pytest.mark.e2e

CUSTOMER = "09012345678"
PROMPT = "confirm-callback"


callback = locked_site_fixture("callback")


def installed_wavs(site: AsteriskSite) -> list[Path]:
    tool = instance_tool()
    installed = tool.load_site(site.name, site.root)
    data = installed.host(installed.directories()["astdatadir"])
    found = [*data.glob(f"{tool.HOLD_MUSIC_DIR}/*.wav"), *data.glob("sounds/ja/digits/*.wav")]
    for language in tool.LANGUAGES:
        found += data.glob(f"sounds/{language}/cbgw/*.wav")
    return found


def test_every_installed_sound_is_also_ulaw_and_alaw_within_g711_error(
        callback: AsteriskSite) -> None:
    wavs = installed_wavs(callback)
    assert len(wavs) > 100     # both languages' prompts, ten digits, the hold tune
    assert any(w.parent.name == "digits" for w in wavs)
    assert any(w.name == "hold.wav" for w in wavs)
    for wav in wavs:
        samples = wav_samples(wav.read_bytes())
        for law, decode in DECODE.items():
            coded = wav.with_suffix(f".{law}").read_bytes()
            assert len(coded) == len(samples), wav
            assert all(within_g711_error(s, decode(b)) for s, b in zip(samples, coded,
                                                                        strict=True)), wav


async def test_a_prompt_on_a_ulaw_call_plays_untranslated_for_its_length(
        callback: AsteriskSite, tmp_path: Path) -> None:
    await reset(callback)
    wav, _ = sounds_dir("callback", f"ja/cbgw/{PROMPT}.wav", callback.root)
    with wave.open(str(wav), "rb") as w:
        length_s = w.getnframes() / w.getframerate()
    with role("uas_answer_forever.xml", "carrier-b", tmp_path):   # answers PCMU only
        await qualify(callback, "carrier-b")
        async with callback.client("cbgw-g711-test") as ari:
            events = ari.events()
            await expect_event(events, Connected)
            try:
                await ari.originate(f"PJSIP/{CUSTOMER}@carrier-b", channel_id="g711-b",
                                    caller_id="0120123456", timeout=10)
                start = await expect_event(events, StasisStart, channel_id="g711-b")
                await ari.play("g711-b", [f"sound:cbgw/{PROMPT}"], playback_id="g711-p",
                               lang="ja")
                started = await expect_event(events, PlaybackStarted, channel_id="g711-b")
                shown = await asyncio.to_thread(
                    callback.cli, f"core show channel {start.channel.name}")
                finished = await expect_event(events, PlaybackFinished, channel_id="g711-b",
                                              within_s=length_s + 5)
                await ari.hangup("g711-b")
            finally:
                await events.aclose()
    transcode = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
                 for line in shown.splitlines() if "Transcode:" in line}
    assert transcode == {"WriteTranscode": "No", "ReadTranscode": "No"}, shown
    assert "NativeFormats: (ulaw)" in shown, shown
    assert finished.playback.state == "done", finished
    assert started.timestamp and finished.timestamp
    played_s = (finished.timestamp - started.timestamp).total_seconds()
    assert length_s - 0.2 <= played_s <= length_s + 0.4, (played_s, length_s)
