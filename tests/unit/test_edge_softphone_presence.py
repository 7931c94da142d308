"""An advisor's softphone registered at the edge calling a presence number: the call
comes from ``[from-advisor]`` (Stasis args ``advisor``); edge_server takes only a
presence number of the phone's own merchant, asking for the advisor by their endpoint's
user (not by what the phone put in From), and refuses any other number with 403
without ever running the customer flow."""

from __future__ import annotations

import asyncio

import pytest

from edge_server.flow_messages import MerchantSettings
from edge_server.presence_flow import PresenceLine, PresenceTimings, Wanted
from edge_server.sip_endpoints import advisor_of_channel
from edge_server.stasis import ADVISOR_ARG, MerchantDirectory, StasisApp, StasisDeps
from edge_server.testing import FakeAri, FakeCallStore, FakeDecider, FakePresence
from shared import ari
from shared.language import Language
from shared.phone import E164

CID = "1700000000.7"
FAST = PresenceTimings(ask_s=0.3, announce_guard_s=0.5)


def app(asker: FakePresence, fake: FakeAri, store: FakeCallStore) -> StasisApp:
    merchants = MerchantDirectory(
        {E164("81120123456"): MerchantSettings("acme")},
        {E164("81120123457"): PresenceLine("acme", Wanted.ONLINE, Language.ENGLISH),
         E164("81120999001"): PresenceLine("bento", Wanted.ONLINE, Language.ENGLISH)})
    return StasisApp(StasisDeps(ari=fake, store=store, decider=FakeDecider(),
                                merchants=merchants, presence=asker, presence_timings=FAST,
                                resync_grace_s=0.0))


async def softphone_call(exten: str, *, name: str = "PJSIP/acme.hoshino-0000002a",
                         from_user: str = "acme.hoshino"
                         ) -> tuple[FakePresence, FakeAri, FakeCallStore]:
    fake, asker, store = FakeAri({}), FakePresence(), FakeCallStore()
    queue: asyncio.Queue[ari.Event] = asyncio.Queue()
    start = ari.StasisStart(ari.Channel(id=CID, name=name, caller_number=from_user,
                                        exten=exten, state="Ring"), args=(ADVISOR_ARG,))
    task = asyncio.create_task(app(asker, fake, store).on_stasis_start(start, queue))
    await asyncio.sleep(0.05)
    queue.put_nowait(ari.PlaybackFinished(ari.Playback(
        id=f"{CID}-pb1", state="done", target_uri=f"channel:{CID}")))
    await asyncio.wait_for(task, 3)
    return asker, fake, store


@pytest.mark.parametrize(("name", "found"), [
    ("PJSIP/acme.hoshino-0000002a", ("acme", "hoshino")),
    ("PJSIP/acme.ho.shi-no-00000001", ("acme", "ho.shi-no")),
    ("PJSIP/operator-00000003", None), ("PJSIP/callback-site-00000004", None),
    ("Local/acme.hoshino@x-00000005;1", None), ("PJSIP/.hoshino-00000006", None)])
def test_the_advisor_endpoint_is_read_from_the_channel_name(
        name: str, found: tuple[str, str] | None) -> None:
    assert advisor_of_channel(name) == found


async def test_its_merchant_s_presence_number_asks_for_the_endpoint_s_user() -> None:
    asker, fake, _ = await softphone_call("0120123457", from_user="somebody-else")
    assert [(a.merchant_id, a.caller, a.caller_user, a.wanted) for a in asker.asked] == [
        ("acme", None, "hoshino", Wanted.ONLINE)]
    assert ("play", CID, "sound:cbgw/presence-online lang=en") in fake.calls
    assert ("hangup", CID, "busy") in fake.calls
    assert not any(c[0] == "answer" for c in fake.calls)


@pytest.mark.parametrize("exten", ["0120999001", "0120123456", "09012345678", "810"])
async def test_anything_else_is_refused_403_and_nothing_is_asked_or_stored(
        exten: str) -> None:
    """Another merchant's presence number, the toll-free number (no call-back for a
    softphone), a mobile number, anything."""
    asker, fake, store = await softphone_call(exten)
    assert asker.asked == []
    assert fake.calls == [("hangup", CID, "21")]
    assert (store.stored, store.recorded, store.events) == ({}, [], [])


async def test_a_channel_that_is_no_advisor_endpoint_is_refused() -> None:
    asker, fake, _ = await softphone_call("0120123457", name="PJSIP/operator-00000009")
    assert asker.asked == [] and fake.calls == [("hangup", CID, "21")]
