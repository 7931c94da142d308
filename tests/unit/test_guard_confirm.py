"""Confirm before connect, the hard maximum call length and guard-refused legs:
the pure dialer and flow, then the ARI adapter with in-process fakes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from callback_server import dialer, ivr
from callback_server.call_ports import CallContext
from callback_server.call_runner import CallRunner
from callback_server.dialer import DialerState, Phase
from callback_server.dialer_messages import (
    Answered,
    Begin,
    Finish,
    Hangup,
    Job,
    Originate,
    OriginateRefused,
    PersistAttempt,
    Reason,
    RetryPolicy,
    Route,
    StartTimer,
    TimerFired,
)
from callback_server.guard.reasons import GuardRefused, Refusal, Verdict
from callback_server.guard.service import RoundEnd
from callback_server.ivr_flow import FlowError, load_named, parse_flow
from callback_server.testing import FakeAri, FixedRater, MemoryStore
from shared import ari
from shared.phone import E164

T0 = datetime(2026, 11, 22, 1, 0, tzinfo=UTC)
A = Route("carrier-a", "PJSIP/819012345678@carrier-a")
B = Route("carrier-b", "PJSIP/819012345678@carrier-b")


def job(max_call_s: int = 3600) -> Job:
    return Job(callback_id="cb-7", merchant_id="acme", destination=E164("819012345678"),
               caller_id=E164("81120123456"), ring_timeout_s=30,
               policy=RetryPolicy(3, (30, 120, 600)), attempt_no=1, leg_seq=0,
               max_call_s=max_call_s)


# --- the flow ------------------------------------------------------------------------------

def test_order_flow_asks_for_1_within_15_s_before_anything() -> None:
    flow = load_named("order")
    assert flow.start == flow.confirm_callback == "confirm_callback"
    assert flow.confirm_yes == "main"
    state, cmds = ivr.start(flow, "ch")
    assert [c.media for c in cmds if isinstance(c, ivr.Play)] == [
        ("sound:cbgw/confirm-callback",)]
    state, cmds = ivr.transition(state, ivr.PlaybackFinished("ch-p1"))
    assert cmds == [ivr.StartTimer("ch-t2", 15.0)]
    state, cmds = ivr.transition(state, ivr.Timeout("ch-t2"))      # no 1 within 15 s
    assert state.node == "goodbye"


@pytest.mark.parametrize("key", ["2", "9", "*"])
def test_any_other_key_ends_the_call(key: str) -> None:
    state, _ = ivr.start(load_named("order"), "ch")
    state, _ = ivr.transition(state, ivr.Dtmf(key))
    assert state.node == "goodbye"


def test_gate_must_be_the_start_confirm_node() -> None:
    base = {"name": "x", "start": "menu", "confirm_callback": "gate", "nodes": {
        "gate": {"type": "confirm", "prompt": "sound:cbgw/confirm-callback", "yes": "menu",
                 "no": "bye", "on_fail": "bye"},
        "menu": {"type": "menu", "prompt": "sound:x", "choices": {"1": "gate"},
                 "on_fail": "bye"},
        "bye": {"type": "hangup"}}}
    with pytest.raises(FlowError, match="must be the start node"):
        parse_flow(base, "x.toml")
    base["start"] = "gate"
    assert parse_flow(base, "x.toml").confirm_yes == "menu"
    base["confirm_callback"] = "menu"
    base["start"] = "menu"
    with pytest.raises(FlowError, match="confirm node"):
        parse_flow(base, "x.toml")


# --- the pure dialer -----------------------------------------------------------------------

def test_originate_carries_asterisk_limit_and_answer_starts_the_max_timer() -> None:
    state, cmds = dialer.transition(DialerState.new(job(600)), Begin((A,), T0))
    orig = next(c for c in cmds if isinstance(c, Originate))
    assert dict(orig.variables) == {"TIMEOUT(absolute)": str(600 + 30 + 5),
                                    "CHANNEL(hangup_handler_push)": "cbgw-leg-end,s,1"}
    state, cmds = dialer.transition(state, Answered("cb-7-01", T0))
    assert StartTimer(dialer.T_MAX, 600) in cmds
    state, cmds = dialer.transition(state, TimerFired(dialer.T_MAX, T0))
    assert Hangup("cb-7-01") in cmds and state.phase is Phase.TEARDOWN
    assert state.pending == Finish("completed", Reason.MAX_CALL_LENGTH, 1)


def test_guard_refused_leg_fails_over_then_waits_uncounted() -> None:
    state, _ = dialer.transition(DialerState.new(job()), Begin((A, B), T0))
    state, cmds = dialer.transition(state, OriginateRefused("cb-7-01",
                                                            Refusal.CAP_TRUNK_CHANNELS, 30, T0))
    persist = next(c for c in cmds if isinstance(c, PersistAttempt))
    assert persist.carrier_id == "carrier-b" and persist.leg_seq == 1   # seq reused
    state, cmds = dialer.transition(state, OriginateRefused("cb-7-01",
                                                            Refusal.CAP_SPEND_DAILY, 30, T0))
    assert cmds[-1] == Finish("retry", Refusal.CAP_TRUNK_CHANNELS, 0, 30)
    assert state.phase is Phase.DONE


# --- the ARI adapter -----------------------------------------------------------------------

@dataclass
class CappedStore(MemoryStore):
    refuse: set[str] = field(default_factory=set)

    async def persist_leg(self, cmd: PersistAttempt, merchant_id: str) -> None:
        if cmd.carrier_id in self.refuse:
            raise GuardRefused(Verdict(Refusal.CAP_TRUNK_CHANNELS, "full"), 30)
        await super().persist_leg(cmd, merchant_id)


async def settle() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


def runner(j: Job, store: MemoryStore, fake: FakeAri) -> CallRunner:
    return CallRunner(j, CallContext("edge-7", "ntt-freedial", load_named("order")),
                      client=fake, router=fake.router, store=store, rater=FixedRater())


async def test_max_call_length_timer_fires_at_the_limit() -> None:
    fake, store = FakeAri(), MemoryStore()
    call = runner(job(max_call_s=1), store, fake)
    task = asyncio.create_task(call.run((A,)))
    await settle()
    assert fake.variables["cb-7-01"]["TIMEOUT(absolute)"] == "36"
    answered = asyncio.get_running_loop().time()
    fake.router.dispatch(ari.StasisStart(ari.Channel(id="cb-7-01")))
    await settle()
    fake.router.dispatch(ari.ChannelDtmfReceived(ari.Channel(id="cb-7-01"), "1"))
    outcome = await asyncio.wait_for(task, 5)          # FakeAri reports the hang-up
    elapsed = asyncio.get_running_loop().time() - answered
    assert outcome == Finish("completed", Reason.MAX_CALL_LENGTH, 1)
    assert 0.9 <= elapsed < 4.0, elapsed     # the 1 s timer: never early
    assert "cb-7-01" in fake.named("hangup")
    assert store.rounds == [RoundEnd(callback_id="cb-7", attempt_no=1,
                                     number=E164("819012345678"), merchant_id="acme",
                                     rang=True, confirmed=True)]


async def test_unanswered_round_is_reported_unconfirmed() -> None:
    fake, store = FakeAri(), MemoryStore()
    call = runner(job(), store, fake)
    task = asyncio.create_task(call.run((A,)))
    await settle()
    fake.router.dispatch(ari.ChannelDestroyed(ari.Channel(id="cb-7-01"), cause=19))
    assert await asyncio.wait_for(task, 2) == Finish("retry", Reason.NO_ANSWER, 1, 30)
    assert store.rounds[0].rang is True and store.rounds[0].confirmed is False


async def test_capped_trunk_is_skipped_and_nothing_is_dialled_when_all_are() -> None:
    fake = FakeAri()
    store = CappedStore(refuse={"carrier-a"})
    call = runner(job(), store, fake)
    task = asyncio.create_task(call.run((A, B)))
    await settle()
    assert [o[0] for o in fake.named("originate")] == [B.endpoint]
    fake.router.dispatch(ari.ChannelDestroyed(ari.Channel(id="cb-7-01"), cause=17))
    await asyncio.wait_for(task, 2)
    fake2, store2 = FakeAri(), CappedStore(refuse={"carrier-a", "carrier-b"})
    call = runner(job(), store2, fake2)
    outcome = await asyncio.wait_for(call.run((A, B)), 2)
    assert outcome == Finish("retry", Refusal.CAP_TRUNK_CHANNELS, 0, 30)
    assert fake2.named("originate") == []
    assert store2.rounds == []    # refused at admission: queued again, no round counted
