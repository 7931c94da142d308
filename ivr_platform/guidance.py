"""Merchants' own guidance audio, converted (:mod:`ivr_platform.audio`) and kept on disk
where the callback site's Asterisk plays it.

Layout of the library's directory (``[media] guidance_dir``; the Asterisk instance's
``sounds/cbgw-guidance``, see ``deploy/asterisk/instance.py``)::

    <dir>/<merchant>/<name>.wav     8 kHz 16-bit mono PCM, -23 LUFS
    <dir>/<merchant>/<name>.json    what was measured, when it was uploaded

    <dir>/_tts/<key>.wav            a say node's text, rendered (:mod:`ivr_platform.tts`)

    <dir>/../<lang>/<dir name>/<merchant>/<name>.wav (and .json)   one language's own file

A flow plays it as ``sound:cbgw-guidance/<merchant>/<name>`` (:func:`media_ref`), a
rendered text as ``sound:cbgw-guidance/_tts/<key>`` (:func:`speech_ref`; ``_`` is in no
merchant id):
Asterisk looks for a sound in the language's directory (``sounds/<lang>/``), then in
``sounds/`` itself, where ``cbgw-guidance`` is, then in its default language's (``en``): so
one recording serves every language, and a merchant may upload a guidance per language
(``ja``, ``en``) into ``sounds/<lang>/cbgw-guidance`` beside it, which a call in that
language plays instead (the playback's ``lang``: the merchant's language). A call in
another language falls back to the file for every language, then to the English one
(Asterisk's ``defaultlanguage``; a Japanese file never plays for an English call):
:func:`plays`.
The files are the truth: ``check`` (no database) sees exactly what a call will play. An
upload replaces a guidance of the same name whole (the WAV, then its description, each by
``os.replace``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
from collections.abc import Collection
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from ivr_platform.audio import AudioLimits, convert
from shared.language import Language

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


def language_root(library: Path, language: Language | None) -> Path:
    """The directory of ``language``'s own files beside ``library`` (Asterisk's
    ``sounds/cbgw-guidance`` → ``sounds/<language>/cbgw-guidance``); None: ``library``."""
    return library if language is None else library.parent / language.value / library.name


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


def plays(files: Collection[Language | None], language: Language) -> bool:
    """Whether a guidance with ``files`` (:meth:`GuidanceLibrary.files`) plays for a call
    in ``language``: Asterisk tries that language's file, the one for every language,
    then its default language's (English)."""
    return bool({language, None, Language.ENGLISH} & set(files))


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
    language: str | None = None   # ja | en: that language's own file; None: every language's

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class GuidanceLibrary:
    def __init__(self, directory: Path, limits: AudioLimits | None = None) -> None:
        self.directory = directory
        self.limits = limits or AudioLimits()
        self._converting = asyncio.Semaphore(CONVERSIONS)

    def root(self, language: Language | None = None) -> Path:
        """Where the files for ``language`` are (None: for every language): the library's
        directory, or its namesake in Asterisk's ``sounds/<language>/``."""
        return language_root(self.directory, language)

    def _dir(self, merchant_id: str, language: Language | None = None) -> Path:
        if not MERCHANT.fullmatch(merchant_id):
            raise ValueError(f"merchant id {merchant_id!r} is not one")
        return self.root(language) / merchant_id

    def wav(self, merchant_id: str, name: str, language: Language | None = None) -> Path:
        return self._dir(merchant_id, language) / f"{check_name(name)}.wav"

    def has(self, merchant_id: str, name: str, language: Language | None = None) -> bool:
        return self.wav(merchant_id, name, language).is_file()

    def files(self, merchant_id: str, name: str) -> list[Language | None]:
        """The languages ``name`` has a file for (None: the one for every language)."""
        return [language for language in (None, *Language)
                if self.has(merchant_id, name, language)]

    def spool(self) -> Path:
        """Where an upload is written before it is converted (inside the library, so the
        conversion's ``os.replace`` stays on one file system)."""
        spool = self.directory / ".uploads"
        spool.mkdir(parents=True, exist_ok=True)
        return spool

    async def add(self, merchant_id: str, name: str, source: Path,
                  language: Language | None = None) -> Guidance:
        """Convert ``source`` into the merchant's guidance ``name`` for ``language`` (None:
        every language), replacing that file; :class:`ivr_platform.audio.AudioRejected`
        leaves any old one as it was."""
        wav = self.wav(merchant_id, name, language)
        async with self._converting:
            with tempfile.TemporaryDirectory(prefix=".add-", dir=self.spool()) as tmp:
                converted = await convert(source, Path(tmp) / "guidance.wav", self.limits)
                guidance = Guidance(
                    merchant_id, name, media_ref(merchant_id, name), round(converted.seconds, 3),
                    converted.bytes, converted.loudness_lufs, converted.source_format,
                    converted.source_codec, converted.source_loudness_lufs,
                    datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                    None if language is None else language.value)
                described = Path(tmp) / "guidance.json"
                described.write_text(json.dumps(guidance.to_json(), ensure_ascii=False),
                                     encoding="utf-8")
                wav.parent.mkdir(parents=True, exist_ok=True)
                for made in (wav.parent, wav.parent.parent):   # Asterisk reads them
                    made.chmod(0o755)
                os.replace(converted.path, wav)
                os.replace(described, wav.with_suffix(".json"))
        return guidance

    def get(self, merchant_id: str, name: str, language: Language | None = None
            ) -> Guidance | None:
        wav = self.wav(merchant_id, name, language)
        try:
            data = json.loads(wav.with_suffix(".json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return Guidance(**data) if wav.is_file() else None

    def list(self, merchant_id: str) -> list[Guidance]:
        """The merchant's guidance, by name: each name's file for every language first,
        then its languages' own."""
        found = (self.get(merchant_id, p.stem, language)
                 for language in (None, *Language)
                 for p in self._dir(merchant_id, language).glob("*.wav")
                 if NAME.fullmatch(p.stem))
        return sorted((g for g in found if g is not None),
                      key=lambda g: (g.name, g.language or ""))

    def delete(self, merchant_id: str, name: str, language: Language | None = None) -> bool:
        """Remove its file for ``language``; False if there was none."""
        wav = self.wav(merchant_id, name, language)
        existed = wav.is_file()
        wav.unlink(missing_ok=True)
        wav.with_suffix(".json").unlink(missing_ok=True)
        return existed
