"""The ARI adapter driving the flow, with in-process fakes (no Asterisk, no database)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from edge_server.flow_messages import (
    AnnounceMode,
    DecisionUnavailable,
    FlowTimings,
    MerchantSettings,
    Outcome,
)
from edge_server.stasis import (
    PAI_VAR,
    PRESENTATION_VAR,
    CallSession,
    MerchantDirectory,
    StasisApp,
    StasisDeps,
    asserted_number,
)
from edge_server.testing import FakeAri, FakeCallStore, FakeDecider
from shared import ari
from shared.language import Language
from shared.phone import E164
from tests import prom
from tests.harness.json_log import json_log

DIALED = E164("81120123456")
FAST = FlowTimings(decide_s=0.5, store_s=0.5, early_media_guard_s=0.5, answer_guard_s=0.2,
                   refusal_guard_s=0.5, late_store_s=0.5)


def deps(mode: AnnounceMode = AnnounceMode.EARLY_MEDIA, *, fake_ari: FakeAri | None = None,
         store: FakeCallStore | None = None, decider: FakeDecider | None = None,
         callback_when_unrated: bool = True,
         language: Language = Language.JAPANESE) -> StasisDeps:
    merchants = MerchantDirectory({DIALED: MerchantSettings(
        "acme", announce_mode=mode, callback_when_unrated=callback_when_unrated,
        language=language)})
    return StasisDeps(ari=fake_ari or FakeAri({PRESENTATION_VAR: "allowed_not_screened"}),
                      store=store or FakeCallStore(), decider=decider or FakeDecider(),
                      merchants=merchants, timings=FAST, resync_grace_s=0.0)


def start(caller: str = "09012345678", exten: str = "0120123456",
          cid: str = "1700000000.7") -> ari.StasisStart:
    return ari.StasisStart(ari.Channel(id=cid, caller_number=caller, exten=exten,
                                       state="Ring"), args=("inbound",))


def finished(playback_id: str, state: str = "done") -> ari.PlaybackFinished:
    return ari.PlaybackFinished(ari.Playback(id=playback_id, state=state,
                                             target_uri="channel:1700000000.7"))


async def run_call(d: StasisDeps, event: ari.StasisStart,
                   script: list[ari.Event] | None = None, *, after_s: float = 0.05
                   ) -> CallSession:
    queue: asyncio.Queue[ari.Event] = asyncio.Queue()
    session = CallSession(d, event, queue)
    task = asyncio.create_task(session.run())
    for item in script or []:
        await asyncio.sleep(after_s)
        queue.put_nowait(item)
    await asyncio.wait_for(task, 3)
    return session


async def test_early_media_call_is_stored_announced_rejected_busy_then_released() -> None:
    fake, store = FakeAri({PRESENTATION_VAR: "allowed_not_screened"}), FakeCallStore()
    d = deps(fake_ari=fake, store=store)
    session = await run_call(d, start(), [finished("1700000000.7-pb1")])
    assert [c for c in fake.names() if c != "get_variable"] == ["play", "hangup"]
    assert ("play", "1700000000.7", "sound:cbgw/received lang=ja") in fake.calls
    assert ("hangup", "1700000000.7", "busy") in fake.calls
    assert store.events == ["store edge-1700000000.7", "release edge-1700000000.7"]
    assert store.released == [("edge-1700000000.7", Outcome.RELEASED)]
    assert store.stored["edge-1700000000.7"].caller == E164("819012345678")
    assert {c[2] for c in fake.calls if c[0] == "get_variable"} == {PRESENTATION_VAR, PAI_VAR}
    assert session.state.outcome is Outcome.RELEASED  # type: ignore[union-attr]


async def test_an_english_merchant_callers_hear_the_english_prompts() -> None:
    fake = FakeAri({PRESENTATION_VAR: "allowed_not_screened"})
    await run_call(deps(fake_ari=fake, language=Language.ENGLISH), start(),
                   [finished("1700000000.7-pb1")])
    assert ("play", "1700000000.7", "sound:cbgw/received lang=en") in fake.calls
    fake = FakeAri({PRESENTATION_VAR: "allowed_not_screened"})
    await run_call(deps(fake_ari=fake, language=Language.ENGLISH), start(caller="anonymous"),
                   [finished("1700000000.7-pb1")])
    assert ("play", "1700000000.7", "sound:cbgw/dial-186 lang=en") in fake.calls


async def test_answer_mode_is_cut_by_the_guard_if_the_prompt_runs_long() -> None:
    fake, store = FakeAri(), FakeCallStore()
    started = asyncio.get_running_loop().time()
    await run_call(deps(AnnounceMode.ANSWER, fake_ari=fake, store=store), start())
    elapsed = asyncio.get_running_loop().time() - started
    assert [c for c in fake.names() if c != "get_variable"] == ["answer", "play", "hangup"]
    assert ("hangup", "1700000000.7", "normal") in fake.calls
    assert store.released == [("edge-1700000000.7", Outcome.RELEASED_AFTER_GUARD)]
    assert elapsed < 2.0     # the 0.2 s guard, with room for a loaded machine


async def test_caller_hanging_up_mid_announcement_is_still_called_back() -> None:
    fake, store = FakeAri(), FakeCallStore()
    await run_call(deps(fake_ari=fake, store=store), start(),
                   [ari.StasisEnd(ari.Channel(id="1700000000.7"))])
    assert "hangup" not in fake.names()
    assert store.released == [("edge-1700000000.7", Outcome.RELEASED_MID_ANNOUNCEMENT)]


async def test_withheld_caller_hears_dial_186_and_nothing_is_stored() -> None:
    fake, store = FakeAri({PRESENTATION_VAR: "allowed_not_screened"}), FakeCallStore()
    await run_call(deps(fake_ari=fake, store=store), start(caller="anonymous"),
                   [finished("1700000000.7-pb1")])
    assert ("play", "1700000000.7", "sound:cbgw/dial-186 lang=ja") in fake.calls
    assert ("hangup", "1700000000.7", "busy") in fake.calls
    assert "answer" not in fake.names()
    assert not store.stored and [r.outcome for r in store.recorded] == [Outcome.WITHHELD]


async def test_prohibited_presentation_with_pai_is_withheld() -> None:
    fake = FakeAri({PRESENTATION_VAR: "prohib_not_screened",
                    PAI_VAR: "<sip:+819012345678@10.0.0.1;user=phone>"})
    store = FakeCallStore()
    await run_call(deps(fake_ari=fake, store=store), start(caller="+819012345678"),
                   [finished("1700000000.7-pb1")])
    assert not store.stored and store.recorded[0].outcome is Outcome.WITHHELD


async def test_unknown_dialled_number_is_404_unallocated() -> None:
    fake = FakeAri()
    await run_call(deps(fake_ari=fake), start(exten="0120000000"))
    assert [c for c in fake.calls if c[0] != "get_variable"] == [
        ("hangup", "1700000000.7", "unallocated")]


async def test_database_down_means_503_and_no_announcement() -> None:
    fake, store = FakeAri(), FakeCallStore()
    store.fail_store = OSError("connection refused")
    await run_call(deps(fake_ari=fake, store=store), start())
    assert [c for c in fake.calls if c[0] != "get_variable"] == [
        ("hangup", "1700000000.7", "congestion")]
    assert not store.released


async def test_slow_store_keeps_the_call_direct_and_the_late_commit_is_cancelled() -> None:
    fake, store = FakeAri(), FakeCallStore()
    store.store_delay_s = 0.8  # guard is 0.5 s
    await run_call(deps(fake_ari=fake, store=store), start())
    assert ("continue", "1700000000.7", "direct,operator,1") in fake.calls
    assert "play" not in fake.names() and "hangup" not in fake.names()
    assert store.cancelled == ["edge-1700000000.7"] and not store.released


async def test_decision_to_keep_direct_continues_to_the_operator() -> None:
    fake = FakeAri()
    d = deps(fake_ari=fake, decider=FakeDecider(DecisionUnavailable("no deck")),
             callback_when_unrated=False)
    await run_call(d, start())
    assert ("continue", "1700000000.7", "direct,operator,1") in fake.calls


async def test_slow_decision_falls_back_to_the_merchant_default() -> None:
    fake, store = FakeAri(), FakeCallStore()
    d = deps(fake_ari=fake, store=store, decider=FakeDecider(delay_s=2.0))
    await run_call(d, start(), [finished("1700000000.7-pb1")], after_s=0.7)
    assert "decision timed out" in store.stored["edge-1700000000.7"].decision_reason


async def test_failed_playback_still_ends_and_releases() -> None:
    fake, store = FakeAri(), FakeCallStore()
    fake.fail["play"] = ari.AriHttpError(500, "boom")
    await run_call(deps(fake_ari=fake, store=store), start())
    assert ("hangup", "1700000000.7", "busy") in fake.calls
    assert store.released == [("edge-1700000000.7", Outcome.RELEASED)]


async def test_a_hang_up_lost_with_the_websocket_still_releases_the_request() -> None:
    """The hang-up goes on the events websocket: if it drops with Asterisk (the hang-up
    unsent, or sent and unanswered), the call still ends and its request is released;
    the channel, if it outlived that, is ended by the re-sync on the next connect."""
    fake, store = FakeAri(), FakeCallStore()
    fake.fail["hangup"] = ari.AriUnavailable("ARI events websocket lost")
    session = await run_call(deps(fake_ari=fake, store=store), start(),
                             [finished("1700000000.7-pb1")])
    assert [c for c in fake.names() if c != "get_variable"] == ["play", "hangup"]
    assert store.released == [("edge-1700000000.7", Outcome.RELEASED)]
    assert session.state.outcome is Outcome.RELEASED  # type: ignore[union-attr]


@pytest.mark.parametrize(("header", "number"), [
    ("<sip:+819012345678@10.0.0.1;user=phone>", "+819012345678"),
    ('"Taro" <tel:+819012345678>', "+819012345678"),
    ("sip:09012345678@carrier", "09012345678"),
    ("garbage", None), (None, None), ("", None),
])
def test_asserted_number_reads_the_user_part(header: str | None, number: str | None) -> None:
    assert asserted_number(header) == number


# --- re-sync on (re)connect ----------------------------------------------------------------

async def test_resync_recovers_orphans_and_wakes_vanished_sessions() -> None:
    store = FakeCallStore()
    fake = FakeAri(channels={
        "orphan.held": ari.Channel(id="orphan.held", state="Ring"),
        "orphan.fresh": ari.Channel(id="orphan.fresh", state="Ring"),
    })
    d = deps(fake_ari=fake, store=store)
    from edge_server.flow_messages import StoreRequest

    store.stored["edge-orphan.held"] = StoreRequest(
        "edge-orphan.held", "orphan.held", "acme", E164("819012345678"), DIALED,
        AnnounceMode.EARLY_MEDIA, "ok")
    app = StasisApp(d)
    live = CallSession(d, start(cid="live.1"), asyncio.Queue())
    app.sessions["live.1"] = live
    orphans, vanished = await app.resync()
    assert sorted(orphans) == ["orphan.fresh", "orphan.held"] and vanished == ["live.1"]
    assert ("hangup", "orphan.held", "busy") in fake.calls
    assert ("hangup", "orphan.fresh", "congestion") in fake.calls
    assert store.released == [("edge-orphan.held", Outcome.RELEASED_AFTER_GUARD)]
    assert live.inbox.qsize() == 1


async def test_router_runs_one_session_per_call() -> None:
    fake, store = FakeAri(), FakeCallStore()
    app = StasisApp(deps(fake_ari=fake, store=store))

    app.router.dispatch(ari.Connected())
    app.router.dispatch(start(cid="a.1"))
    app.router.dispatch(start(cid="b.1", caller="anonymous"))
    await asyncio.sleep(0.1)
    app.router.dispatch(finished("a.1-pb1"))
    app.router.dispatch(ari.PlaybackFinished(ari.Playback(id="b.1-pb1",
                                                          target_uri="channel:b.1")))
    await asyncio.wait_for(app.router.drain(), 3)
    assert app.connected and not app.sessions
    assert ("hangup", "a.1", "busy") in fake.calls and ("hangup", "b.1", "busy") in fake.calls
    assert [r for r, _ in store.released] == ["edge-a.1"]


async def test_every_line_of_a_call_names_it_and_its_merchant_even_from_child_tasks() -> None:
    """Two calls at once, to two merchants, their stores failing (logged from the store's
    child task): each line carries its own call's id and merchant, never the other's."""
    bento = E164("81120987654")
    store = FakeCallStore()
    store.fail_store = OSError("connection refused")
    d = StasisDeps(ari=FakeAri({PRESENTATION_VAR: "allowed_not_screened"}), store=store,
                   decider=FakeDecider(), merchants=MerchantDirectory({
                       DIALED: MerchantSettings("acme"), bento: MerchantSettings("bento")}),
                   timings=FAST, resync_grace_s=0.0)
    with json_log("edge", logging.INFO) as logged:
        await asyncio.gather(run_call(d, start(cid="1700000000.1")),
                             run_call(d, start(cid="1700000000.2", exten="0120987654")))
    lines = logged()
    assert {(line["call_id"], line["merchant"]) for line in lines} == {
        ("edge-1700000000.1", "acme"), ("edge-1700000000.2", "bento")}
    not_stored = {line["call_id"] for line in lines
                  if line["message"].startswith("request not stored")}
    assert not_stored == {"edge-1700000000.1", "edge-1700000000.2"}
    assert not any("1700000000" in line["message"] for line in lines), \
        "the call id is a field, not part of the text"


async def test_each_call_is_counted_by_merchant_outcome_and_reason() -> None:
    """``cbgw_edge_calls_total``: a call-back released, a withheld caller refused, a
    number no merchant has (``unknown``)."""
    series = [("acme", "callback", "callback_released"), ("acme", "refused", "caller_id_withheld"),
              ("unknown", "refused", "unallocated_number")]

    def counts() -> list[float]:
        return [prom.sample("cbgw_edge_calls_total", merchant=m, outcome=o, reason=r)
                for m, o, r in series]

    before = counts()
    await run_call(deps(), start(), [finished("1700000000.7-pb1")])
    await run_call(deps(), start(caller="anonymous"), [finished("1700000000.7-pb1")])
    await run_call(deps(), start(exten="0120999999"))
    assert [a - b for a, b in zip(counts(), before, strict=True)] == [1, 1, 1]


async def test_the_caller_s_headers_come_with_stasis_start_without_asking_asterisk() -> None:
    """The dialplan passes the presentation and the URI-encoded PAI after ``inbound``."""
    fake, store = FakeAri(), FakeCallStore()
    withheld = ari.StasisStart(
        ari.Channel(id="1700000000.7", caller_number="+819012345678", exten="0120123456",
                    state="Ring"),
        args=("inbound", "prohib_not_screened",
              "%3Csip%3A%2B819012345678%4010.0.0.1%3Buser%3Dphone%3E"))
    await run_call(deps(fake_ari=fake, store=store), withheld, [finished("1700000000.7-pb1")])
    assert "get_variable" not in fake.names()
    assert not store.stored and store.recorded[0].outcome is Outcome.WITHHELD
    fake, store = FakeAri(), FakeCallStore()
    allowed = ari.StasisStart(withheld.channel, args=("inbound", "allowed_not_screened", ""))
    await run_call(deps(fake_ari=fake, store=store), allowed, [finished("1700000000.7-pb1")])
    assert "get_variable" not in fake.names()
    assert store.stored["edge-1700000000.7"].caller == E164("819012345678")
