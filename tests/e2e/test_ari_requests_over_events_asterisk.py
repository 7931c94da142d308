"""The calls' prompts as ``RESTRequest`` s on the events websocket of the real Asterisk 22,
with the application's event filter (as the sites set it) and without one (as a bench's
client has): ``Connected`` comes at once, the probe is answered within the second, a
``play`` and its stop go on the websocket and answer as over HTTP (a stop of a playback
gone already is quiet, a play on a channel gone is ``ChannelNotFound``); a barge-in's stop
and the next play stop the prompt playing and play the next out; the leg's hang-up goes
there too. The events are
read in a task of their own while a request waits, as the sites' router reads them: its
answer comes there.

Holds the stack's lock (``demo.stack.LOCK_PATH``) while it drives the shared Asterisk."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from pathlib import Path

import pytest

from shared.ari import (
    AriClient,
    ChannelNotFound,
    Connected,
    PlaybackFinished,
    StasisEnd,
    StasisStart,
    event_types,
)
from tests.harness.asterisk import (
    AsteriskSite,
    events_read_aside,
    expect_event,
    locked_site_fixture,
    qualify,
    reset,
)
from tests.harness.sipp import role

pytestmark = pytest.mark.e2e

CUSTOMER = "09012345678"
FILTERED = event_types(StasisStart, StasisEnd, PlaybackFinished)

callback = locked_site_fixture("callback")


async def prompts_on_the_websocket(site: AsteriskSite, app: str,
                                   allowed: Collection[str]) -> None:
    client = AriClient(site.ari_url, site.username, site.password, app,
                       events_allowed=allowed, requests_over_events=True)
    # The events are read in a task of their own, as the sites' router does: a request on
    # the websocket is answered there, so it needs them read meanwhile.
    async with client as ari, events_read_aside(ari) as events:
        started = time.monotonic()
        await expect_event(events, Connected, within_s=2)
        for _ in range(100):                          # within 1 s
            if ari.requests_on_events:
                break
            await asyncio.sleep(0.01)
        assert ari.requests_on_events, f"{app}: probe unanswered after " \
            f"{time.monotonic() - started:.1f} s"
        channel = f"{app}-leg"
        await ari.originate(f"PJSIP/{CUSTOMER}@carrier-b", channel_id=channel,
                            caller_id="0120123456", timeout=10)
        await expect_event(events, StasisStart, channel_id=channel, within_s=10)
        playback = await ari.play(channel, ["digits:1"], playback_id=f"{app}-pb", lang="en")
        assert (playback.id, playback.channel_id) == (f"{app}-pb", channel)
        finished = await expect_event(events, PlaybackFinished, channel_id=channel,
                                      within_s=10)
        assert finished.playback.state == "done", finished
        await ari.stop_playback(f"{app}-pb")          # gone already: 404, quiet
        with pytest.raises(ChannelNotFound):
            await ari.play(f"{app}-nobody", ["digits:1"])
        # A barge-in: the stop of a prompt still playing and the next prompt's play: the
        # first ends at once, the next plays out.
        await ari.play(channel, ["sound:cbgw/confirm-callback"], playback_id=f"{app}-long",
                       lang="ja")
        await ari.stop_playback(f"{app}-long")
        await ari.play(channel, ["digits:2"], playback_id=f"{app}-next", lang="en")
        stopped = await expect_event(events, PlaybackFinished, channel_id=channel,
                                     within_s=2)
        assert stopped.playback.id == f"{app}-long", stopped
        after = await expect_event(events, PlaybackFinished, channel_id=channel, within_s=5)
        assert (after.playback.id, after.playback.state) == (f"{app}-next", "done"), after
        assert ari.requests_on_events                 # still on the websocket
        await ari.hangup(channel)                     # on the websocket too
        await expect_event(events, StasisEnd, channel_id=channel)
        await ari.hangup(channel)                     # gone already: 404, quiet


async def test_prompts_go_on_the_websocket_with_and_without_an_event_filter(
        callback: AsteriskSite, tmp_path: Path) -> None:
    await reset(callback)
    with role("uas_answer_forever.xml", "carrier-b", tmp_path):
        await qualify(callback, "carrier-b")
        await prompts_on_the_websocket(callback, "cbgw-rest-ws-all", ())
        await prompts_on_the_websocket(callback, "cbgw-rest-ws-some", FILTERED)
