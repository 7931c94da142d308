"""A merchant's audio converted by the real ffmpeg: files made in the test by ffmpeg (a
tone as WAV, MP3 and M4A, silence, an Ogg file) and by hand (garbage, oversized), the
output's format, loudness and length measured independently (``wave``, ffmpeg's
``ebur128``), and the guidance library and its CLI on top.

A missing ffmpeg fails these tests naming ``apt-get install ffmpeg`` (the Makefile's
system-deps installs it)."""

from __future__ import annotations

import json
import re
import subprocess
import wave
from pathlib import Path

import pytest

from ivr_platform.audio import TARGET_LUFS, AudioLimits, AudioRejected, convert
from ivr_platform.cli import main
from ivr_platform.guidance import GuidanceLibrary, media_ref

pytestmark = pytest.mark.integration


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-y", "-v", "error", *args],
                   check=True)


def tone(path: Path, seconds: float = 3.0, *, volume_db: int = -30, channels: int = 2,
         extra: tuple[str, ...] = ()) -> Path:
    """A quiet 440 Hz tone at 44.1 kHz (stereo by default), encoded by ``path``'s suffix."""
    ffmpeg("-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}:sample_rate=44100",
           "-af", f"volume={volume_db}dB", "-ac", str(channels), *extra, str(path))
    return path


def loudness(path: Path) -> float:
    """Integrated loudness (LUFS) by ffmpeg's ebur128 filter."""
    err = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-i", str(path), "-af",
                          "ebur128", "-f", "null", "-"], capture_output=True, text=True,
                         check=True).stderr
    found = re.findall(r"I:\s+(-?[0-9.]+|-inf) LUFS", err)
    return float(found[-1])


def fmt(path: Path) -> tuple[int, int, int, float]:
    with wave.open(str(path), "rb") as w:
        return (w.getnchannels(), w.getsampwidth(), w.getframerate(),
                w.getnframes() / w.getframerate())


@pytest.mark.parametrize(("suffix", "codec_args", "source_format", "source_codec"), [
    ("wav", (), "wav", "pcm_s16le"),
    ("mp3", ("-c:a", "libmp3lame", "-b:a", "64k"), "mp3", "mp3"),
    ("m4a", ("-c:a", "aac", "-b:a", "64k"), "mp4", "aac"),
    ("mp4", ("-c:a", "aac", "-b:a", "64k"), "mp4", "aac"),
])
async def test_a_tone_becomes_8khz_16bit_mono_at_the_target_loudness_with_its_length(
        tmp_path: Path, suffix: str, codec_args: tuple[str, ...], source_format: str,
        source_codec: str) -> None:
    source = tone(tmp_path / f"tone.{suffix}", 3.0, extra=codec_args)
    before = loudness(source)
    out = await convert(source, tmp_path / "out" / "guidance.wav")
    channels, width, rate, seconds = fmt(out.path)
    assert (channels, width, rate) == (1, 2, 8000)
    assert abs(seconds - 3.0) < 0.05, seconds            # AAC adds a few ms of padding
    assert out.seconds == seconds
    assert out.bytes == out.path.stat().st_size
    assert (out.source_format, out.source_codec) == (source_format, source_codec)
    measured = loudness(out.path)
    assert abs(measured - TARGET_LUFS) <= 1.0, measured
    assert abs(out.loudness_lufs - measured) <= 0.5, (out.loudness_lufs, measured)
    assert before < TARGET_LUFS - 20 and abs(out.source_loudness_lufs - before) < 4
    assert out.true_peak_dbtp <= -2.0 + 0.1
    assert [p.name for p in out.path.parent.iterdir()] == ["guidance.wav"]  # no leftovers


async def test_a_loud_file_is_turned_down_to_the_same_target(tmp_path: Path) -> None:
    out = await convert(tone(tmp_path / "loud.wav", 2.0, volume_db=15, channels=1),
                        tmp_path / "out.wav")
    assert abs(loudness(out.path) - TARGET_LUFS) <= 1.0
    assert abs(fmt(out.path)[3] - 2.0) < 0.01


async def refusal(source: Path, tmp_path: Path, limits: AudioLimits | None = None
                  ) -> tuple[int, str, str]:
    with pytest.raises(AudioRejected) as caught:
        await convert(source, tmp_path / "never" / "out.wav", limits or AudioLimits())
    assert not (tmp_path / "never" / "out.wav").exists()
    return caught.value.status, caught.value.error_id, str(caught.value)


async def test_silence_is_refused_as_silent(tmp_path: Path) -> None:
    silent = tmp_path / "silent.wav"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=44100:cl=mono", "-t", "3", str(silent))
    status, error_id, message = await refusal(silent, tmp_path)
    assert (status, error_id) == (422, "audio-silent")
    assert "silent" in message and "-60 LUFS" in message


async def test_a_barely_audible_hiss_is_silent_too(tmp_path: Path) -> None:
    hiss = tmp_path / "hiss.mp3"
    ffmpeg("-f", "lavfi", "-i", "anoisesrc=a=0.0002:d=3", "-c:a", "libmp3lame", str(hiss))
    assert loudness(hiss) < -60
    assert (await refusal(hiss, tmp_path))[:2] == (422, "audio-silent")


async def test_garbage_and_empty_files_are_not_audio(tmp_path: Path) -> None:
    garbage = tmp_path / "guidance.mp3"
    garbage.write_bytes(b"\x00\x17garbage, not an mp3" * 300)
    status, error_id, message = await refusal(garbage, tmp_path)
    assert (status, error_id) == (422, "audio-unreadable")
    assert "not an audio file (mp3, m4a/mp4 or wav)" in message
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    assert (await refusal(empty, tmp_path))[:2] == (422, "audio-unreadable")


async def test_a_video_without_sound_has_no_audio(tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=black:s=64x64:d=1", "-c:v", "mpeg4", str(video))
    status, error_id, message = await refusal(video, tmp_path)
    assert (status, error_id) == (422, "audio-unreadable") and "has no audio" in message


async def test_ogg_is_unsupported_and_says_what_is_taken(tmp_path: Path) -> None:
    ogg = tone(tmp_path / "tone.ogg", 1.0, extra=("-c:a", "libvorbis"))
    status, error_id, message = await refusal(ogg, tmp_path)
    assert (status, error_id) == (415, "audio-unsupported")
    assert "Ogg" in message and "mp3, m4a/mp4 or wav" in message


async def test_too_big_and_too_long_are_refused_with_their_limits(tmp_path: Path) -> None:
    source = tone(tmp_path / "tone.wav", 3.0)
    size = source.stat().st_size
    status, error_id, message = await refusal(source, tmp_path, AudioLimits(max_bytes=size - 1))
    assert (status, error_id) == (413, "audio-too-large")
    assert f"{size} bytes" in message and f"at most {size - 1} bytes" in message
    status, error_id, message = await refusal(source, tmp_path, AudioLimits(max_seconds=2))
    assert (status, error_id) == (422, "audio-too-long")
    assert "3.0 s long; at most 2 s" in message


async def test_the_library_keeps_each_merchants_guidance_by_name(tmp_path: Path) -> None:
    library = GuidanceLibrary(tmp_path / "guidance")
    first = await library.add("acme", "welcome", tone(tmp_path / "a.mp3", 2.0))
    assert first.media == media_ref("acme", "welcome") == "sound:cbgw-guidance/acme/welcome"
    assert fmt(tmp_path / "guidance" / "acme" / "welcome.wav")[:3] == (1, 2, 8000)
    replaced = await library.add("acme", "welcome", tone(tmp_path / "b.m4a", 4.0))
    assert abs(replaced.seconds - 4.0) < 0.05 and replaced.source_format == "mp4"
    await library.add("bento", "welcome", tone(tmp_path / "c.wav", 1.0))
    assert [g.name for g in library.list("acme")] == ["welcome"]
    assert library.get("acme", "welcome") == replaced
    silent = tmp_path / "silent.wav"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "1", str(silent))
    with pytest.raises(AudioRejected):
        await library.add("acme", "welcome", silent)
    assert library.get("acme", "welcome") == replaced     # a refused upload changes nothing
    assert library.delete("acme", "welcome") and not library.delete("acme", "welcome")
    assert library.list("acme") == [] and library.has("bento", "welcome")
    assert sorted(p.name for p in (tmp_path / "guidance" / "acme").iterdir()) == []


def test_the_cli_converts_lists_and_deletes_guidance(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tone(tmp_path / "hello.mp3", 2.0)
    directory = str(tmp_path / "guidance")
    assert main(["guidance", "add", "--dir", directory, "--merchant", "acme", "hello",
                 str(source)]) == 0
    added = json.loads(capsys.readouterr().out)
    assert added["media"] == "sound:cbgw-guidance/acme/hello"
    assert abs(added["seconds"] - 2.0) < 0.05 and abs(added["loudness_lufs"] - TARGET_LUFS) <= 1
    assert main(["guidance", "list", "--dir", directory, "--merchant", "acme"]) == 0
    assert [g["name"] for g in json.loads(capsys.readouterr().out)] == ["hello"]
    garbage = tmp_path / "junk.wav"
    garbage.write_bytes(b"RIFF not really")
    assert main(["guidance", "add", "--dir", directory, "--merchant", "acme", "junk",
                 str(garbage)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {garbage}: audio-unreadable: not an audio file"), err
    assert main(["guidance", "add", "--dir", directory, "--merchant", "acme", "Bad Name",
                 str(source)]) == 2
    assert "guidance name 'Bad Name'" in capsys.readouterr().err
    assert main(["guidance", "delete", "--dir", directory, "--merchant", "acme", "hello"]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": "hello"}
    assert main(["guidance", "delete", "--dir", directory, "--merchant", "acme", "hello"]) == 1
    assert "no guidance 'hello'" in capsys.readouterr().err
