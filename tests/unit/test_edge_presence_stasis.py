"""The presence call's ARI adapter (``edge_server.presence_stasis``) with in-process fakes:
a presence number gets the presence session, which never answers, plays the outcome as
early media and rejects the call with 486."""

from __future__ import annotations

import asyncio

from edge_server.flow_messages import MerchantSettings
from edge_server.presence_flow import (
    PresenceAnswered,
    PresenceLine,
    PresenceOutcome,
    PresenceTimings,
    PresenceUnavailable,
    Wanted,
)
from edge_server.stasis import PRESENTATION_VAR, MerchantDirectory, StasisApp, StasisDeps
from edge_server.testing import FakeAri, FakeCallStore, FakeDecider, FakePresence
from shared import ari
from shared.language import Language
from shared.phone import E164
from tests import prom

CID = "1700000000.9"
FAST = PresenceTimings(ask_s=0.3, announce_guard_s=0.5)


def app(asker: FakePresence, fake: FakeAri) -> StasisApp:
    merchants = MerchantDirectory(
        {E164("81120123456"): MerchantSettings("acme")},
        {E164("81120123457"): PresenceLine("acme", Wanted.ONLINE, Language.ENGLISH)})
    return StasisApp(StasisDeps(ari=fake, store=FakeCallStore(), decider=FakeDecider(),
                                merchants=merchants, presence=asker, presence_timings=FAST,
                                resync_grace_s=0.0))


async def call(stasis: StasisApp, exten: str, caller: str = "09011112222",
               script: tuple[ari.Event, ...] = ()) -> None:
    queue: asyncio.Queue[ari.Event] = asyncio.Queue()
    start = ari.StasisStart(ari.Channel(id=CID, caller_number=caller, exten=exten,
                                        state="Ring"), args=("inbound",))
    task = asyncio.create_task(stasis.on_stasis_start(start, queue))
    for event in script:
        await asyncio.sleep(0.05)
        queue.put_nowait(event)
    await asyncio.wait_for(task, 3)


def finished() -> ari.PlaybackFinished:
    return ari.PlaybackFinished(ari.Playback(id=f"{CID}-pb1", state="done",
                                             target_uri=f"channel:{CID}"))


async def test_a_presence_number_is_asked_announced_and_rejected_never_answered() -> None:
    fake, asker = FakeAri({PRESENTATION_VAR: "allowed_not_screened"}), FakePresence()
    before = prom.sample("cbgw_edge_presence_calls_total", merchant="acme", outcome="online")
    await call(app(asker, fake), "0120123457", script=(finished(),))
    assert [a.caller for a in asker.asked] == [E164("819011112222")]
    assert asker.asked[0].wanted is Wanted.ONLINE and asker.asked[0].edge_call_id == f"edge-{CID}"
    assert [c for c in fake.calls if c[0] != "get_variable"] == [
        ("play", CID, "sound:cbgw/presence-online lang=en"), ("hangup", CID, "busy")]
    assert prom.sample("cbgw_edge_presence_calls_total", merchant="acme",
                       outcome="online") == before + 1


async def test_a_toll_free_number_still_gets_the_customer_flow() -> None:
    fake, asker = FakeAri({PRESENTATION_VAR: "allowed_not_screened"}), FakePresence()
    await call(app(asker, fake), "0120123456", script=(finished(),))
    assert asker.asked == []
    assert ("play", CID, "sound:cbgw/received lang=ja") in fake.calls


async def test_no_answer_in_time_is_announced_as_not_confirmed() -> None:
    fake = FakeAri({PRESENTATION_VAR: "allowed_not_screened"})
    slow = FakePresence(PresenceAnswered(PresenceOutcome.ONLINE), delay_s=2.0)
    started = asyncio.get_running_loop().time()
    await call(app(slow, fake), "0120123457", script=(finished(),))
    assert ("play", CID, "sound:cbgw/presence-failed lang=en") in fake.calls
    assert asyncio.get_running_loop().time() - started < 1.5


async def test_a_link_failure_is_announced_as_not_confirmed() -> None:
    fake = FakeAri({PRESENTATION_VAR: "allowed_not_screened"})
    await call(app(FakePresence(PresenceUnavailable("refused")), fake), "0120123457",
               script=(finished(),))
    assert ("play", CID, "sound:cbgw/presence-failed lang=en") in fake.calls
    assert ("hangup", CID, "busy") in fake.calls


async def test_a_withheld_advisor_hears_dial_186_and_nothing_is_asked() -> None:
    fake, asker = FakeAri({PRESENTATION_VAR: "prohib_not_screened"}), FakePresence()
    await call(app(asker, fake), "0120123457", script=(finished(),))
    assert asker.asked == [] and ("play", CID, "sound:cbgw/dial-186 lang=en") in fake.calls


async def test_hanging_up_while_asking_leaves_the_channel_alone() -> None:
    fake = FakeAri({PRESENTATION_VAR: "allowed_not_screened"})
    slow = FakePresence(delay_s=0.2)
    await call(app(slow, fake), "0120123457",
               script=(ari.StasisEnd(ari.Channel(id=CID)),))
    assert [c[0] for c in fake.calls if c[0] != "get_variable"] == []
