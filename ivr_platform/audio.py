"""A merchant's own audio (mp3, m4a/mp4 or wav) into what Asterisk plays: 8 kHz, 16-bit
signed, mono PCM WAV, loudness-normalised, with its length.

ffprobe reads what the file is (container, audio codec, length); ffmpeg then measures its
loudness (EBU R128, the ``loudnorm`` filter) after the downmix to mono and the resampling
to 8 kHz (the telephone band is what is heard, so it is what is measured), and converts it
with a linear gain to :data:`TARGET_LUFS` integrated with true peaks at most
:data:`TRUE_PEAK_DBTP` (where the peaks would pass that at a linear gain, ``loudnorm``
compresses them: its dynamic mode). -23 LUFS is EBU R128's target and where the system
prompts Open JTalk renders lie (-23 to -25 LUFS), so a merchant's guidance is as loud as
the prompts around it. The converted file is measured again and that is what is reported.

What is refused (:class:`AudioRejected`, each with a stable id and an HTTP status):

    audio-too-large    413  more than ``max_bytes``
    audio-unreadable   422  not audio ffprobe can read (garbage, an empty file, a video
                            without sound)
    audio-unsupported  415  audio, but not mp3, m4a/mp4 or wav (ogg, flac, ...)
    audio-too-long     422  longer than ``max_seconds``
    audio-silent       422  integrated loudness below :data:`SILENT_BELOW_LUFS` (silence,
                            hiss): nothing a caller could hear

ffmpeg missing raises :class:`~ivr_platform.tools.ToolMissing` (``apt-get install
ffmpeg``; the Makefile's ``system-deps`` installs it); ffmpeg failing on a file it had
probed as audio is ``audio-unreadable``.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ivr_platform.tools import ToolError, need_program, run

SAMPLE_RATE = 8000
TARGET_LUFS = -23.0
TRUE_PEAK_DBTP = -2.0
LOUDNESS_RANGE_LU = 11.0
#: below this integrated loudness a file is silent (EBU R128 gates blocks below -70 LUFS)
SILENT_BELOW_LUFS = -60.0
TOOL_TIMEOUT_S = 120.0
#: ffprobe's ``format_name`` of each container taken, and what it is called here
CONTAINERS = {"mp3": "mp3", "mov,mp4,m4a,3gp,3g2,mj2": "mp4", "wav": "wav"}
ACCEPTED = "mp3, m4a/mp4 or wav"
_PREPARE = "aformat=channel_layouts=mono,aresample=8000"
_OUTPUT = ["-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact",
           "-c:a", "pcm_s16le", "-ar", str(SAMPLE_RATE), "-ac", "1"]


@dataclass(frozen=True, slots=True)
class AudioLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_seconds: float = 600.0


@dataclass(frozen=True, slots=True)
class Converted:
    """A converted file and what was measured."""

    path: Path
    seconds: float              # the converted file's length (its frames / 8000)
    bytes: int                  # the converted file's size
    loudness_lufs: float        # the converted file's integrated loudness
    true_peak_dbtp: float
    source_format: str          # mp3 | mp4 | wav
    source_codec: str           # mp3, aac, pcm_s16le, ...
    source_loudness_lufs: float


class AudioRejected(ValueError):
    """A file that is not taken: ``error_id`` says why, ``status`` is its HTTP status."""

    def __init__(self, status: int, error_id: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_id = error_id


def too_large(limit: int, size: int | None = None) -> AudioRejected:
    """A file of ``size`` bytes (None: over ``limit``, read no further) is refused."""
    what = f"{size} bytes" if size is not None else f"over {limit} bytes"
    return AudioRejected(413, "audio-too-large",
                         f"the file is {what}; at most {limit} bytes are taken")


async def convert(source: Path, dest: Path, limits: AudioLimits = AudioLimits()) -> Converted:
    """Convert ``source`` into ``dest`` (written whole or not at all: a temporary file
    beside it, then ``os.replace``)."""
    need_program("ffmpeg", "ffmpeg")
    need_program("ffprobe", "ffmpeg")
    size = _size(source)
    if size > limits.max_bytes:
        raise too_large(limits.max_bytes, size)
    if size == 0:
        raise AudioRejected(422, "audio-unreadable", "the file is empty")
    container, codec, seconds = await _probe(source)
    if seconds is not None and seconds > limits.max_seconds:
        raise _too_long(seconds, limits.max_seconds)
    decode = ["ffmpeg", "-hide_banner", "-nostdin", "-v", "info", "-t",
              f"{limits.max_seconds + 1:.3f}", "-i", str(source), "-vn"]
    measured = await _loudness(decode, _PREPARE)
    source_lufs = measured["input_i"]
    if source_lufs < SILENT_BELOW_LUFS:
        shown = "-inf" if math.isinf(source_lufs) else f"{source_lufs:.1f}"
        raise AudioRejected(422, "audio-silent",
                            f"the audio is silent: loudness {shown} LUFS, below "
                            f"{SILENT_BELOW_LUFS:.0f} LUFS")
    gain = (f"loudnorm=I={TARGET_LUFS}:TP={TRUE_PEAK_DBTP}:LRA={LOUDNESS_RANGE_LU}"
            f":measured_I={source_lufs}:measured_TP={measured['input_tp']}"
            f":measured_LRA={measured['input_lra']}:measured_thresh={measured['input_thresh']}"
            f":offset={measured['target_offset']}:linear=true")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=dest.parent) as tmp:
        part = Path(tmp) / "out.wav"
        await _ffmpeg([*decode, "-af", f"{_PREPARE},{gain},aresample={SAMPLE_RATE}",
                       *_OUTPUT, "-y", str(part)])
        length = wav_seconds(part)
        if length > limits.max_seconds:
            raise _too_long(length, limits.max_seconds)
        if length <= 0:
            raise AudioRejected(422, "audio-unreadable", "the file holds no audio samples")
        result = await _loudness(["ffmpeg", "-hide_banner", "-nostdin", "-v", "info", "-i",
                                  str(part)], "anull")
        part.chmod(0o644)   # Asterisk (its own user) reads it
        os.replace(part, dest)
    return Converted(dest, length, _size(dest), result["input_i"], result["input_tp"],
                     container, codec, source_lufs)


def _size(path: Path) -> int:
    return path.stat().st_size


def wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


def _too_long(seconds: float, limit: float) -> AudioRejected:
    return AudioRejected(422, "audio-too-long",
                         f"the audio is {seconds:.1f} s long; at most {limit:.0f} s are taken")


async def _probe(source: Path) -> tuple[str, str, float | None]:
    """(container as :data:`CONTAINERS` names it, audio codec, seconds or None)."""
    try:
        out, _ = await run(["ffprobe", "-v", "error", "-show_format", "-show_streams",
                            "-of", "json", str(source)], TOOL_TIMEOUT_S)
        info: dict[str, Any] = json.loads(out)
    except (ToolError, ValueError) as exc:
        reason = str(exc).rpartition(": ")[2] or "ffprobe could not read it"
        raise AudioRejected(422, "audio-unreadable",
                            f"not an audio file ({ACCEPTED}): {reason}") from None
    fmt = info.get("format", {})
    name = str(fmt.get("format_name", "?"))
    audio = [s for s in info.get("streams", []) if s.get("codec_type") == "audio"]
    if not audio:
        raise AudioRejected(422, "audio-unreadable",
                            f"the file ({fmt.get('format_long_name', name)}) has no audio")
    codec = str(audio[0].get("codec_name", "?"))
    if name not in CONTAINERS:
        raise AudioRejected(415, "audio-unsupported",
                            f"{fmt.get('format_long_name', name)} ({codec}) is not taken: "
                            f"send {ACCEPTED}")
    duration = fmt.get("duration") or audio[0].get("duration")
    try:
        seconds = float(duration) if duration is not None else None
    except ValueError:
        seconds = None
    return CONTAINERS[name], codec, seconds


_JSON_BLOCK = re.compile(r"\{[^{}]*\}\s*$")


async def _loudness(decode: list[str], prepare: str) -> dict[str, float]:
    """``loudnorm``'s measurement of what ``decode`` reads after ``prepare``: input_i,
    input_tp, input_lra, input_thresh, target_offset (``-inf`` for silence)."""
    _, err = await _ffmpeg([*decode, "-af", f"{prepare},loudnorm=I={TARGET_LUFS}"
                            f":TP={TRUE_PEAK_DBTP}:LRA={LOUDNESS_RANGE_LU}:print_format=json",
                            "-f", "null", "-"])
    found = _JSON_BLOCK.search(err.decode(errors="replace"))
    if found is None:
        raise AudioRejected(422, "audio-unreadable", "ffmpeg measured no audio in the file")
    values = json.loads(found.group(0))
    return {key: float(values[key]) for key in
            ("input_i", "input_tp", "input_lra", "input_thresh", "target_offset")}


async def _ffmpeg(argv: list[str]) -> tuple[bytes, bytes]:
    try:
        return await run(argv, TOOL_TIMEOUT_S)
    except ToolError as exc:
        raise AudioRejected(422, "audio-unreadable",
                            f"ffmpeg could not decode the file: {exc}") from None
