"""A flow's ``record`` node on the real callback Asterisk 22: ARI records a call SIPp
answers (its RTP: 2.5 s of PCMU silence, then ``#``) into the instance's
``<astspooldir>/recording`` (what ``[media] asterisk_recordings_dir`` points at), ends it on
the ``#`` (``RecordingFinished`` routed to the channel), and the site's
:class:`~callback_server.ivr_services.IvrServices` moves the file into the recordings
store on PostgreSQL.

Holds the stack's lock (``demo.stack.LOCK_PATH``) while it drives the shared Asterisk."""

from __future__ import annotations

import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from callback_server.call_ports import CallFacts
from callback_server.ivr_services import IvrServices, Recordings
from ivr_platform.recordings import RecordingStore
from ivr_platform.sms_store import migrations
from shared.ari import (
    AriClient,
    Connected,
    Event,
    RecordingFinished,
    StasisEnd,
    StasisStart,
    channel_ids,
)
from shared.db import create_pool, migrate_url
from shared.phone import normalise
from tests.harness.asterisk import (
    AsteriskSite,
    expect_event,
    locked_site_fixture,
    qualify,
    recordings_spool,
    reset,
)
from tests.harness.sipp import role

pytestmark = pytest.mark.e2e

CUSTOMER = "09012345678"
CHANNEL = "record-b"


callback = locked_site_fixture("callback")


@asynccontextmanager
async def recording(callback: AsteriskSite, tmp_path: Path, name: str, scenario: str,
                    digits: str, lead_ms: int, max_s: int
                    ) -> AsyncIterator[tuple[AriClient, AsyncIterator[Event]]]:
    """A call SIPp's ``scenario`` answers (``lead_ms`` of silence, then ``digits``), its
    channel being recorded as ``name`` (ended on ``#``, at most ``max_s``)."""
    await reset(callback)
    (recordings_spool(callback.name, callback.root) / f"{name}.wav").unlink(missing_ok=True)
    with role(scenario, "carrier-b", tmp_path, digits=digits,
              pcap_options={"lead_ms": lead_ms}):
        await qualify(callback, "carrier-b")
        async with callback.client() as ari:
            events = ari.events()
            await expect_event(events, Connected)
            try:
                await ari.originate(f"PJSIP/{CUSTOMER}@carrier-b", channel_id=CHANNEL,
                                    caller_id="0120123456", timeout=10)
                await expect_event(events, StasisStart, channel_id=CHANNEL)
                await ari.record(CHANNEL, name, max_duration_s=max_s, max_silence_s=0,
                                 beep=True, terminate_on="#")
                yield ari, events
            finally:
                await events.aclose()


async def test_a_recording_ends_on_hash_and_is_stored(callback: AsteriskSite, tmp_path: Path,
                                                      pg_url: str) -> None:
    name = f"{CHANNEL}-r1"
    spool = recordings_spool(callback.name, callback.root)
    async with recording(callback, tmp_path, name, "uas_answer_dtmf.xml", "#", 2500,
                         20) as (ari, events):
        finished = await expect_event(events, RecordingFinished, channel_id=CHANNEL,
                                      within_s=10)
        assert channel_ids(finished) == (CHANNEL,)
        assert (finished.recording.name, finished.recording.state) == (name, "done")
        await ari.hangup(CHANNEL)
    with wave.open(str(spool / f"{name}.wav"), "rb") as w:
        seconds = w.getnframes() / w.getframerate()
        assert (w.getnchannels(), w.getframerate()) == (1, 8000)
    assert 0.5 <= seconds <= 3.0, seconds          # the silence until '#', not 20 s
    await migrate_url(pg_url, [migrations()])
    pool = await create_pool(pg_url, max_size=2)
    try:
        store = RecordingStore(pool, tmp_path / "recordings")
        services = IvrServices(recordings=Recordings(store, spool, lambda m: timedelta(days=1)))
        facts = CallFacts("e2e-record", "cb-e2e", "edge-e2e", normalise(CUSTOMER))
        stored = await services.store_recording(name, facts)
        assert stored is not None and not (spool / f"{name}.wav").exists()
        (row,) = await store.list("e2e-record")
        assert str(row.id) == stored and abs(row.duration_ms - seconds * 1000) < 1
        assert store.path(row).exists()
    finally:
        await pool.close()


async def test_a_customer_hanging_up_ends_the_recording_before_the_channel_leaves(
        callback: AsteriskSite, tmp_path: Path) -> None:
    """A message left by hanging up instead of '#': Asterisk finishes the recording (its
    file complete) before ``StasisEnd``, so the round still has the channel's route."""
    name = f"{CHANNEL}-r2"
    async with recording(callback, tmp_path, name, "uas_answer_dtmf_bye.xml", "", 3000,
                         60) as (_, events):            # the phone hangs up after 20 s
        seen: list[Event] = []
        finished = await expect_event(events, RecordingFinished, channel_id=CHANNEL,
                                      within_s=30, seen=seen)
        assert not any(isinstance(e, StasisEnd) for e in seen), seen
        assert finished.recording.state == "done"
        await expect_event(events, StasisEnd, channel_id=CHANNEL)
    path = recordings_spool(callback.name, callback.root) / f"{name}.wav"
    with wave.open(str(path), "rb") as w:
        assert w.getnframes() / w.getframerate() >= 2.0
    path.unlink()
