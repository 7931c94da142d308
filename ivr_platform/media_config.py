"""The ``[media]`` section of the callback site's config: where guidance and recordings
live, their limits, how long recordings are kept, and the links to them.

```toml
[media]
guidance_dir = "/var/cache/cbgw/asterisk-sid/var/lib/asterisk-callback/data/sounds/cbgw-guidance"
# the site's other callback Asterisks' sounds/cbgw-guidance as this site sees it (callback2):
# each must be guidance_dir itself (a bind mount, or a relative link inside a shared chroot),
# as must its ../<lang>/cbgw-guidance where the site keeps per-language files: check refuses
# one that is not, so what is uploaded and rendered is what every Asterisk plays
asterisk_guidance_dirs = [
    "/var/cache/cbgw/asterisk-sid/var/lib/asterisk-callback2/data/sounds/cbgw-guidance"]
max_upload_bytes = 20971520     # an upload's body (mp3, m4a/mp4, wav)
max_guidance_s = 600            # a guidance's length
recordings_dir = "/var/lib/cbgw/recordings"
# where the callback Asterisk writes what a flow's record node records (its astspooldir's
# recording directory, as this site sees it); the site moves each into recordings_dir
asterisk_recordings_dir = "/var/cache/cbgw/asterisk-sid/var/spool/asterisk-callback/recording"
retention_days = 90             # every merchant's recordings, unless below
link_ttl_s = 3600               # a signed link to a recording stays valid this long
link_secret_file = "keys/recording-links.secret"   # >= 32 bytes; unset: one per process
public_url = "https://callback.example.com"        # the links' base; unset: paths only
sweep_s = 300                   # expired recordings (and TTS renders) are deleted this often
# say nodes' texts rendered into guidance_dir's _tts: the least recently used renders go
# when unused this long or when they take more room than this (a render handed out to a
# call in the last 5 minutes plus its length stays)
tts_cache_max_days = 30
tts_cache_max_bytes = 536870912
transcribe = true               # a flow's recorded messages get a transcript after the
                                # call (PocketSphinx; their notification waits for it)
# the PocketSphinx model (all three; unset: the US English model the wheel ships, which
# writes English words for Japanese speech: a Japanese site installs a Japanese one)
sphinx_acoustic_model = "/usr/share/pocketsphinx/model/ja/acoustic"
sphinx_language_model = "/usr/share/pocketsphinx/model/ja/ja.lm.bin"
sphinx_dictionary = "/usr/share/pocketsphinx/model/ja/ja.dic"

[media.retention_days_by_merchant]
acme = 30
```

Without ``guidance_dir`` the guidance routes are not mounted; without ``recordings_dir``
the recordings routes and the expiry job are not; without ``recordings_dir`` and
``asterisk_recordings_dir`` a flow's ``record`` node records nothing (its ``on_fail``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from ivr_platform.audio import AudioLimits
from ivr_platform.guidance import language_root
from ivr_platform.transcribe import SphinxModel
from ivr_platform.tts import CacheLimits
from shared.config import Section, cannot_write
from shared.language import Language

MIN_SECRET_BYTES = 32
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class MediaSettings:
    guidance_dir: Path | None = None
    limits: AudioLimits = AudioLimits()
    recordings_dir: Path | None = None
    asterisk_recordings_dir: Path | None = None
    retention_days: int = 90
    retention_days_by_merchant: Mapping[str, int] = field(default_factory=dict)
    link_ttl_s: int = 3600
    link_secret_file: Path | None = None
    public_url: str | None = None
    sweep_s: float = 300.0
    transcribe: bool = False
    sphinx_model: SphinxModel | None = None     # None: the packaged US English one
    tts_cache: CacheLimits = CacheLimits(max_bytes=512 * MIB, max_age_s=30 * 86400.0)
    asterisk_guidance_dirs: tuple[Path, ...] = ()

    @classmethod
    def parse(cls, s: Section, merchant_ids: Iterable[str]) -> MediaSettings:
        by_merchant = s.section("retention_days_by_merchant")
        retention = {merchant_id: by_merchant.int(merchant_id, min=1, max=3650)
                     for merchant_id in by_merchant.merchant_keys(merchant_ids)}
        public_url = s.opt_str("public_url")
        if public_url is not None and not public_url.startswith(("https://", "http://")):
            raise s.error("public_url", "expected an http(s) URL")
        return cls(
            guidance_dir=s.path_value("guidance_dir") if s.has("guidance_dir") else None,
            limits=AudioLimits(
                max_bytes=s.int("max_upload_bytes", 20 * 1024 * 1024, min=1024,
                                max=200 * 1024 * 1024),
                max_seconds=float(s.int("max_guidance_s", 600, min=1, max=3600))),
            recordings_dir=s.path_value("recordings_dir") if s.has("recordings_dir") else None,
            asterisk_recordings_dir=(s.path_value("asterisk_recordings_dir")
                                     if s.has("asterisk_recordings_dir") else None),
            retention_days=s.int("retention_days", 90, min=1, max=3650),
            retention_days_by_merchant=retention,
            link_ttl_s=s.int("link_ttl_s", 3600, min=10, max=7 * 86400),
            link_secret_file=(s.path_value("link_secret_file")
                              if s.has("link_secret_file") else None),
            public_url=public_url.rstrip("/") if public_url else None,
            sweep_s=float(s.decimal("sweep_s", "300", min=Decimal(1))),
            transcribe=s.bool("transcribe", False), sphinx_model=_sphinx_model(s),
            asterisk_guidance_dirs=tuple(
                p if p.is_absolute() else (s.source.path.parent / p).resolve()
                for p in map(Path, s.str_list("asterisk_guidance_dirs"))),
            tts_cache=CacheLimits(
                max_bytes=s.int("tts_cache_max_bytes", 512 * MIB, min=MIB, max=1024 * 1024 * MIB),
                max_age_s=86400.0 * s.int("tts_cache_max_days", 30, min=1, max=3650)))

    def retention(self, merchant_id: str) -> timedelta:
        return timedelta(days=self.retention_days_by_merchant.get(merchant_id,
                                                                  self.retention_days))

    def file_problems(self) -> list[tuple[str, str]]:
        """``(key, problem)`` for a directory the site cannot write in or a link secret
        file that cannot be used (``check``)."""
        problems = [(f"media.{key}", problem) for key, directory in (
            ("guidance_dir", self.guidance_dir), ("recordings_dir", self.recordings_dir),
            ("asterisk_recordings_dir", self.asterisk_recordings_dir))
            if directory is not None and (problem := cannot_write(directory)) is not None]
        return problems + self._shared_problems() + self._secret_problems()

    def _shared_problems(self) -> list[tuple[str, str]]:
        """Another Asterisk's guidance directory that is not the library's own, or whose
        per-language sibling is not the library's (where the site keeps such files)."""
        problems = []
        for i, theirs in enumerate(self.asterisk_guidance_dirs):
            key = f"media.asterisk_guidance_dirs[{i}]"
            if self.guidance_dir is None:
                problems.append((key, "needs [media] guidance_dir (the one it must be)"))
                continue
            pairs = [(self.guidance_dir, theirs)] + [
                (ours, language_root(theirs, language)) for language in Language
                if (ours := language_root(self.guidance_dir, language)).is_dir()]
            for ours, other in pairs:
                if not _same_dir(ours, other):
                    problems.append((key, f"{other} is not {ours}: bind-mount it there (or "
                                          "link it, relative, inside a shared chroot), so "
                                          "that Asterisk plays what the site stores"))
                    break
        return problems

    def _secret_problems(self) -> list[tuple[str, str]]:
        if self.link_secret_file is None:
            return []
        try:
            size = len(self.link_secret_file.read_bytes())
        except OSError as exc:
            return [("media.link_secret_file",
                     f"cannot read {self.link_secret_file}: {exc.strerror}")]
        if size < MIN_SECRET_BYTES:
            return [("media.link_secret_file", f"{self.link_secret_file} holds {size} bytes; "
                                               f"at least {MIN_SECRET_BYTES} are needed")]
        return []


def _same_dir(ours: Path, theirs: Path) -> bool:
    try:
        return theirs.is_dir() and os.path.samefile(ours, theirs)
    except OSError:          # ours not made yet
        return False


_SPHINX_KEYS = ("sphinx_acoustic_model", "sphinx_language_model", "sphinx_dictionary")


def _sphinx_model(s: Section) -> SphinxModel | None:
    given = [key for key in _SPHINX_KEYS if s.has(key)]
    if not given:
        return None
    if missing := [key for key in _SPHINX_KEYS if key not in given]:
        raise s.error(missing[0], f"required with {given[0]} (all three name one model)")
    model = SphinxModel(*(s.path_value(key) for key in _SPHINX_KEYS))
    if problems := model.problems():
        raise s.error("sphinx_acoustic_model", "; ".join(problems))
    return model
