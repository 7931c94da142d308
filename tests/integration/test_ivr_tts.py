"""Prompts rendered by the real engines (Open JTalk, espeak-ng, sox) and cached by hash.

A missing engine, dictionary, voice or sox fails these tests with the Debian package to
install (the Makefile's system-deps installs them, Debian contrib for the voice).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import wave
from datetime import datetime
from datetime import time as clock
from pathlib import Path

import pytest

from ivr_platform.cli import main
from ivr_platform.hours import TOKYO, BusinessHours, Window
from ivr_platform.hours_speech import closed_announcement
from ivr_platform.speech import ENGLISH, JAPANESE
from ivr_platform.tts import (
    PLAY_GRACE_S,
    CacheLimits,
    EngineMissing,
    EspeakVoice,
    Evicted,
    OpenJTalkVoice,
    PromptCache,
)
from shared.language import Language
from shared.phone import normalise

SHORT = "お電話ありがとうございます。"
LONG = ("お電話ありがとうございます。ただいま営業時間外です。営業時間は、平日の"
        "午前九時から午後六時までです。恐れ入りますが、営業時間内におかけ直しください。")


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _format(path: Path) -> tuple[int, int, int, float]:
    with wave.open(str(path), "rb") as w:
        return w.getnchannels(), w.getsampwidth(), w.getframerate(), (
            w.getnframes() / w.getframerate())


async def test_japanese_sentence_is_8khz_16bit_mono_and_as_long_as_its_text(
        tmp_path: Path) -> None:
    cache = PromptCache(tmp_path / "prompts")
    short = await cache.get(SHORT, Language.JAPANESE)
    long = await cache.get(LONG, Language.JAPANESE)
    channels, width, rate, short_s = _format(short)
    assert (channels, width, rate) == (1, 2, 8000)
    long_s = _format(long)[3]
    assert short_s > 1.0, short_s
    # 74 characters against 14 (about 5 times as long): speech, not a fixed clip
    ratio = long_s / short_s
    assert 2.5 < ratio < 8, (short_s, long_s)
    assert short.parent == tmp_path / "prompts" and short.suffix == ".wav"
    assert PromptCache.media_uri(short) == f"sound:{short.with_suffix('')}"


async def test_english_with_espeak(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path)
    path = await cache.get(f"You have {ENGLISH.remaining(60)}.", Language.ENGLISH)
    channels, width, rate, seconds = _format(path)
    assert (channels, width, rate) == (1, 2, 8000)
    assert seconds > 1.0


async def test_one_text_renders_to_the_same_bytes_every_time(tmp_path: Path) -> None:
    """sox runs repeatable (``-R``): unseeded, its resampling dither made every render of
    a text different, and one render of a test sentence in about 40 was transcribed
    differently (measured: 4 of 150)."""
    renders = [(await PromptCache(tmp_path / str(i)).get(SHORT, Language.JAPANESE)).read_bytes()
               for i in range(3)]
    english = [(await PromptCache(tmp_path / f"en{i}").get("call me back tomorrow",
                                                           Language.ENGLISH)).read_bytes()
               for i in range(2)]
    assert renders[0] == renders[1] == renders[2]
    assert english[0] == english[1]


async def test_a_hit_costs_a_hash_and_a_stat_and_never_renders_again(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path)
    first = await cache.get(SHORT, Language.JAPANESE)
    inode = first.stat().st_ino           # a render publishes a new file (os.replace)
    assert cache.cached(SHORT, Language.JAPANESE) == first
    assert cache.cached("  " + SHORT + "\n", Language.JAPANESE) == first  # same text
    started = time.perf_counter()
    for _ in range(200):
        assert cache.cached(SHORT, Language.JAPANESE) == first
    per_hit_ms = (time.perf_counter() - started) / 200 * 1000
    assert per_hit_ms < 1.0, per_hit_ms
    assert await cache.get(SHORT, Language.JAPANESE) == first
    assert first.stat().st_ino == inode
    # a different voice option, language or text is a different prompt
    slower = PromptCache(tmp_path, {Language.JAPANESE: OpenJTalkVoice(speed=0.8),
                                    Language.ENGLISH: EspeakVoice()})
    assert slower.key(SHORT, Language.JAPANESE) != cache.key(SHORT, Language.JAPANESE)
    assert cache.key(SHORT, Language.ENGLISH) != cache.key(SHORT, Language.JAPANESE)
    assert cache.key(SHORT + "。", Language.JAPANESE) != cache.key(SHORT, Language.JAPANESE)


async def test_concurrent_requests_render_once_and_leave_only_whole_files(
        tmp_path: Path) -> None:
    cache = PromptCache(tmp_path)
    paths = await asyncio.gather(*(cache.get(LONG, Language.JAPANESE) for _ in range(5)))
    assert len(set(paths)) == 1
    assert _names(tmp_path) == [paths[0].name]


async def test_a_cancelled_caller_does_not_cancel_the_render(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path)
    first = asyncio.create_task(cache.get(LONG, Language.JAPANESE))
    second = asyncio.create_task(cache.get(LONG, Language.JAPANESE))
    await asyncio.sleep(0.05)
    first.cancel()
    path = await second
    assert _format(path)[3] > 3.0
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_missing_component_is_named(tmp_path: Path) -> None:
    for voice, package in [
        (OpenJTalkVoice(program="open_jtalk-not-here"), "apt-get install open-jtalk"),
        (OpenJTalkVoice(dictionary=tmp_path / "nodic"), "open-jtalk-mecab-naist-jdic"),
        (OpenJTalkVoice(voice=tmp_path / "none.htsvoice"),
         "hts-voice-nitech-jp-atr503-m001, Debian contrib"),
    ]:
        cache = PromptCache(tmp_path / "c", {Language.JAPANESE: voice,
                                             Language.ENGLISH: EspeakVoice()})
        with pytest.raises(EngineMissing, match=package):
            await cache.get(SHORT, Language.JAPANESE)
    with pytest.raises(ValueError, match="empty"):
        await PromptCache(tmp_path).get("  ", Language.JAPANESE)
    assert _names(tmp_path / "c") == []


async def test_the_readings_are_what_open_jtalk_says() -> None:
    """The texts of ivr_platform.speech, as Open JTalk's phonemes."""
    jtalk = OpenJTalkVoice()

    async def said(text: str) -> str:
        return " ".join(await jtalk.phonemes(text))

    assert await said(JAPANESE.yen(1200)) == "s e N n i hy a k u e N"
    assert await said(JAPANESE.yen(600)) == "r o cl py a k u e N"
    assert await said(JAPANESE.yen(8000)) == "h a cl s e N e N"
    assert await said(JAPANESE.yen(10000)) == "i ch i m a N e N"
    assert await said(JAPANESE.remaining(60)) == "n o k o r i i cl p u N d e s U"
    # 十分 alone is じゅうぶん ("enough"): in the sentence it is じゅっぷん
    assert await said(JAPANESE.remaining(600)) == "n o k o r i j u cl p u N d e s U"
    assert await said(JAPANESE.remaining(540)) == "n o k o r i ky u u f u N d e s U"
    assert await said(JAPANESE.clock(clock(15, 15))) == "g o g o s a N j i j u u g o f u N"
    assert await said(JAPANESE.clock(clock(0, 0))) == "g o z e N r e e j i"
    assert await said(JAPANESE.phone(normalise("090-1234-5678"))) == (
        "z e r o pau ky u u pau z e r o pau n o pau i ch i pau n i i pau s a N pau "
        "y o N pau n o pau g o o pau r o k u pau n a n a pau h a ch i")
    # out of hours before the May holidays: 七日 is なのか, 明日 is あした
    office = BusinessHours(weekly=((Window.parse("09:00-18:00"),),) * 5 + ((), ()))
    friday_night = datetime(2026, 5, 1, 19, 0, tzinfo=TOKYO)
    announcement = closed_announcement(office, friday_night, JAPANESE)
    assert announcement is not None
    assert (await said(announcement)).endswith(
        "ts u g i n o e e gy o o w a pau g o g a ts u n a n o k a m o k u y o o b i pau "
        "g o z e N k u j i k a r a d e s U")
    monday = closed_announcement(office, datetime(2026, 12, 7, 19, 0, tzinfo=TOKYO), JAPANESE)
    assert monday is not None
    assert "a sh I t a w a" in await said(monday)


def test_the_cli_renders_and_prints_the_prompt(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["say", SHORT, "--cache", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    path = Path(result["path"])
    assert path.parent == tmp_path and result["uri"] == f"sound:{path.with_suffix('')}"
    assert result["seconds"] == round(_format(path)[3], 2) > 1.0
    assert main(["say", "   ", "--cache", str(tmp_path)]) == 2
    assert "nothing to say" in capsys.readouterr().err


def test_cache_directory_is_created(tmp_path: Path) -> None:
    PromptCache(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()
    assert os.access(tmp_path / "a" / "b", os.W_OK)


DAY = 86400.0


async def test_evict_removes_unused_renders_by_age_then_least_recently_used_by_size(
        tmp_path: Path) -> None:
    cache = PromptCache(tmp_path)
    texts = [f"ご注文番号{n}番ですね。" for n in range(4)]
    paths = [await cache.get(text, Language.JAPANESE) for text in texts]
    now = time.time()
    # last used: 40 days, 10 days, 2 days and 1 hour ago; the second used again just now
    for path, days in zip(paths, (40, 10, 2, 1 / 24), strict=True):
        os.utime(path, (now - days * DAY, now - days * DAY))
    assert cache.cached(texts[1], Language.JAPANESE) == paths[1]
    sizes = [p.stat().st_size for p in paths]

    # past the age: only the one unused for 40 days
    roomy = CacheLimits(max_bytes=sum(sizes), max_age_s=30 * DAY)
    assert cache.evict(roomy) == Evicted(1, sizes[0])
    assert _names(tmp_path) == sorted(p.name for p in paths[1:])
    # over the size: the least recently used first (2 days ago), not the one used now
    tight = CacheLimits(max_bytes=sizes[1] + sizes[3], max_age_s=30 * DAY)
    assert cache.evict(tight) == Evicted(1, sizes[2])
    assert _names(tmp_path) == sorted(p.name for p in (paths[1], paths[3]))
    # an evicted text is a miss, rendered again on the next call
    assert cache.cached(texts[0], Language.JAPANESE) is None
    assert await cache.get(texts[0], Language.JAPANESE) == paths[0]
    assert paths[0].is_file()


async def test_evict_never_removes_a_render_handed_out_within_its_length_and_the_grace(
        tmp_path: Path) -> None:
    cache = PromptCache(tmp_path)
    playing = await cache.get(LONG, Language.JAPANESE)       # handed out just now
    seconds = _format(playing)[3]
    now = time.time()
    # no room at all and no age allowed: it stays all the same
    assert cache.evict(CacheLimits(max_bytes=0, max_age_s=0)) == Evicted()
    assert playing.is_file()
    # still protected just inside its length + grace, gone just after
    inside = now + seconds + PLAY_GRACE_S - 1
    assert cache.evict(CacheLimits(max_bytes=0, max_age_s=DAY), now=inside) == Evicted()
    assert playing.is_file()
    after = now + seconds + PLAY_GRACE_S + 1
    assert cache.evict(CacheLimits(max_bytes=0, max_age_s=DAY), now=after).files == 1
    assert not playing.exists()
