"""Asterisk's own leg record (AstDB, written by [cbgw-leg-end]) on the real callback
Asterisk: what the server reads back when it missed a leg's events.

* a leg answered while no server was connected (Asterisk hangs it up at once:
  its Stasis app is gone) is on record as answered, with Asterisk's times;
* a leg parked in Stasis when its server went away, hung up later (the
  reconnect sweep), is on record as answered for as long as it was up;
* a leg the customer refused is on record as not answered, with its cause;
* a channel id Asterisk never placed has no record;
* the record survives a restart of Asterisk.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from callback_server.dialer import LEG_RECORD_HANDLER
from callback_server.legrecord import LegRecords
from shared.ari import AriClient, Connected, Event, StasisStart
from tests.harness.asterisk import AsteriskSite, ensure_running, expect_event, qualify, reset
from tests.harness.asterisk import stop as stop_asterisk
from tests.harness.sipp import role

pytestmark = pytest.mark.e2e

CUSTOMER = "09012345678"
TOLL_FREE = "0120123456"


@pytest.fixture(scope="module")
def callback() -> AsteriskSite:
    return ensure_running("callback")


@pytest.fixture(autouse=True)
async def clean_site(callback: AsteriskSite) -> None:
    await reset(callback)


@contextlib.asynccontextmanager
async def lookups(site: AsteriskSite) -> AsyncIterator[LegRecords]:
    """A connected app whose StasisStarts go to LegRecords, as in the server."""
    async with site.client() as ari:
        events = ari.events()
        await expect_event(events, Connected)
        records = LegRecords(ari)
        pump = asyncio.create_task(_pump(ari, events, records))
        try:
            yield records
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            await events.aclose()


async def _pump(ari: AriClient, events: AsyncGenerator[Event, None],
                records: LegRecords) -> None:
    async for event in events:
        if isinstance(event, StasisStart) and records.on_stasis_start(event):
            await ari.hangup(event.channel.id)


async def originate_then_leave(site: AsteriskSite, scenario: str, tmp_path: Path,
                               channel_id: str) -> datetime:
    """Originate a recorded leg, and disconnect the app before the far end answers."""
    with role(scenario, "carrier-b", tmp_path) as carrier:
        await qualify(site, "carrier-b")
        started = datetime.now(UTC)
        async with site.client() as ari:
            events = ari.events()
            await expect_event(events, Connected)
            await ari.originate(f"PJSIP/{CUSTOMER}@carrier-b", channel_id=channel_id,
                                caller_id=TOLL_FREE, timeout=10,
                                variables=dict([LEG_RECORD_HANDLER]))
            await events.aclose()        # the server is gone before the answer
        if scenario == "uas_ring_then_answer.xml":
            carrier.wait_for(lambda m: m.method == "BYE", timeout=10, what="BYE")
        else:
            await asyncio.sleep(1.0)
    return started


async def test_a_leg_answered_with_no_app_connected_is_on_record(callback: AsteriskSite,
                                                                 tmp_path: Path) -> None:
    started = await originate_then_leave(callback, "uas_ring_then_answer.xml", tmp_path,
                                         "rec-ans")
    async with lookups(callback) as records:
        record = await records.fetch("rec-ans", started)
    assert record is not None and record.answered, record
    assert record.answered_at is not None
    assert started <= record.answered_at <= record.ended_at <= datetime.now(UTC)
    assert record.ended_at - record.answered_at < timedelta(seconds=2)  # hung up at once


async def test_a_leg_parked_then_hung_up_is_on_record(callback: AsteriskSite,
                                                      tmp_path: Path) -> None:
    with role("uas_answer_hold.xml", "carrier-b", tmp_path):
        await qualify(callback, "carrier-b")
        started = datetime.now(UTC)
        async with callback.client() as ari:
            events = ari.events()
            await expect_event(events, Connected)
            await ari.originate(f"PJSIP/{CUSTOMER}@carrier-b", channel_id="rec-park",
                                caller_id=TOLL_FREE, timeout=10,
                                variables=dict([LEG_RECORD_HANDLER]))
            await expect_event(events, StasisStart, channel_id="rec-park")
            await events.aclose()        # the server dies with the call in progress
        await asyncio.sleep(1.0)
        async with lookups(callback) as records:
            channel = await records.client.get_channel("rec-park")
            assert channel is not None and channel.state == "Up"   # parked, app gone
            await records.client.hangup("rec-park")                 # the reconnect sweep
            await asyncio.sleep(0.3)
            record = await records.fetch("rec-park", started)
    assert record is not None and record.answered_at is not None and record.cause == 16
    assert timedelta(seconds=1) <= record.ended_at - record.answered_at < timedelta(seconds=3)


async def test_a_refused_leg_is_on_record_unanswered_with_its_cause(callback: AsteriskSite,
                                                                    tmp_path: Path) -> None:
    started = await originate_then_leave(callback, "uas_reject_486.xml", tmp_path, "rec-busy")
    async with lookups(callback) as records:
        record = await records.fetch("rec-busy", started)
        assert await records.fetch("rec-never-placed", started) is None
    assert record is not None and not record.answered
    assert record.cause == 17, record


async def test_the_record_survives_an_asterisk_restart(callback: AsteriskSite,
                                                       tmp_path: Path) -> None:
    started = await originate_then_leave(callback, "uas_reject_486.xml", tmp_path, "rec-kept")
    await asyncio.to_thread(stop_asterisk, "callback")
    site = await asyncio.to_thread(ensure_running, "callback")
    async with lookups(site) as records:
        record = await records.fetch("rec-kept", started)
        await records.purge()                      # older days only: this one stays
        assert await records.fetch("rec-kept", started) == record
    assert record is not None and record.cause == 17



async def test_purge_forgets_days_no_rescue_can_ask_about(callback: AsteriskSite) -> None:
    now = datetime.now(UTC)
    old = [(now - timedelta(days=back)).strftime("%Y%m%d") for back in (3, 4)]
    kept = (now - timedelta(days=2)).strftime("%Y%m%d")
    for day in (*old, kept):
        callback.cli(f"database put cbgw_leg_{day} leg-{day} 0|1764600000.000|16")
    async with lookups(callback) as records:
        await records.purge(now)
        await asyncio.sleep(0.5)                  # the purge halves run their dialplan
    for day in old:
        assert f"leg-{day}" not in callback.cli(f"database show cbgw_leg_{day}")
    assert f"leg-{kept}" in callback.cli(f"database show cbgw_leg_{kept}")
    callback.cli(f"database deltree cbgw_leg_{kept}")
