"""Prompts from text: Open JTalk (Japanese) or espeak-ng (English), cached by a hash.

A prompt is rendered once into ``<cache>/<key>.wav``, 8 kHz 16-bit mono PCM with the
engine's silence trimmed at both ends (what Asterisk plays as ``sound:<cache>/<key>``),
``key`` being the SHA-256 of the engine, voice, language, options and text (NFC,
stripped). The engine writes a temporary file,
sox converts it next to the cache entry and ``os.replace`` publishes it: a reader sees a
whole prompt or none, and two renders of one text at once run the engine once. sox runs
repeatable (``-R``): its resampling dither is seeded, so one text renders to the same bytes
every time (unseeded, one render of a test sentence in about 40 was heard differently by
the transcriber).

A hit is a hash, one ``stat`` and one ``utime`` (:meth:`PromptCache.cached`, no await;
≤ 1 ms is the target, ``python -m bench ivr_tts``): a file's modification time is when it
was last handed out, so :meth:`PromptCache.evict` removes the least recently used ones
past an age or over a size (:class:`CacheLimits`), never one handed out within its own
length plus :data:`PLAY_GRACE_S` (a call may be about to play it; one already playing is
held open by Asterisk). A text whose file was evicted is a miss: rendered again.

A missing engine, dictionary, voice or sox raises :class:`EngineMissing` naming the
Debian package; Open JTalk's voice is in Debian's contrib component (the Makefile's
``system-deps`` enables it).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import tempfile
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ivr_platform.tools import ToolError, ToolMissing, need_program, run
from shared.language import Language

#: bump when the rendering changes (sox options, format): every key changes with it
RENDER_VERSION = 3
SAMPLE_RATE = 8000
#: the engines pad a sentence with about 0.5 s of silence each side (Open JTalk: a digit
#: of 0.3 s renders to 1.2 s); sox cuts what is below this level at both ends and puts
#: back a short lead-in and tail, so prompts played one after another (a ``digits:``
#: read-back) do not drag and an answered call hears speech at once
TRIM_BELOW = "-50d"
PAD_S = (0.05, 0.15)
MAX_CHARS = 2000
ENGINE_TIMEOUT_S = 60.0
#: a render handed out this long ago, plus its own length, is never evicted: the call it
#: was handed to may not have opened it yet (queued behind another prompt)
PLAY_GRACE_S = 300.0
BYTES_PER_S = SAMPLE_RATE * 2
_SOX = ("sox", "sox")   # (program, Debian package)


@dataclass(frozen=True, slots=True)
class CacheLimits:
    """What :meth:`PromptCache.evict` keeps: at most ``max_bytes`` of renders, none unused
    for more than ``max_age_s``."""

    max_bytes: int
    max_age_s: float


@dataclass(frozen=True, slots=True)
class Evicted:
    files: int = 0
    bytes: int = 0


class TtsError(ToolError):
    """The engine or sox failed on a text."""


class EngineMissing(TtsError, ToolMissing):
    """A program or data file the engine needs is not installed; names its package."""


@dataclass(frozen=True, slots=True)
class OpenJTalkVoice:
    """Open JTalk with an HTS voice. ``speed`` is ``-r``, ``half_tone`` ``-fm``."""

    voice: Path = Path("/usr/share/hts-voice/nitech-jp-atr503-m001/"
                       "nitech_jp_atr503_m001.htsvoice")
    dictionary: Path = Path("/var/lib/mecab/dic/open-jtalk/naist-jdic")
    speed: float = 1.0
    half_tone: float = 0.0
    program: str = "open_jtalk"
    language: Language = field(default=Language.JAPANESE, init=False)

    def identity(self) -> dict[str, object]:
        return {"engine": "open_jtalk", "voice": self.voice.name, "speed": self.speed,
                "half_tone": self.half_tone}

    def check(self) -> None:
        _need_program(self.program, "open-jtalk")
        if not (self.dictionary / "sys.dic").is_file():
            raise EngineMissing(f"Open JTalk dictionary not found at {self.dictionary} "
                                "(apt-get install open-jtalk-mecab-naist-jdic)")
        if not self.voice.is_file():
            raise EngineMissing(f"Open JTalk voice not found at {self.voice} (apt-get "
                                "install hts-voice-nitech-jp-atr503-m001, Debian contrib)")

    def command(self, wav: Path, text_file: Path) -> list[str]:
        return [self.program, "-x", str(self.dictionary), "-m", str(self.voice),
                "-r", str(self.speed), "-fm", str(self.half_tone), "-ow", str(wav),
                str(text_file)]

    async def phonemes(self, text: str) -> list[str]:
        """The phonemes Open JTalk makes of ``text`` (``pau`` at a pause, no silences):
        how it will read it, for checking a reading without listening."""
        self.check()
        with tempfile.TemporaryDirectory(prefix="cbgw-tts-") as tmp:
            source, trace = Path(tmp) / "text.txt", Path(tmp) / "trace.txt"
            source.write_text(_clean(text) + "\n", encoding="utf-8")
            await _run([*self.command(Path(os.devnull), source), "-ot", str(trace)])
            labels = trace.read_text(encoding="utf-8").split("[Output label]")[1]
            labels = labels.split("[Global parameter]")[0]
        found = (m.group(1) for m in _LABEL_PHONEME.finditer(labels))
        return [p for p in found if p != "sil"]


_LABEL_PHONEME = re.compile(r"\^[^-\n]*-([^+\n]*)\+")


@dataclass(frozen=True, slots=True)
class EspeakVoice:
    """espeak-ng: fine for English, poor for Japanese."""

    voice: str = "en-us"
    words_per_minute: int = 160
    program: str = "espeak-ng"
    language: Language = field(default=Language.ENGLISH, init=False)

    def identity(self) -> dict[str, object]:
        return {"engine": "espeak-ng", "voice": self.voice, "wpm": self.words_per_minute}

    def check(self) -> None:
        _need_program(self.program, "espeak-ng")

    def command(self, wav: Path, text_file: Path) -> list[str]:
        return [self.program, "-v", self.voice, "-s", str(self.words_per_minute),
                "-w", str(wav), "-f", str(text_file)]


class Voice(Protocol):
    @property
    def language(self) -> Language: ...
    def identity(self) -> dict[str, object]: ...
    def check(self) -> None: ...
    def command(self, wav: Path, text_file: Path) -> list[str]: ...


def default_voices() -> dict[Language, Voice]:
    """Open JTalk for Japanese, espeak-ng for English."""
    return {Language.JAPANESE: OpenJTalkVoice(), Language.ENGLISH: EspeakVoice()}


class PromptCache:
    """Rendered prompts in ``directory``, one file per (voice, language, text, options)."""

    def __init__(self, directory: Path, voices: dict[Language, Voice] | None = None) -> None:
        self.directory = directory
        self.voices: dict[Language, Voice] = voices or default_voices()
        self._rendering: dict[str, asyncio.Task[Path]] = {}
        directory.mkdir(parents=True, exist_ok=True)

    def key(self, text: str, language: Language) -> str:
        voice = self.voices[language]
        identity = {"render": RENDER_VERSION, "rate": SAMPLE_RATE, "language": language.value,
                    **voice.identity(), "text": _clean(text)}
        return hashlib.sha256(json.dumps(identity, sort_keys=True, ensure_ascii=False)
                              .encode()).hexdigest()

    def path(self, text: str, language: Language) -> Path:
        return self.directory / f"{self.key(text, language)}.wav"

    def cached(self, text: str, language: Language) -> Path | None:
        """The rendered prompt if it is there already (a hash, a stat and a touch: its
        modification time is now, when it was last used)."""
        path = self.path(text, language)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        except PermissionError:   # another user's cache: a hit, its use just not noted
            pass
        return path if path.is_file() else None

    async def get(self, text: str, language: Language) -> Path:
        """The prompt's WAV file, rendered first if it is not cached."""
        path = self.cached(text, language)
        if path is not None:
            return path
        key = self.key(text, language)
        task = self._rendering.get(key)
        if task is None:   # one render per key; a caller cancelled does not cancel it
            task = asyncio.create_task(
                self._render(text, self.voices[language], self.directory / f"{key}.wav"))
            self._rendering[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: str, task: asyncio.Task[Path]) -> None:
        del self._rendering[key]
        if not task.cancelled():
            task.exception()   # retrieved: callers that were cancelled leave it unawaited

    def evict(self, limits: CacheLimits, now: float | None = None) -> Evicted:
        """Remove the renders unused for more than ``limits.max_age_s``, then the least
        recently used until at most ``limits.max_bytes`` are left; a render handed out
        within its length plus :data:`PLAY_GRACE_S` stays (even over the size), and so
        does one used while this runs. Blocking (a directory scan): run it in a thread."""
        now = time.time() if now is None else now
        renders = []
        for entry in os.scandir(self.directory):
            if entry.name.endswith(".wav") and entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                renders.append((st.st_mtime, st.st_size, Path(entry.path)))
        renders.sort()                                  # least recently used first
        total = sum(size for _, size, _ in renders)
        evicted = Evicted()
        for used, size, path in renders:
            if now - used <= limits.max_age_s and total <= limits.max_bytes:
                break
            if now - used <= size / BYTES_PER_S + PLAY_GRACE_S or not _unlink_unused(path,
                                                                                     used):
                continue
            total -= size
            evicted = Evicted(evicted.files + 1, evicted.bytes + size)
        return evicted

    @staticmethod
    def media_uri(path: Path) -> str:
        """``sound:/dir/key`` for ARI ``play``: Asterisk adds the extension."""
        return f"sound:{path.with_suffix('')}"

    async def _render(self, text: str, voice: Voice, dest: Path) -> Path:
        clean = _clean(text)
        voice.check()
        _need_program(*_SOX)
        with tempfile.TemporaryDirectory(prefix=".render-", dir=self.directory) as tmp:
            source, raw, part = Path(tmp) / "text.txt", Path(tmp) / "raw.wav", Path(tmp) / "p.wav"
            source.write_text(clean + "\n", encoding="utf-8")
            await _run(voice.command(raw, source))
            trim = ["silence", "1", "0.01", TRIM_BELOW]
            await _run(["sox", "-R", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16",
                        "-e", "signed-integer", str(part), *trim, "reverse", *trim, "reverse",
                        "pad", *(str(s) for s in PAD_S)])
            os.replace(part, dest)
        return dest


def _unlink_unused(path: Path, used: float) -> bool:
    """Remove ``path`` unless it was used (touched) since ``used``, or is gone."""
    try:
        if path.stat().st_mtime != used:
            return False
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def _clean(text: str) -> str:
    clean = unicodedata.normalize("NFC", text).strip()
    if not clean:
        raise ValueError("nothing to say: the text is empty")
    if len(clean) > MAX_CHARS:
        raise ValueError(f"a prompt is at most {MAX_CHARS} characters, got {len(clean)}")
    return clean


def _need_program(program: str, package: str) -> None:
    need_program(program, package, EngineMissing)


async def _run(argv: list[str]) -> None:
    await run(argv, ENGINE_TIMEOUT_S, TtsError)
