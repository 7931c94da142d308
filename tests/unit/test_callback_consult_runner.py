"""A consultation through the ARI adapter (CallRunner + ConsultRunner) with in-process
fakes: the customer keys an advisor's code, the advisor leg is dialled, bridged, ends,
and the record is saved; also after the events websocket was down."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime

from advisors.errors import NotFound
from advisors.model import Rules, State
from advisors.records import EndReason, Method, RingOutcome
from callback_server.call_ports import CallContext
from callback_server.call_runner import CallRunner
from callback_server.dialer_messages import Finish, Job, Reason, RetryPolicy, Route
from callback_server.ivr_flow import load_named
from callback_server.testing import FakeAri, FixedRater, MemoryDesk, MemoryRecords, MemoryStore
from shared import ari
from shared.phone import E164

CUSTOMER = Route("carrier-b", "PJSIP/819012345678@carrier-b")
ADVISOR_2 = (Route("carrier-a", "PJSIP/81312340002@carrier-a"),)


class GoneAdvisorDesk(MemoryDesk):
    """Advisor 1 was deleted after the assignment read the board."""

    async def contact(self, merchant_id: str, advisor_id: int, at: datetime
                      ) -> tuple[str, tuple[Route, ...]]:
        if advisor_id == 1:
            raise NotFound("advisor", advisor_id)
        return await super().contact(merchant_id, advisor_id, at)


class Consultation:
    def __init__(self, desk: type[MemoryDesk] = MemoryDesk) -> None:
        self.ari = FakeAri()
        self.store = MemoryStore()
        self.desk = desk(3, Rules(ring_timeout_s=20), {2: ADVISOR_2})
        self.records = MemoryRecords()
        flow = replace(load_named("consult"), start="main", confirm_callback=None)
        job = Job(callback_id="cb-7", merchant_id="acme", destination=E164("819012345678"),
                  caller_id=E164("81120123456"), ring_timeout_s=30,
                  policy=RetryPolicy(3, (30,)), attempt_no=1, leg_seq=0)
        self.runner = CallRunner(job, CallContext("edge-7", "ntt-freedial", flow),
                                 client=self.ari, router=self.ari.router, store=self.store,
                                 rater=FixedRater(), desk=self.desk,
                                 consultations=self.records)
        self.task: asyncio.Task[Finish | None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.runner.run((CUSTOMER,)))
        await settle()
        await self.push(ari.StasisStart(ari.Channel(id="cb-7-01")))

    async def push(self, *events: ari.Event) -> None:
        for event in events:
            self.ari.router.dispatch(event)
            await settle()

    async def keys(self, digits: str) -> None:
        for d in digits:
            await self.push(ari.ChannelDtmfReceived(ari.Channel(id="cb-7-01"), d))


def shown(call: Consultation) -> State:
    """Advisor 2's state as the site shows it."""
    return call.desk.seats[2].state


async def settle() -> None:
    for _ in range(40):
        await asyncio.sleep(0)


async def test_code_dials_the_advisor_bridges_and_their_hang_up_saves_the_record() -> None:
    call = Consultation()
    await call.start()
    await call.keys("1" + "0002")
    originate = call.ari.named("originate")[-1]
    assert originate == (ADVISOR_2[0].endpoint, "cb-7-02", "+81120123456", 25)
    assert call.store.legs["cb-7-02"].leg == "advisor"
    assert shown(call) is State.RINGING
    await call.push(ari.StasisStart(ari.Channel(id="cb-7-02")))
    assert call.ari.named("create_bridge") == [("cb-7-c1-br", "mixing,dtmf_events")]
    assert call.ari.named("add_channel") == [("cb-7-c1-br", ("cb-7-01", "cb-7-02"))]
    assert shown(call) is State.TALKING
    await call.push(ari.StasisEnd(ari.Channel(id="cb-7-02")))      # the advisor hangs up
    assert shown(call) is State.WRAP_UP
    (saved,) = call.records.saved
    assert saved.method is Method.CODE and saved.advisor_id == 2
    assert saved.end_reason is EndReason.ADVISOR_HANGUP and saved.customer_call_id == "cb-7-01"
    assert [(r.advisor_id, r.outcome) for r in saved.rings] == [(2, RingOutcome.ANSWERED)]
    assert [c.call_id for c in saved.leg_costs] == ["cb-7-02"]
    assert call.ari.named("play")[-1][1] == ("sound:cbgw/goodbye",)   # the IVR's next
    # the advisor leg's CDR, rated through its carrier
    advisor_cdr = next(c for c in call.store.cdrs if c[0].call_id == "cb-7-02")
    assert advisor_cdr[0].leg == "advisor" and advisor_cdr[2] is not None


async def test_an_advisor_whose_contact_is_gone_is_passed_over_for_the_next() -> None:
    call = Consultation(GoneAdvisorDesk)
    await call.start()
    await call.keys("2")                       # the group: advisor 1 is idle the longest
    assert call.ari.named("originate")[-1][1] == "cb-7-02"
    assert call.runner.consult.state is not None
    assert call.runner.consult.state.advisor == 2
    assert call.desk.seats[1].misses == 1      # passed over as a miss


async def test_an_unknown_code_goes_back_to_the_ivr() -> None:
    call = Consultation()
    await call.start()
    await call.keys("1" + "0009")
    assert call.ari.named("play")[-1][1] == ("sound:cbgw/advisor-unknown",
                                             "sound:cbgw/enter-advisor-code")
    assert len(call.ari.named("originate")) == 1                   # the customer's only


async def test_an_advisor_leg_gone_while_the_websocket_was_down_is_caught_up() -> None:
    call = Consultation()
    await call.start()
    await call.keys("1" + "0002")
    await call.push(ari.StasisStart(ari.Channel(id="cb-7-02")))
    call.ari.channels.pop("cb-7-02")          # the advisor hung up while we were away
    await call.runner.resync()
    await settle()
    assert shown(call) is State.WRAP_UP
    assert [r.end_reason for r in call.records.saved] == [EndReason.ADVISOR_HANGUP]
    await call.push(ari.StasisEnd(ari.Channel(id="cb-7-01")))      # the customer leaves
    assert call.task is not None
    assert await asyncio.wait_for(call.task, 2) == Finish("completed", Reason.ANSWERED, 1)
