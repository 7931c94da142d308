"""The platform on the wire: real Asterisk 22 (both sites), the ARI client and SIPp.

These prove the facts the applications build on:
* ARI early media on the edge: 183 + prompt, then 486, and never a 200 OK;
* the dialplan answers 503 when the edge's Stasis app is not connected;
* originate through the callback site: carrier-a's 503 ends in cause 34 (or
  AllocationFailed when it is down), carrier-b gets the INVITE for the number;
* RFC 4733 digits from SIPp arrive as ChannelDtmfReceived, repeats included;
* the hard max call length (TIMEOUT(absolute) on originate) ends a call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from urllib.parse import unquote

import pytest

from edge_server.channel import asserted_number
from shared.ari import (
    AllocationFailed,
    AriClient,
    ChannelDestroyed,
    ChannelDtmfReceived,
    Connected,
    Event,
    PlaybackFinished,
    PlaybackStarted,
    StasisEnd,
    StasisStart,
)
from tests.harness.asterisk import AsteriskSite, ensure_running, expect_event, qualify, reset
from tests.harness.sipp import customer_call, role

pytestmark = pytest.mark.e2e
log = logging.getLogger("tests.platform")

CUSTOMER = "09012345678"
TOLL_FREE = "0120123456"


@pytest.fixture(scope="module")
def edge() -> AsteriskSite:
    site = ensure_running("edge")
    log.warning("edge: %s", site.version)
    return site


@pytest.fixture(scope="module")
def callback() -> AsteriskSite:
    site = ensure_running("callback")
    log.warning("callback: %s", site.version)
    return site


@pytest.fixture(autouse=True)
async def clean_sites(edge: AsteriskSite, callback: AsteriskSite) -> None:
    await reset(edge)
    await reset(callback)


async def open_events(ari: AriClient) -> AsyncGenerator[Event, None]:
    events = ari.events()
    await expect_event(events, Connected)
    return events


async def test_early_media_then_busy_never_answers(edge: AsteriskSite, tmp_path: Path) -> None:
    async with edge.client() as ari:
        events = await open_events(ari)
        try:
            phone = customer_call(tmp_path, dialled=TOLL_FREE, caller=CUSTOMER)
            start = await expect_event(events, StasisStart)
            assert start.channel.state != "Up"
            assert start.channel.exten == TOLL_FREE
            assert start.channel.caller_number == CUSTOMER
            # the dialplan hands the caller's presentation and P-Asserted-Identity
            # (URI-encoded; this phone asserts its own number) with the call, so the
            # edge need not ask over ARI
            assert start.args[:2] == ("inbound", "allowed_not_screened")
            assert asserted_number(unquote(start.args[2])) == CUSTOMER, start.args
            cid = start.channel.id
            await ari.play(cid, ["sound:cbgw/received"], playback_id=f"{cid}-received")
            await expect_event(events, PlaybackStarted, channel_id=cid)
            await asyncio.sleep(0.5)                          # some early media flows
            await ari.hangup(cid, reason="busy")
            await expect_event(events, StasisEnd, channel_id=cid)
        finally:
            await events.aclose()
    await asyncio.to_thread(phone.wait, 10)
    statuses = phone.statuses_received()
    assert 200 not in statuses, phone.describe()
    assert 183 in statuses and statuses[-1] == 486, phone.describe()
    assert statuses.index(183) < statuses.index(486)
    progress = next(m for m in phone.responses_received() if m.status == 183)
    assert progress.has_sdp, "183 must carry SDP for early media"


async def test_stasis_app_down_answers_503(edge: AsteriskSite, tmp_path: Path) -> None:
    async with edge.client() as ari:
        apps = await ari._request("GET", "/applications")
    assert all(app.get("name") != "edge" for app in apps), (
        "another process is connected as Stasis app 'edge'; stop it to run this test")
    phone = customer_call(tmp_path, dialled=TOLL_FREE, caller=CUSTOMER)
    await asyncio.to_thread(phone.wait, 10)
    statuses = phone.statuses_received()
    assert statuses[-1] == 503, phone.describe()
    assert not {180, 183, 200} & set(statuses), phone.describe()


async def test_originate_fails_over_from_503_carrier(callback: AsteriskSite,
                                                      tmp_path: Path) -> None:
    with role("uas_reject_503.xml", "carrier-a", tmp_path) as carrier_a, \
            role("uas_answer_hold.xml", "carrier-b", tmp_path) as carrier_b:
        await qualify(callback, "carrier-a")
        await qualify(callback, "carrier-b")
        async with callback.client() as ari:
            events = await open_events(ari)
            try:
                try:
                    await ari.originate(f"PJSIP/{CUSTOMER}@carrier-a", channel_id="try-a",
                                        caller_id=TOLL_FREE, timeout=10)
                    destroyed = await expect_event(events, ChannelDestroyed, channel_id="try-a")
                    assert destroyed.cause == 34, destroyed
                except AllocationFailed:
                    pytest.fail("carrier-a was qualified, so the INVITE should have been sent")
                assert carrier_a.statuses_sent() == [100, 503]
                assert carrier_a.invites_received()[0].ruri_user == CUSTOMER

                await ari.originate(f"PJSIP/{CUSTOMER}@carrier-b", channel_id="try-b",
                                    caller_id=TOLL_FREE, timeout=10)
                start = await expect_event(events, StasisStart, channel_id="try-b")
                assert start.channel.state == "Up"
                invite = carrier_b.invites_received()[0]
                assert invite.ruri_user == CUSTOMER
                assert invite.from_user == TOLL_FREE
                await ari.hangup("try-b")
                await expect_event(events, StasisEnd, channel_id="try-b")
            finally:
                await events.aclose()
        carrier_b.wait_for(lambda m: m.method == "BYE", timeout=5, what="BYE")


async def test_originate_to_dead_carrier_fails_at_once(callback: AsteriskSite) -> None:
    # Nothing listens on carrier-a's port: qualify marks it unreachable.
    async with callback.client() as ari:
        await asyncio.to_thread(callback.cli, "pjsip qualify carrier-a")
        deadline = time.monotonic() + 3
        while (ep := await ari.get_endpoint("PJSIP", "carrier-a")) and ep.state == "online":
            assert time.monotonic() < deadline, "carrier-a still online with no SIPp"
            await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(AllocationFailed):
            await ari.originate(f"PJSIP/{CUSTOMER}@carrier-a", channel_id="dead-a", timeout=10)
        assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("digits", ["1", "1234#", "2#", "11223#"])
async def test_rfc4733_digits_arrive_as_dtmf_events(callback: AsteriskSite, tmp_path: Path,
                                                    digits: str) -> None:
    with role("uas_answer_dtmf.xml", "carrier-b", tmp_path, digits=digits,
              pcap_options={"lead_ms": 300, "gap_ms": 100}):
        await qualify(callback, "carrier-b")
        async with callback.client() as ari:
            events = await open_events(ari)
            try:
                await ari.originate(f"PJSIP/{CUSTOMER}@carrier-b", channel_id="dtmf-b",
                                    caller_id=TOLL_FREE, timeout=10)
                await expect_event(events, StasisStart, channel_id="dtmf-b")
                got = ""
                while len(got) < len(digits):
                    event = await expect_event(events, ChannelDtmfReceived, channel_id="dtmf-b")
                    assert event.duration_ms >= 100
                    got += event.digit
                assert got == digits
                await ari.hangup("dtmf-b")
            finally:
                await events.aclose()


async def test_max_call_length_ends_a_call_that_never_hangs_up(callback: AsteriskSite,
                                                              tmp_path: Path) -> None:
    with role("uas_answer_forever.xml", "carrier-b", tmp_path) as carrier_b:
        await qualify(callback, "carrier-b")
        async with callback.client() as ari:
            events = await open_events(ari)
            try:
                await ari.originate(f"PJSIP/{CUSTOMER}@carrier-b", channel_id="long-b",
                                    caller_id=TOLL_FREE, timeout=10,
                                    variables={"TIMEOUT(absolute)": "2"})
                start = await expect_event(events, StasisStart, channel_id="long-b")
                end = await expect_event(events, StasisEnd, channel_id="long-b", within_s=5)
                assert start.timestamp and end.timestamp
                held = (end.timestamp - start.timestamp).total_seconds()
                assert 1.5 <= held <= 3.0, held
            finally:
                await events.aclose()
        carrier_b.wait_for(lambda m: m.method == "BYE", timeout=3, what="BYE from Asterisk")


@pytest.mark.parametrize(("scenario", "cause"), [
    ("uas_reject_486.xml", 17),        # busy: retry later, never another carrier
    ("uas_reject_603.xml", 21),        # declined
    ("uas_ring_no_answer.xml", 19),    # rang out (originate timeout)
])
async def test_customer_failure_causes(callback: AsteriskSite, tmp_path: Path, scenario: str,
                                       cause: int) -> None:
    with role(scenario, "carrier-b", tmp_path) as customer:
        await qualify(callback, "carrier-b")
        async with callback.client() as ari:
            events = await open_events(ari)
            try:
                await ari.originate(f"PJSIP/{CUSTOMER}@carrier-b", channel_id="fail-b",
                                    caller_id=TOLL_FREE, timeout=1)
                destroyed = await expect_event(events, ChannelDestroyed, channel_id="fail-b")
            finally:
                await events.aclose()
        assert destroyed.cause == cause, destroyed
        assert customer.invites_received()[0].ruri_user == CUSTOMER


async def test_callback_site_reaches_operator_through_edge(edge: AsteriskSite,
                                                           callback: AsteriskSite,
                                                           tmp_path: Path) -> None:
    with role("uas_answer_hold.xml", "operator", tmp_path) as operator:
        await qualify(edge, "operator")
        await qualify(callback, "edge-trunk")
        async with callback.client() as ari:
            events = await open_events(ari)
            try:
                await ari.originate("PJSIP/operator@edge-trunk", channel_id="op-leg",
                                    caller_id=CUSTOMER, timeout=5)
                start = await expect_event(events, StasisStart, channel_id="op-leg")
                assert start.channel.is_up
                invite = operator.invites_received()[0]
                assert invite.ruri_user == "operator"
                await ari.hangup("op-leg")
                await expect_event(events, StasisEnd, channel_id="op-leg")
            finally:
                await events.aclose()
        operator.wait_for(lambda m: m.method == "BYE", timeout=5, what="BYE via the edge")


async def test_answer_mode_announces_then_hangs_up(edge: AsteriskSite, tmp_path: Path) -> None:
    async with edge.client() as ari:
        events = await open_events(ari)
        try:
            phone = customer_call(tmp_path, dialled=TOLL_FREE, caller=CUSTOMER)
            start = await expect_event(events, StasisStart)
            cid = start.channel.id
            await ari.answer(cid)
            await ari.play(cid, ["sound:cbgw/goodbye"])
            await expect_event(events, PlaybackFinished, channel_id=cid, within_s=8)
            await ari.hangup(cid)
            await expect_event(events, StasisEnd, channel_id=cid)
        finally:
            await events.aclose()
    await asyncio.to_thread(phone.wait, 10)
    assert phone.statuses_received()[-1] == 200, phone.describe()
    assert phone.requests_received("BYE"), phone.describe()
