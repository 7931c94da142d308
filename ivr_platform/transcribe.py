"""Speech to text for recordings, behind a small interface (:class:`Transcriber`), and
one offline engine: CMU PocketSphinx 5 (:class:`PocketSphinxTranscriber`, the PyPI
``pocketsphinx`` wheel). Nothing is downloaded at run time: the model is files on disk.

The wheel ships one model, US English (``pocketsphinx/model/en-us``); no Japanese model
ships in any package we found (PyPI, Debian). A Japanese site must install a Japanese
model in PocketSphinx's format (acoustic model directory, language model, pronunciation
dictionary) and name it in :class:`SphinxModel`; without one, transcripts of Japanese
speech are meaningless English words. The tests run this code on the packaged English
model.

A recording is 8 kHz telephone audio; sox (a system dependency of the site) converts it to
what the model was trained on (16 kHz, 16-bit mono), and decoding runs in a worker process
(PocketSphinx keeps the GIL while it decodes), never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import subprocess
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from ivr_platform.recordings import Recording, RecordingStore
from shared.phone import E164

log = logging.getLogger("ivr.transcribe")

SAMPLE_RATE = 16000
SOX_TIMEOUT_S = 60


class TranscriptionError(RuntimeError):
    """The engine, its model or the audio cannot be used (the message says which)."""


class Transcriber(Protocol):
    async def transcribe(self, wav: Path) -> str:
        """The words spoken in the WAV file (``""``: none heard)."""


@dataclass(frozen=True, slots=True)
class SphinxModel:
    acoustic_model: Path      # a directory (mdef, means, variances, ...)
    language_model: Path      # an ARPA or binary (.lm.bin) n-gram model
    dictionary: Path          # words and their phones

    @classmethod
    def packaged(cls) -> SphinxModel:
        """The US English model inside the ``pocketsphinx`` wheel."""
        try:
            from pocketsphinx import get_model_path
        except ImportError:
            raise TranscriptionError("the pocketsphinx package is not installed "
                                     "(pip install pocketsphinx)") from None
        root = Path(get_model_path()) / "en-us"
        return cls(root / "en-us", root / "en-us.lm.bin", root / "cmudict-en-us.dict")

    def problems(self) -> list[str]:
        return [f"{what} {path} is missing" for what, path in (
            ("acoustic model", self.acoustic_model), ("language model", self.language_model),
            ("dictionary", self.dictionary)) if not path.exists()]


class PocketSphinxTranscriber:
    """The decoder runs in a worker process, loaded once from ``model`` (default: the
    packaged English one): PocketSphinx holds the GIL while it decodes, so a thread would
    stop the event loop for as long (measured: 0.7 s of a 0.8 s decode). sox runs in a
    thread. :meth:`close` stops the process."""

    def __init__(self, model: SphinxModel | None = None) -> None:
        self.model = model or SphinxModel.packaged()
        if problems := self.model.problems():
            raise TranscriptionError("; ".join(problems))
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_load, initargs=(self.model,))

    async def transcribe(self, wav: Path) -> str:
        pcm = await asyncio.to_thread(_pcm16k, wav)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, _decode, pcm)
        except BrokenProcessPool:
            raise TranscriptionError(f"pocketsphinx cannot load {self.model} (its worker "
                                     "process ended)") from None

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


_decoder: Any = None   # in the worker process


def _load(model: SphinxModel) -> None:
    global _decoder
    from pocketsphinx import Decoder

    _decoder = Decoder(hmm=str(model.acoustic_model), lm=str(model.language_model),
                       dict=str(model.dictionary), samprate=SAMPLE_RATE, loglevel="FATAL")


def _decode(pcm: bytes) -> str:
    _decoder.start_utt()
    _decoder.process_raw(pcm, full_utt=True)
    _decoder.end_utt()
    hypothesis = _decoder.hyp()
    return str(hypothesis.hypstr).strip() if hypothesis is not None else ""


def _pcm16k(wav: Path) -> bytes:
    """The file as 16 kHz 16-bit signed mono raw PCM (sox, repeatable: its resampling
    dither seeded, so one file is always decoded from the same samples)."""
    try:
        done = subprocess.run(
            ["sox", "-R", str(wav), "-t", "raw", "-r", str(SAMPLE_RATE), "-e", "signed", "-b", "16",
             "-c", "1", "-"], capture_output=True, timeout=SOX_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise TranscriptionError("sox is not installed (apt-get install sox)") from None
    except subprocess.TimeoutExpired:
        raise TranscriptionError(f"sox took more than {SOX_TIMEOUT_S} s on {wav}") from None
    if done.returncode != 0:
        raise TranscriptionError(f"sox cannot read {wav}: "
                                 f"{done.stderr.decode(errors='replace').strip()}")
    return done.stdout


async def add_transcribed(store: RecordingStore, transcriber: Transcriber, merchant_id: str,
                          source: Path, *, retention: timedelta, caller: E164 | None = None,
                          edge_call_id: str | None = None) -> Recording:
    """Transcribe the call's recording, then store it with its transcript (so the
    notification queued with the row carries it); a recording the engine cannot read is
    stored without one."""
    try:
        transcript: str | None = await transcriber.transcribe(source) or None
    except TranscriptionError as exc:
        log.warning("recording of %s stored without a transcript: %s", merchant_id, exc)
        transcript = None
    return await store.add(merchant_id, source, retention=retention, caller=caller,
                           edge_call_id=edge_call_id, transcript=transcript)
