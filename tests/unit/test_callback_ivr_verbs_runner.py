"""The IVR verbs in the ARI adapter (CallRunner and IvrRunner) with in-process fakes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from callback_server.call_ports import CallContext
from callback_server.ivr_flow import Flow
from callback_server.testing import MemoryStore
from ivr_platform.hours import BusinessHours, Window
from shared import ari
from tests.unit.test_callback_ivr_verbs import HOURS, SET, flow_of
from tests.unit.test_callback_stasis import A, Call, ch

CHANNEL = "cb-9-01"
#: Friday 4 December 2026 10:00 and 20:00 in Tokyo
MORNING = datetime(2026, 12, 4, 1, 0, tzinfo=UTC)
EVENING = datetime(2026, 12, 4, 11, 0, tzinfo=UTC)
NINE_TO_FIVE = BusinessHours(weekly=((Window(540, 1020),),) * 7)

async def answered(flow: Flow, **ctx: Any) -> Call:
    call = Call(store=MemoryStore(), ctx=CallContext("edge-9", "ntt-freedial", flow, **ctx))
    await call.start(A)
    await call.push(ari.StasisStart(ch(CHANNEL)))
    return call


async def test_the_ivr_starts_with_the_caller_variable() -> None:
    call = await answered(flow_of(SET))
    assert call.store.infos[-1].fields[-1] == ("caller", "+819012345678")


async def test_hours_node_branches_on_the_merchants_hours_at_the_clock() -> None:
    flow = flow_of(HOURS)
    call = await answered(flow, hours=NINE_TO_FIVE, clock=lambda: MORNING)
    assert call.ari.named("play")[-1][1] == ("sound:cbgw/welcome",)
    call = await answered(flow, hours=NINE_TO_FIVE, clock=lambda: EVENING)
    assert call.ari.named("play")[-1][1] == ("sound:cbgw/closed",)
    call = await answered(flow, clock=lambda: EVENING)        # no hours: always open
    assert call.ari.named("play")[-1][1] == ("sound:cbgw/welcome",)
