"""Merchants' own guidance audio, converted (:mod:`ivr_platform.audio`) and kept on disk
where the callback site's Asterisk plays it.

Layout of the library's directory (``[media] guidance_dir``; the Asterisk instance's
``sounds/cbgw-guidance``, see ``deploy/asterisk/instance.py``)::

    <dir>/<merchant>/<name>.wav     8 kHz 16-bit mono PCM, -23 LUFS
    <dir>/<merchant>/<name>.json    what was measured, when it was uploaded

    <dir>/_tts/<key>.wav            a say node's text, rendered (:mod:`ivr_platform.tts`)

A flow plays it as ``sound:cbgw-guidance/<merchant>/<name>`` (:func:`media_ref`), a
rendered text as ``sound:cbgw-guidance/_tts/<key>`` (:func:`speech_ref`; ``_`` is in no
merchant id):
Asterisk looks for a sound in the language's directory, then in ``sounds/`` itself, where
``cbgw-guidance`` is, so one recording serves every language. The files are the truth:
``check`` (no database) sees exactly what a call will play. An upload replaces a
guidance of the same name whole (the WAV, then its description, each by ``os.replace``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from ivr_platform.audio import AudioLimits, convert

#: the directory under Asterisk's ``sounds/`` that holds the library
SOUNDS_SUBDIR = "cbgw-guidance"
GUIDANCE_PREFIX = f"sound:{SOUNDS_SUBDIR}/"
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
MERCHANT = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
#: conversions at once per library (each is one ffmpeg process at a time)
CONVERSIONS = 2


#: the library's subdirectory of rendered texts (the TTS cache)
SPEECH_SUBDIR = "_tts"


def media_ref(merchant_id: str, name: str) -> str:
    return f"{GUIDANCE_PREFIX}{merchant_id}/{name}"


def speech_dir(library: Path) -> Path:
    """Where the site renders say nodes' texts, inside the library's directory."""
    return library / SPEECH_SUBDIR


def speech_ref(wav: Path) -> str:
    """What plays the rendered text ``<library>/_tts/<key>.wav``."""
    return f"{GUIDANCE_PREFIX}{SPEECH_SUBDIR}/{wav.stem}"


def parse_ref(media: str) -> tuple[str, str] | None:
    """(merchant, name) of a ``sound:cbgw-guidance/<merchant>/<name>`` reference, else None
    (not a guidance reference, or a malformed one)."""
    if not media.startswith(GUIDANCE_PREFIX):
        return None
    merchant_id, _, name = media.removeprefix(GUIDANCE_PREFIX).partition("/")
    if MERCHANT.fullmatch(merchant_id) and NAME.fullmatch(name):
        return merchant_id, name
    return None


class InvalidName(ValueError):
    """A guidance name that is not ``[a-z0-9][a-z0-9_-]{0,63}``."""


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise InvalidName(f"guidance name {name!r}: expected 1..64 of a-z, 0-9, _ and -, "
                          "starting with a letter or digit")
    return name


@dataclass(frozen=True, slots=True)
class Guidance:
    merchant_id: str
    name: str
    media: str                  # what a flow plays
    seconds: float
    bytes: int
    loudness_lufs: float
    source_format: str
    source_codec: str
    source_loudness_lufs: float
    uploaded_at: str            # ISO 8601, UTC

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class GuidanceLibrary:
    def __init__(self, directory: Path, limits: AudioLimits | None = None) -> None:
        self.directory = directory
        self.limits = limits or AudioLimits()
        self._converting = asyncio.Semaphore(CONVERSIONS)

    def _dir(self, merchant_id: str) -> Path:
        if not MERCHANT.fullmatch(merchant_id):
            raise ValueError(f"merchant id {merchant_id!r} is not one")
        return self.directory / merchant_id

    def wav(self, merchant_id: str, name: str) -> Path:
        return self._dir(merchant_id) / f"{check_name(name)}.wav"

    def has(self, merchant_id: str, name: str) -> bool:
        return self.wav(merchant_id, name).is_file()

    def spool(self) -> Path:
        """Where an upload is written before it is converted (inside the library, so the
        conversion's ``os.replace`` stays on one file system)."""
        spool = self.directory / ".uploads"
        spool.mkdir(parents=True, exist_ok=True)
        return spool

    async def add(self, merchant_id: str, name: str, source: Path) -> Guidance:
        """Convert ``source`` into the merchant's guidance ``name`` (replacing one of that
        name); :class:`ivr_platform.audio.AudioRejected` leaves any old one as it was."""
        wav = self.wav(merchant_id, name)
        async with self._converting:
            with tempfile.TemporaryDirectory(prefix=".add-", dir=self.spool()) as tmp:
                converted = await convert(source, Path(tmp) / "guidance.wav", self.limits)
                guidance = Guidance(
                    merchant_id, name, media_ref(merchant_id, name), round(converted.seconds, 3),
                    converted.bytes, converted.loudness_lufs, converted.source_format,
                    converted.source_codec, converted.source_loudness_lufs,
                    datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"))
                described = Path(tmp) / "guidance.json"
                described.write_text(json.dumps(guidance.to_json(), ensure_ascii=False),
                                     encoding="utf-8")
                wav.parent.mkdir(parents=True, exist_ok=True)
                wav.parent.chmod(0o755)
                os.replace(converted.path, wav)
                os.replace(described, wav.with_suffix(".json"))
        return guidance

    def get(self, merchant_id: str, name: str) -> Guidance | None:
        wav = self.wav(merchant_id, name)
        try:
            data = json.loads(wav.with_suffix(".json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return Guidance(**data) if wav.is_file() else None

    def list(self, merchant_id: str) -> list[Guidance]:
        """The merchant's guidance, by name."""
        directory = self._dir(merchant_id)
        if not directory.is_dir():
            return []
        found = (self.get(merchant_id, p.stem) for p in sorted(directory.glob("*.wav"))
                 if NAME.fullmatch(p.stem))
        return [g for g in found if g is not None]

    def delete(self, merchant_id: str, name: str) -> bool:
        """Remove it; False if there was none."""
        wav = self.wav(merchant_id, name)
        existed = wav.is_file()
        wav.unlink(missing_ok=True)
        wav.with_suffix(".json").unlink(missing_ok=True)
        return existed
