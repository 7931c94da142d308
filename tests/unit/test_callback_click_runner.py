"""A web click-to-call through its ARI adapter (ClickRunner + ClickConsult) with the
in-process fakes: both orders, the legs dialled, bridged, the record (method
click_to_call) saved and the job finished; the second party not answering; the
consultation kept in ``consult_live`` while the two talk, and the advisor first from
their answer (a restart ends it with no talk)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from advisors.model import FirstParty, Rules, State
from advisors.records import EndReason, Method, RingOutcome
from callback_server import click_to_call as ctc
from callback_server.call_ports import CallContext
from callback_server.click_runner import ClickRunner
from callback_server.dialer_messages import Finish, Job, Reason, RetryPolicy, Route
from callback_server.ivr_flow import load_named
from callback_server.testing import (
    FakeAri,
    FixedRater,
    MemoryDesk,
    MemoryLive,
    MemoryRecords,
    MemoryStore,
)
from shared import ari
from shared.phone import E164

CUSTOMER = (Route("carrier-b", "PJSIP/819012345678@carrier-b"),
            Route("carrier-a", "PJSIP/819012345678@carrier-a"))
ADVISOR_2 = (Route("carrier-a", "PJSIP/81312340002@carrier-a"),)
REQUESTED = datetime(2026, 12, 5, 1, 0, tzinfo=UTC)     # the web request's arrival


class Click:
    def __init__(self, first: FirstParty = FirstParty.CUSTOMER, advisor: int = 2) -> None:
        self.ari = FakeAri()
        self.store = MemoryStore()
        self.desk = MemoryDesk(3, Rules(ring_timeout_s=20, click_to_call_first=first),
                               {2: ADVISOR_2})
        self.records = MemoryRecords()
        self.live = MemoryLive()
        job = Job(callback_id="cb-7", merchant_id="acme", destination=E164("819012345678"),
                  caller_id=E164("81120123456"), ring_timeout_s=30,
                  policy=RetryPolicy(1, ()), attempt_no=1, leg_seq=0)
        self.runner = ClickRunner(job, CallContext("click:cb-7", "ntt-freedial",
                                                   load_named("consult"), REQUESTED), advisor,
                                  client=self.ari, router=self.ari.router, store=self.store,
                                  rater=FixedRater(), desk=self.desk,
                                  consultations=self.records, billing=None,
                                  live=self.live)
        self.task: asyncio.Task[Finish | None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.runner.run(CUSTOMER))
        await settle()

    async def push(self, *events: ari.Event) -> None:
        for event in events:
            self.ari.router.dispatch(event)
            await settle()

    async def outcome(self) -> Finish | None:
        assert self.task is not None
        return await asyncio.wait_for(self.task, 5)

    def originated(self) -> list[tuple[str, str]]:
        return [(cid, endpoint) for endpoint, cid, _, _ in self.ari.named("originate")]


def shown(click: Click) -> State:
    """Advisor 2's state."""
    return click.desk.seats[2].state


async def settle() -> None:
    for _ in range(40):
        await asyncio.sleep(0)


async def test_the_customer_first_then_the_advisor_bridged_and_recorded() -> None:
    click = Click()
    await click.start()
    assert click.originated() == [("cb-7-01", CUSTOMER[0].endpoint)]   # the cheapest first
    assert click.store.legs["cb-7-01"].leg == "customer"
    await click.push(ari.ChannelDestroyed(ari.Channel(id="cb-7-01"), cause=34))  # carrier fault
    assert click.originated()[-1] == ("cb-7-02", CUSTOMER[1].endpoint)           # the next
    assert shown(click) is State.STANDBY                  # not rung yet
    await click.push(ari.StasisStart(ari.Channel(id="cb-7-02")))
    assert click.ari.named("play")[-1][:3] == ("cb-7-02", (ctc.CONNECTING_ADVISOR,),
                                               "cb-7-c1-connecting")
    assert click.originated()[-1] == ("cb-7-03", ADVISOR_2[0].endpoint)
    assert click.store.legs["cb-7-03"].leg == "advisor"
    ringing = click.live.rows["cb-7-c1"]                  # the advisor rings: kept
    # kept before the assignment offered the call (nobody rung yet), then ringing
    assert [(w.advisor_id, w.advisor_channel) for w in click.live.writes] == [
        (None, None), (2, "cb-7-03")]
    assert (ringing.customer_channel, ringing.advisor_channel, ringing.bridge_id,
            ringing.advisor_id, ringing.over.answered_at) == ("cb-7-02", "cb-7-03", None, 2,
                                                             None)
    await click.push(ari.StasisStart(ari.Channel(id="cb-7-03")))
    assert click.ari.named("add_channel") == [("cb-7-c1-br", ("cb-7-02", "cb-7-03"))]
    assert shown(click) is State.TALKING
    kept = click.live.rows["cb-7-c1"]                     # a restart would end it
    assert (kept.customer_channel, kept.advisor_channel, kept.bridge_id, kept.advisor_id) \
        == ("cb-7-02", "cb-7-03", "cb-7-c1-br", 2)
    await click.push(ari.StasisEnd(ari.Channel(id="cb-7-03")))         # the advisor hangs up
    assert "cb-7-02" in click.ari.named("hangup")
    await click.push(ari.StasisEnd(ari.Channel(id="cb-7-02")))
    assert click.live.rows == {}                          # dropped with the record saved
    assert await click.outcome() == Finish("completed", Reason.ANSWERED, 1)
    (saved,) = click.records.saved
    assert saved.method is Method.CLICK_TO_CALL and saved.advisor_id == 2
    assert saved.consultation_id == "cb-7-c1" and saved.customer_call_id == "cb-7-02"
    assert saved.requested_at == REQUESTED
    assert saved.end_reason is EndReason.ADVISOR_HANGUP and saved.answered_at is not None
    assert [r.outcome for r in saved.rings] == [RingOutcome.ANSWERED]
    assert click.store.finished == [Finish("completed", Reason.ANSWERED, 1)]
    # the guard hears of the round: rang, and a person who talked (confirmed)
    assert [(r.rang, r.confirmed) for r in click.store.rounds] == [(True, True)]


async def test_the_advisor_first_the_customer_not_answering_hears_nothing_billed() -> None:
    click = Click(FirstParty.ADVISOR)
    await click.start()
    assert click.originated() == [("cb-7-01", ADVISOR_2[0].endpoint)]
    await click.push(ari.StasisStart(ari.Channel(id="cb-7-01")))
    assert click.ari.named("play")[-1][:2] == ("cb-7-01", (ctc.CONNECTING_CUSTOMER,))
    assert click.originated()[-1] == ("cb-7-02", CUSTOMER[0].endpoint)
    await click.push(ari.ChannelDestroyed(ari.Channel(id="cb-7-02"), cause=19))  # no answer
    assert click.ari.named("play")[-1][:3] == ("cb-7-01", (ctc.NO_ANSWER_PROMPT,),
                                               "cb-7-c1-no-answer")
    assert "cb-7-01" not in click.ari.named("hangup")                 # hears it first
    await click.push(ari.PlaybackFinished(ari.Playback(id="cb-7-c1-no-answer",
                                                       target_uri="channel:cb-7-01")))
    assert "cb-7-01" in click.ari.named("hangup")
    assert await click.outcome() == Finish("failed", Reason.NO_ANSWER, 1)
    (saved,) = click.records.saved
    assert saved.answered_at is None and saved.talk_s == 0
    assert saved.end_reason is EndReason.CUSTOMER_ABANDONED
    assert click.ari.named("create_bridge") == []
    # kept from the advisor's answer, without an answer (no talk), dropped with the record
    assert click.live.writes and all(w.over.answered_at is None for w in click.live.writes)
    assert click.live.rows == {}
    # rang and not confirmed: counts towards the number's lock like a missed call-back
    assert [(r.rang, r.confirmed) for r in click.store.rounds] == [(True, False)]


async def test_the_advisor_first_is_kept_live_from_their_answer_talking_from_the_customers(
        ) -> None:
    click = Click(FirstParty.ADVISOR)
    await click.start()
    ringing = click.live.rows["cb-7-c1"]         # the advisor rings: kept, no customer yet
    assert (ringing.customer_channel, ringing.advisor_channel, ringing.bridge_id) \
        == ("", "cb-7-01", None)
    await click.push(ari.StasisStart(ari.Channel(id="cb-7-01")))      # the advisor answers
    assert click.originated()[-1] == ("cb-7-02", CUSTOMER[0].endpoint)
    # the customer rings: kept (a restart ends it, the advisor freed), with no talk yet
    waiting = click.live.rows["cb-7-c1"]
    assert (waiting.customer_channel, waiting.advisor_channel) == ("cb-7-02", "cb-7-01")
    assert waiting.over.answered_at is None
    await click.push(ari.StasisStart(ari.Channel(id="cb-7-02")))      # the customer answers
    kept = click.live.rows["cb-7-c1"]
    assert (kept.customer_channel, kept.advisor_channel, kept.bridge_id) == (
        "cb-7-02", "cb-7-01", "cb-7-c1-br")
    assert click.runner.consult.click is not None
    leg = click.runner.consult.click.leg
    assert leg is not None and kept.over.answered_at == leg.answered_at   # talk from here
    await click.push(ari.StasisEnd(ari.Channel(id="cb-7-02")))         # the customer hangs up
    await click.push(ari.StasisEnd(ari.Channel(id="cb-7-01")))
    assert await click.outcome() == Finish("completed", Reason.ANSWERED, 1)
    assert click.live.rows == {}


async def test_an_advisor_no_longer_free_is_never_rung() -> None:
    click = Click(advisor=9)
    await click.start()
    assert await click.outcome() == Finish("failed", Reason.ADVISOR_UNAVAILABLE, 1)
    assert click.originated() == [] and click.records.saved == []
    assert [(r.rang, r.confirmed) for r in click.store.rounds] == [(False, False)]
