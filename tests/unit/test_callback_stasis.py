"""The ARI adapter (CallRunner) with in-process fakes: ARI events in, REST calls out."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from callback_server.call_ports import CallContext
from callback_server.call_runner import CallRunner
from callback_server.dialer_messages import Finish, Job, Reason, RetryPolicy, Route
from callback_server.ivr import Submit
from callback_server.ivr_flow import load_named
from callback_server.testing import FakeAri, FixedRater, MemoryStore
from shared import ari
from shared.language import Language
from shared.money import Money
from shared.phone import E164

A = Route("carrier-a", "PJSIP/819012345678@carrier-a")
B = Route("carrier-b", "PJSIP/819012345678@carrier-b")


def job() -> Job:
    return Job(callback_id="cb-9", merchant_id="acme", destination=E164("819012345678"),
               caller_id=E164("81120123456"), ring_timeout_s=30,
               policy=RetryPolicy(3, (30, 120, 600)), attempt_no=1, leg_seq=0)


class Call:
    def __init__(self, store: MemoryStore | None = None,
                 language: Language = Language.JAPANESE, ctx: CallContext | None = None,
                 **ports: Any) -> None:
        self.ari = FakeAri()
        self.store = store or MemoryStore()
        ctx = ctx or CallContext("edge-9", "ntt-freedial", load_named("order"),
                                 language=language)
        self.runner = CallRunner(job(), ctx, client=self.ari, router=self.ari.router,
                                 store=self.store, rater=FixedRater(), **ports)
        self.task: asyncio.Task[Finish | None] | None = None

    async def start(self, *routes: Route) -> None:
        self.task = asyncio.create_task(self.runner.run(routes))
        await settle()

    async def push(self, *events: ari.Event) -> None:
        for event in events:
            self.ari.router.dispatch(event)
            await settle()

    async def keys(self, channel_id: str, digits: str) -> None:
        for d in digits:
            await self.push(ari.ChannelDtmfReceived(ari.Channel(id=channel_id), d))

    async def finish_prompt(self, channel_id: str) -> None:
        playback_id = self.ari.named("play")[-1][2]
        await self.push(ari.PlaybackFinished(ari.Playback(
            id=playback_id, target_uri=f"channel:{channel_id}")))

    async def outcome(self) -> Finish | None:
        assert self.task is not None
        return await asyncio.wait_for(self.task, 2)


async def settle() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


def ch(cid: str) -> ari.Channel:
    return ari.Channel(id=cid)


async def test_an_english_merchant_ivr_plays_english_prompts() -> None:
    call = Call(language=Language.ENGLISH)
    await call.start(A)
    await call.push(ari.StasisStart(ch("cb-9-01")))
    await call.keys("cb-9-01", "1")
    plays = call.ari.named("play")
    assert [p[1] for p in plays] == [("sound:cbgw/confirm-callback",),
                                     ("sound:cbgw/welcome-menu",)]
    assert {p[3] for p in plays} == {"en"}


async def test_failover_answer_order_ivr_cdr_and_finish() -> None:
    call = Call()
    call.store.order = call.ari.calls  # type: ignore[assignment]  # one timeline
    await call.start(A, B)
    assert call.ari.named("originate")[0] == (A.endpoint, "cb-9-01", "+81120123456", 30)
    await call.push(ari.ChannelDestroyed(ch("cb-9-01"), cause=34, cause_txt="Congestion"))
    assert [o[0] for o in call.ari.named("originate")] == [A.endpoint, B.endpoint]
    timeline = [c if isinstance(c, str) else c[0] for c in call.ari.calls]
    assert timeline.index("persist cb-9-02") < timeline.index("originate", 1 + timeline.index(
        "persist cb-9-02") - 1)
    await call.push(ari.StasisStart(ch("cb-9-02")))
    # Confirm before connect: the order flow asks for 1 before its menu.
    assert call.ari.named("play")[-1][1] == ("sound:cbgw/confirm-callback",)
    await call.keys("cb-9-02", "1")
    assert call.ari.named("play")[-1][1] == ("sound:cbgw/welcome-menu",)
    assert call.runner.ivr.confirmed
    await call.keys("cb-9-02", "1")
    await call.keys("cb-9-02", "1234#")
    await call.keys("cb-9-02", "2#")
    assert "digits:1234" in call.ari.named("play")[-1][1]
    assert {play[3] for play in call.ari.named("play")} == {"ja"}   # the default language
    await call.finish_prompt("cb-9-02")        # read-back done -> confirm prompt
    await call.keys("cb-9-02", "1")
    assert call.store.infos == [Submit("order", (("item_code", "1234"), ("quantity", "2")))]
    await call.finish_prompt("cb-9-02")        # thank-you done -> hang up
    assert "cb-9-02" in call.ari.named("hangup")
    await call.push(ari.StasisEnd(ch("cb-9-02")))
    assert await call.outcome() == Finish("completed", Reason.ANSWERED, 1)
    (failed, _, _, _), (answered, billed, cost, direct) = call.store.cdrs
    assert failed.call_id == "cb-9-01" and failed.disposition == "failed"
    assert answered.call_id == "cb-9-02" and answered.carrier_id == "carrier-b"
    assert answered.disposition == "answered" and billed == 60
    assert cost == Money.of("0.1398", "USD") and direct is not None
    assert ("cb-9-02", "answered", None) in call.store.results
    assert call.ari.router.channel_ids == frozenset()


async def test_the_rounds_end_stops_routing_its_own_legs_and_no_other_calls() -> None:
    call = Call()
    other = call.ari.router.subscribe("cb-90-01")      # another call's leg, a like id
    await call.start(A, B)
    await call.push(ari.ChannelDestroyed(ch("cb-9-01"), cause=34, cause_txt="Congestion"))
    assert {"cb-9-01", "cb-9-02"} <= call.ari.router.channel_ids
    await call.push(ari.StasisEnd(ch("cb-9-02")))       # unanswered: the round is over
    await call.outcome()
    assert call.ari.router.channel_ids == frozenset({"cb-90-01"})
    call.ari.router.dispatch(ari.StasisEnd(ch("cb-90-01")))
    assert other.qsize() == 1


async def test_allocation_failed_fails_over_immediately() -> None:
    call = Call()
    call.ari.allocation_fails.add(A.endpoint)
    await call.start(A, B)
    assert [o[1] for o in call.ari.named("originate")] == ["cb-9-01", "cb-9-02"]
    assert ("cb-9-01", "failed", None) in call.store.results
    await call.push(ari.ChannelDestroyed(ch("cb-9-02"), cause=17))
    assert await call.outcome() == Finish("retry", Reason.CUSTOMER_BUSY, 1, 30)


async def test_a_leg_placed_without_an_answer_to_its_originate_goes_on() -> None:
    """The originate's answer lost (ARI timed out on a loaded machine) but the leg placed:
    the round keeps it (no second carrier rings the customer), runs its IVR when it is
    answered, and accounts for it."""
    call = Call()
    call.ari.unanswered.add(A.endpoint)
    await call.start(A, B)
    assert [o[1] for o in call.ari.named("originate")] == ["cb-9-01"]
    assert ("cb-9-01", "originated", None) in call.store.results
    assert "cb-9-01" not in call.ari.named("hangup")
    await call.push(ari.StasisStart(ch("cb-9-01")))
    assert call.ari.named("play")[-1][:2] == ("cb-9-01", ("sound:cbgw/confirm-callback",))
    assert ("cb-9-01", "answered", None) in call.store.results
    await call.push(ari.StasisEnd(ch("cb-9-01")))
    assert await call.outcome() == Finish("completed", Reason.ANSWERED, 1)


async def test_a_leg_not_placed_and_not_answered_is_hung_up_by_id_and_fails_over() -> None:
    call = Call()
    call.ari.unanswered.add(A.endpoint)
    call.ari.placed_unanswered = False
    await call.start(A, B)
    assert [o[1] for o in call.ari.named("originate")] == ["cb-9-01", "cb-9-02"]
    assert "cb-9-01" in call.ari.named("hangup")       # in case it is placed late
    assert ("cb-9-01", "failed", None) in call.store.results


async def test_busy_never_fails_over() -> None:
    call = Call()
    await call.start(A, B)
    await call.push(ari.ChannelDestroyed(ch("cb-9-01"), cause=17, cause_txt="User busy"))
    assert await call.outcome() == Finish("retry", Reason.CUSTOMER_BUSY, 1, 30)
    assert len(call.ari.named("originate")) == 1


async def test_lost_lease_dials_no_one() -> None:
    call = Call(MemoryStore(lease_held=False))
    await call.start(A, B)
    assert await call.outcome() is None
    assert call.ari.named("originate") == []


async def test_operator_leg_is_bridged_with_dtmf_events_and_torn_down() -> None:
    call = Call()
    await call.start(B)
    await call.push(ari.StasisStart(ch("cb-9-01")))
    await call.keys("cb-9-01", "1")          # confirm the call-back first
    await call.keys("cb-9-01", "0")
    op = call.ari.named("originate")[-1]
    assert op[0] == "PJSIP/operator@edge-trunk" and op[1] == "cb-9-02"
    await call.push(ari.StasisStart(ch("cb-9-02")))
    assert call.ari.named("create_bridge") == [("cb-9-br02", "mixing,dtmf_events")]
    assert call.ari.named("add_channel") == [("cb-9-br02", ("cb-9-01", "cb-9-02"))]
    await call.push(ari.ChannelHangupRequest(ch("cb-9-01"), cause=16),
                    ari.StasisEnd(ch("cb-9-01")))
    assert "cb-9-02" in call.ari.named("hangup")
    assert "cb-9-br02" in call.ari.named("destroy_bridge")
    await call.push(ari.StasisEnd(ch("cb-9-02")))
    assert await call.outcome() == Finish("completed", Reason.ANSWERED, 1)
    assert sorted(c[0].leg for c in call.store.cdrs) == ["customer", "operator"]


async def test_shutdown_mid_ivr_hangs_up_and_completes() -> None:
    call = Call()
    await call.start(B)
    await call.push(ari.StasisStart(ch("cb-9-01")))
    call.runner.shutdown()
    await settle()
    assert "cb-9-01" in call.ari.named("hangup")
    await call.push(ari.StasisEnd(ch("cb-9-01")))
    assert await call.outcome() == Finish("completed", Reason.ANSWERED, 1)
    assert call.store.cdrs[0][0].duration_s >= Decimal("0")


@pytest.mark.parametrize("cause", [21, 1])
async def test_final_causes_end_the_job(cause: int) -> None:
    call = Call()
    await call.start(A, B)
    await call.push(ari.ChannelDestroyed(ch("cb-9-01"), cause=cause))
    outcome = await call.outcome()
    assert outcome is not None and outcome.status == "failed"
    assert len(call.ari.named("originate")) == 1


async def test_resync_reports_vanished_legs() -> None:
    call = Call()
    await call.start(B)
    await call.push(ari.StasisStart(ch("cb-9-01")))
    call.ari.channels.pop("cb-9-01")            # gone while the websocket was down
    await call.runner.resync()
    await settle()
    assert await call.outcome() == Finish("completed", Reason.ANSWERED, 1)


async def test_a_leg_that_died_with_its_asterisk_is_billed_until_the_websocket_was_lost(
        ) -> None:
    """Asterisk killed mid-call: no record of the leg (its hangup handler never ran). The
    call ends when the events websocket was lost, the last moment it is known up, not
    when the server got Asterisk back."""
    call = Call()
    await call.start(B)
    answered = datetime.now(UTC) - timedelta(seconds=60)
    await call.push(ari.StasisStart(ch("cb-9-01"), timestamp=answered))
    call.ari.channels.pop("cb-9-01")            # gone with the Asterisk
    await call.runner.resync(lost_at=answered + timedelta(seconds=42))
    await settle()
    assert await call.outcome() == Finish("completed", Reason.ANSWERED, 1)
    cdr = call.store.cdrs[0][0]
    assert cdr.ended_at == answered + timedelta(seconds=42)
    assert cdr.duration_s == Decimal("42")


async def test_a_leg_lost_before_it_was_answered_never_ends_before_it_began() -> None:
    call = Call()
    await call.start(B)
    began = call.runner.state.customer.started_at if call.runner.state.customer else None
    assert began is not None
    call.ari.channels.pop("cb-9-01")
    await call.runner.resync(lost_at=began - timedelta(seconds=5))   # lost just before
    await settle()
    outcome = await call.outcome()
    assert outcome is not None and outcome.status != "completed"
    assert all(c.ended_at >= began for c, *_ in call.store.cdrs)
