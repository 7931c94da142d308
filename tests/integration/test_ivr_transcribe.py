"""Transcription with the offline engine on real audio: espeak-ng speaks a known sentence
into an 8 kHz telephone WAV (ivr_platform.tts), PocketSphinx with the model its wheel ships
(US English) transcribes it off the event loop, and the recording is stored with its
transcript (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

import ivr_platform
import shared
from ivr_platform.notify_config import Channel, Event, Kind, NotifySettings
from ivr_platform.notify_webhooks import WebhookSettings
from ivr_platform.recordings import RecordingStore
from ivr_platform.transcribe import (
    PocketSphinxTranscriber,
    SphinxModel,
    TranscriptionError,
    add_transcribed,
)
from ivr_platform.transcribe_outbox import TranscriptionWorker
from ivr_platform.tts import EspeakVoice, PromptCache, Voice
from shared.db import create_pool, migrate_url, package_migrations
from shared.language import Language
from shared.outbox import EVENTS_PATH, fact_message_id

pytestmark = pytest.mark.integration

SENTENCE = "please call me back tomorrow morning"


@pytest.fixture(scope="module")
def transcriber() -> Iterator[PocketSphinxTranscriber]:
    engine = PocketSphinxTranscriber()
    yield engine
    engine.close()


async def spoken(tmp_path: Path, text: str) -> Path:
    """The sentence as the site renders prompts (8 kHz telephone WAV), spoken slowly: at
    espeak-ng's 160 words a minute the small English model hears other words; at 110-130
    it hears "tomorrow morning" (checked)."""
    voices: dict[Language, Voice] = {Language.ENGLISH: EspeakVoice(words_per_minute=120)}
    return await PromptCache(tmp_path / "tts", voices).get(text, Language.ENGLISH)


async def test_the_packaged_model_transcribes_a_spoken_telephone_sentence_off_the_loop(
        transcriber: PocketSphinxTranscriber, tmp_path: Path) -> None:
    wav = await spoken(tmp_path, SENTENCE)
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
    ticking = asyncio.create_task(ticker())
    started = time.monotonic()
    text = await transcriber.transcribe(wav)
    took = time.monotonic() - started
    ticking.cancel()
    assert "tomorrow morning" in text, text
    # The loop kept running while the decoder worked (loose: the machine is shared).
    assert len(gaps) > 5 and max(gaps) < max(0.5, took / 2), (took, max(gaps))


async def test_silence_is_an_empty_transcript_and_garbage_is_refused(
        transcriber: PocketSphinxTranscriber, tmp_path: Path) -> None:
    silence = tmp_path / "silence.wav"
    await (await asyncio.create_subprocess_exec(
        "sox", "-n", "-r", "8000", "-b", "16", "-c", "1", str(silence), "trim", "0",
        "1")).wait()
    assert await transcriber.transcribe(silence) == ""
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not a wave file at all")
    with pytest.raises(TranscriptionError, match="sox cannot read"):
        await transcriber.transcribe(garbage)


def test_a_model_that_is_not_installed_names_what_is_missing(tmp_path: Path) -> None:
    model = SphinxModel(tmp_path / "ja-jp", tmp_path / "ja-jp.lm.bin", tmp_path / "ja.dict")
    with pytest.raises(TranscriptionError) as err:
        PocketSphinxTranscriber(model)
    assert f"acoustic model {tmp_path / 'ja-jp'} is missing" in str(err.value)
    assert f"dictionary {tmp_path / 'ja.dict'} is missing" in str(err.value)


@pytest.fixture
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate_url(pg_url, [package_migrations("link", shared.__file__),
                               package_migrations("ivr_platform", ivr_platform.__file__)])
    p = await create_pool(pg_url, min_size=1, max_size=4)
    yield p
    await p.close()


async def test_a_recording_is_stored_with_its_transcript(
        transcriber: PocketSphinxTranscriber, pool: asyncpg.Pool, tmp_path: Path) -> None:
    store = RecordingStore(pool, tmp_path / "recordings")
    wav = await spoken(tmp_path, SENTENCE)
    recording = await add_transcribed(store, transcriber, "acme", wav,
                                      retention=timedelta(days=1), edge_call_id="e-t")
    assert recording.transcript is not None and "tomorrow morning" in recording.transcript
    again = await store.get("acme", recording.id)
    assert again is not None and again.transcript == recording.transcript


async def notifying_store(pool: asyncpg.Pool, tmp_path: Path) -> RecordingStore:
    """A store whose recordings are notified to a Slack channel (queued, not sent here)."""
    await pool.execute("TRUNCATE notifications, recordings CASCADE")
    notify = NotifySettings(channels=(Channel(
        "acme", "slack", Kind.SLACK, frozenset({Event.MESSAGE_RECORDED}),
        WebhookSettings("https://hooks.slack.com/services/T/B/x")),))
    store = RecordingStore(pool, tmp_path / "recordings", notify)
    return store


async def test_a_recording_is_transcribed_after_the_call_and_notified_with_its_transcript(
        transcriber: PocketSphinxTranscriber, pool: asyncpg.Pool, tmp_path: Path) -> None:
    """Stored at once without a transcript (the call goes on); the worker transcribes it
    and queues its message_recorded notification in the transcript's transaction, once."""
    store = await notifying_store(pool, tmp_path)
    recording = await store.add("acme", await spoken(tmp_path, SENTENCE),
                                retention=timedelta(days=1), edge_call_id="e-1",
                                transcribe=True)
    assert recording.transcript is None
    assert await pool.fetchval("SELECT count(*) FROM notifications") == 0   # not yet
    worker = TranscriptionWorker(store, transcriber, owner="w1")
    assert await worker.run_once() == 1
    assert await worker.run_once() == 0                                   # once
    stored = await store.get("acme", recording.id)
    assert stored is not None and stored.transcript is not None
    assert "tomorrow morning" in stored.transcript
    rows = await pool.fetch("SELECT event, fact_key, facts FROM notifications")
    assert [(r["event"], r["fact_key"], r["facts"]["recording_id"]) for r in rows] == [
        ("message_recorded", f"recording:{recording.id}", str(recording.id))]
    state = await pool.fetchrow("SELECT state, attempts, error FROM recording_transcriptions "
                                "WHERE recording_id = $1", recording.id)
    assert state is not None and tuple(state) == ("done", 1, None)


async def test_a_call_backs_transcript_is_queued_for_the_edge_with_it_once(
        transcriber: PocketSphinxTranscriber, pool: asyncpg.Pool, tmp_path: Path) -> None:
    """A recording made on a call-back: the transcript's link message is in the outbox in
    the transcript's transaction, once; one without a call-back queues none."""
    store = await notifying_store(pool, tmp_path)
    await pool.execute("TRUNCATE outbox")
    recording = await store.add("acme", await spoken(tmp_path, SENTENCE),
                                retention=timedelta(days=1), callback_id="cb-7",
                                edge_call_id="e-7", transcribe=True)
    await store.add("acme", await spoken(tmp_path, SENTENCE), retention=timedelta(days=1),
                    transcribe=True)
    worker = TranscriptionWorker(store, transcriber, owner="w1")
    assert await worker.run_once() == 2
    assert await worker.run_once() == 0
    rows = await pool.fetch("SELECT message_id, kind, path, body, merchant_id FROM outbox")
    [row] = rows
    body = json.loads(row["body"])
    assert "tomorrow morning" in body.pop("transcript")
    assert body == {"kind": "recording_transcript", "merchant_id": "acme",
                    "callback_id": "cb-7", "edge_call_id": "e-7",
                    "recording_id": str(recording.id)}
    assert (row["kind"], row["path"], row["merchant_id"]) == (
        "recording_transcript", EVENTS_PATH, "acme")
    assert str(row["message_id"]) == fact_message_id("recording_transcript",
                                                     str(recording.id))


async def test_a_recording_the_engine_cannot_read_is_notified_without_a_transcript(
        transcriber: PocketSphinxTranscriber, pool: asyncpg.Pool, tmp_path: Path) -> None:
    store = await notifying_store(pool, tmp_path)
    recording = await store.add("acme", await spoken(tmp_path, SENTENCE),
                                retention=timedelta(days=1), transcribe=True)
    store.path(recording).unlink()                  # gone before the worker reads it
    assert await TranscriptionWorker(store, transcriber, owner="w1").run_once() == 1
    state = await pool.fetchrow("SELECT state, error FROM recording_transcriptions "
                                "WHERE recording_id = $1", recording.id)
    assert state is not None and state["state"] == "failed" and "sox" in state["error"]
    assert await pool.fetchval("SELECT count(*) FROM notifications") == 1
    stored = await pool.fetchval("SELECT transcript FROM recordings WHERE id = $1",
                                 recording.id)
    assert stored is None
