"""An application's event filter on the real Asterisk 22: a client given
``events_allowed`` sets it when its websocket connects, and Asterisk then sends only
those types (no ``ChannelVarset``, ``PlaybackStarted``, ``ChannelDialplan`` ...), while
the allowed ones still come; without a filter the same call sends them all.

Holds the stack's lock (``demo.stack.LOCK_PATH``) while it drives the shared Asterisk."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import pytest

from shared.ari import (
    AriClient,
    Connected,
    Event,
    PlaybackFinished,
    StasisEnd,
    StasisStart,
    event_types,
)
from tests.harness.asterisk import AsteriskSite, expect_event, locked_site_fixture, qualify, reset
from tests.harness.sipp import role

pytestmark = pytest.mark.e2e

CUSTOMER = "09012345678"
ALLOWED = event_types(StasisStart, StasisEnd, PlaybackFinished)

callback = locked_site_fixture("callback")


async def one_call(site: AsteriskSite, app: str, allowed: Collection[str]) -> list[str]:
    """Originate into ``app``, set a variable, play a digit, hang up: the types received."""
    seen: list[Event] = []
    client = AriClient(site.ari_url, site.username, site.password, app,
                       events_allowed=allowed)
    async with client as ari:
        events = ari.events()
        await expect_event(events, Connected)
        try:
            assert (await ari.application()).events_allowed == tuple(sorted(allowed))
            channel = f"{app}-leg"
            await ari.originate(f"PJSIP/{CUSTOMER}@carrier-b", channel_id=channel,
                                caller_id="0120123456", timeout=10)
            await expect_event(events, StasisStart, channel_id=channel, seen=seen)
            await ari.set_variable(channel, "CBGW_FILTER_TEST", "1")
            await ari.play(channel, ["digits:1"], playback_id=f"{app}-pb", lang="en")
            finished = await expect_event(events, PlaybackFinished, channel_id=channel,
                                          within_s=10, seen=seen)
            assert finished.playback.state == "done", finished
            await ari.hangup(channel)
            await expect_event(events, StasisEnd, channel_id=channel, seen=seen)
        finally:
            await events.aclose()
    return [getattr(e, "type", type(e).__name__) for e in seen]


async def test_only_the_allowed_event_types_arrive(callback: AsteriskSite,
                                                   tmp_path: Path) -> None:
    await reset(callback)
    with role("uas_answer_forever.xml", "carrier-b", tmp_path):
        await qualify(callback, "carrier-b")
        everything = await one_call(callback, "cbgw-filter-all", ())
        filtered = await one_call(callback, "cbgw-filter-some", ALLOWED)
    # Unfiltered, the same call brings what no site reads.
    assert {"ChannelVarset", "PlaybackStarted"} <= set(everything), everything
    assert set(filtered) <= ALLOWED, filtered
