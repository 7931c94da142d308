"""The IVR verbs in the ARI adapter (CallRunner and IvrRunner) with in-process fakes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from callback_server.call_ports import CallContext
from callback_server.ivr import Submit
from callback_server.ivr_flow import Flow
from callback_server.testing import MemoryDesk, MemoryIvrServices, MemoryStore
from ivr_platform.hours import BusinessHours, Window
from shared import ari
from tests import prom
from tests.unit.test_callback_ivr_verbs import (
    BYE,
    HOOK,
    HOURS,
    RECORD,
    SET,
    SMS,
    TRANSFER,
    flow_of,
)
from tests.unit.test_callback_stasis import A, Call, ch, settle
from tests.unit.test_guard_confirm import CappedStore

CHANNEL = "cb-9-01"
#: Friday 4 December 2026 10:00 and 20:00 in Tokyo
MORNING = datetime(2026, 12, 4, 1, 0, tzinfo=UTC)
EVENING = datetime(2026, 12, 4, 11, 0, tzinfo=UTC)
NINE_TO_FIVE = BusinessHours(weekly=((Window(540, 1020),),) * 7)

async def answered(flow: Flow, services: MemoryIvrServices | None = None, **ctx: Any
                   ) -> Call:
    call = Call(store=MemoryStore(), ctx=CallContext("edge-9", "ntt-freedial", flow, **ctx),
                services=services)
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


def recording(name: str) -> ari.LiveRecording:
    return ari.LiveRecording(name=name, target_uri=f"channel:{CHANNEL}")


async def test_record_records_the_customer_and_submits_the_stored_recordings_id() -> None:
    services = MemoryIvrServices(recordings={f"{CHANNEL}-r2": "5f0c"})
    call = await answered(flow_of(RECORD), services=services)
    assert call.ari.named("play")[-1][1] == ("sound:cbgw/leave-message",)
    await call.finish_prompt(CHANNEL)
    assert call.ari.named("record") == [(CHANNEL, f"{CHANNEL}-r2", 120, 3, True, "#")]
    await call.keys(CHANNEL, "#")                  # Asterisk ends it on '#' itself
    assert call.store.infos == []
    stored = prom.sample("cbgw_ivr_recordings_total", merchant="acme", result="stored")
    await call.push(ari.RecordingFinished(recording(f"{CHANNEL}-r2")))
    assert call.store.infos == [Submit("voicemail", (("message", "5f0c"),))]
    assert prom.sample("cbgw_ivr_recordings_total", merchant="acme",
                       result="stored") == stored + 1
    assert CHANNEL in call.ari.named("hangup")


async def test_a_failed_or_unstored_recording_takes_on_fail() -> None:
    none = prom.sample("cbgw_ivr_recordings_total", merchant="acme", result="none")
    for event in (ari.RecordingFailed, ari.RecordingFinished):
        call = await answered(flow_of(RECORD), services=MemoryIvrServices())
        await call.finish_prompt(CHANNEL)
        await call.push(event(recording(f"{CHANNEL}-r2")))
        assert call.ari.named("play")[-1][1] == ("sound:cbgw/invalid",)
        assert call.store.infos == []
    # counted as nothing recorded, twice
    assert prom.sample("cbgw_ivr_recordings_total", merchant="acme", result="none") == none + 2


async def test_sms_is_handed_to_the_services_and_the_call_goes_on() -> None:
    services = MemoryIvrServices()
    call = await answered(flow_of(SMS), services=services)
    await call.keys(CHANNEL, "42#")
    assert services.sms == [("acme", "+819012345678", "ご注文 42 を承りました"),
                            ("acme", "+819011112222", "order 42 from +819012345678")]
    assert CHANNEL in call.ari.named("hangup")


async def test_a_webhooks_answer_comes_back_to_the_ivr() -> None:
    services = MemoryIvrServices(webhook_values=(("plan", "gold"),))
    call = await answered(flow_of(HOOK), services=services)
    assert services.webhooks[0].variables == (("caller", "+819012345678"),)
    assert call.store.infos == [Submit("crm", (("plan", "gold"),))]
    services = MemoryIvrServices(webhook_values=None)
    call = await answered(flow_of(HOOK), services=services)
    assert call.store.infos == [] and CHANNEL in call.ari.named("hangup")


async def test_transfer_bridges_the_number_over_its_cheapest_carrier() -> None:
    call = Call(store=MemoryStore(), ctx=CallContext("edge-9", "ntt-freedial",
                                                     flow_of(TRANSFER)), desk=MemoryDesk())
    await call.start(A)
    await call.push(ari.StasisStart(ch(CHANNEL)))
    assert call.ari.named("play")[-1][1] == ("sound:cbgw/connecting",)
    leg = "cb-9-02"
    assert call.ari.named("originate")[-1] == ("PJSIP/+81312345678@carrier-a", leg,
                                              "+81120123456", 20)   # the merchant's number
    persisted = call.store.legs[leg]
    assert (persisted.leg, persisted.carrier_id) == ("transfer", "carrier-a")
    await call.push(ari.StasisStart(ch(leg)))
    assert call.ari.named("add_channel") == [("cb-9-br02", (CHANNEL, leg))]
    await call.push(ari.StasisEnd(ch(leg)))          # the number hangs up: the call is over
    assert CHANNEL in call.ari.named("hangup")
    await call.push(ari.StasisEnd(ch(CHANNEL)))
    cdr, _, cost, direct = next(c for c in call.store.cdrs if c[0].call_id == leg)
    assert (cdr.leg, cdr.destination, cdr.carrier_id) == ("transfer", "+81312345678",
                                                           "carrier-a")
    assert cost is not None and direct is None       # rated as spend, no counterfactual


async def test_a_transfer_nobody_answers_or_without_a_route_takes_on_fail() -> None:
    call = Call(store=MemoryStore(), ctx=CallContext("edge-9", "ntt-freedial",
                                                     flow_of(TRANSFER)), desk=MemoryDesk())
    await call.start(A)
    await call.push(ari.StasisStart(ch(CHANNEL)))
    await call.push(ari.ChannelDestroyed(ch("cb-9-02"), cause=19, cause_txt="No answer"))
    assert CHANNEL in call.ari.named("hangup")           # on_fail = bye
    call = Call(store=MemoryStore(), ctx=CallContext("edge-9", "ntt-freedial",
                                                     flow_of(TRANSFER)), desk=MemoryDesk())
    call.ari.allocation_fails.add("PJSIP/+81312345678@carrier-a")    # the carrier is down
    await call.start(A)
    await call.push(ari.StasisStart(ch(CHANNEL)))
    assert CHANNEL in call.ari.named("hangup")
    call = await answered(flow_of(TRANSFER))             # no desk: no route
    assert call.ari.named("originate") == [(A.endpoint, CHANNEL, "+81120123456", 30)]
    assert CHANNEL in call.ari.named("hangup")


async def test_a_transfer_fails_over_to_the_numbers_next_carrier() -> None:
    for fault in ("allocation", "congestion"):
        call = Call(store=MemoryStore(), ctx=CallContext("edge-9", "ntt-freedial",
                                                         flow_of(TRANSFER)),
                    desk=MemoryDesk(carriers=("carrier-a", "carrier-b")))
        if fault == "allocation":
            call.ari.allocation_fails.add("PJSIP/+81312345678@carrier-a")
        await call.start(A)
        await call.push(ari.StasisStart(ch(CHANNEL)))
        if fault == "congestion":
            await call.push(ari.ChannelDestroyed(ch("cb-9-02"), cause=34,
                                                 cause_txt="Congestion"))
        assert call.ari.named("originate")[-1] == ("PJSIP/+81312345678@carrier-b", "cb-9-03",
                                                  "+81120123456", 20), fault
        assert CHANNEL not in call.ari.named("hangup")      # still transferring
        await call.push(ari.StasisStart(ch("cb-9-03")))
        assert call.ari.named("add_channel") == [("cb-9-br03", (CHANNEL, "cb-9-03"))]


async def test_a_transfer_the_guard_refuses_tries_the_next_carrier_then_fails() -> None:
    for refused, placed in (({"carrier-x"}, "carrier-y"), ({"carrier-x", "carrier-y"}, None)):
        store = CappedStore(refuse=refused)
        call = Call(store=store, ctx=CallContext("edge-9", "ntt-freedial", flow_of(TRANSFER)),
                    desk=MemoryDesk(carriers=("carrier-x", "carrier-y")))
        await call.start(A)
        await call.push(ari.StasisStart(ch(CHANNEL)))
        transfers = [o for o in call.ari.named("originate") if o[1] != CHANNEL]
        if placed is None:                     # every carrier capped: on_fail
            assert transfers == [] and CHANNEL in call.ari.named("hangup")
        else:       # the refused leg was never persisted: its channel id is used again
            assert transfers == [(f"PJSIP/+81312345678@{placed}", "cb-9-02",
                                  "+81120123456", 20)]
            assert CHANNEL not in call.ari.named("hangup")


async def test_a_round_sends_at_most_three_sms_however_often_its_flow_loops() -> None:
    looping = flow_of("""\
[nodes.main]
type = "menu"
prompt = ["sound:cbgw/welcome-menu"]
choices = { "1" = "text", "0" = "bye" }
on_fail = "bye"

[nodes.text]
type = "sms"
to = "caller"
text = "hello"
next = "main"

[nodes.bye]
type = "hangup"
""")
    services = MemoryIvrServices()
    call = await answered(looping, services=services)
    await call.keys(CHANNEL, "11111")
    assert services.sms == [("acme", "+819012345678", "hello")] * 3


RETRY = """\
[nodes.main]
type = "set"
values = { plan = "gold" }
next = "menu"

[nodes.menu]
type = "menu"
prompt = ["sound:cbgw/welcome-menu"]
choices = { "1" = "bye" }
timeout_s = 1
retries = 2
on_fail = "bye"

""" + BYE


async def test_the_runner_counts_nodes_entered_by_verb_and_re_prompts_by_reason() -> None:
    def counts() -> dict[str, float]:
        return {"set": prom.sample("cbgw_ivr_nodes_total", merchant="acme", verb="set"),
                "menu": prom.sample("cbgw_ivr_nodes_total", merchant="acme", verb="menu"),
                "hangup": prom.sample("cbgw_ivr_nodes_total", merchant="acme", verb="hangup"),
                **{reason: prom.sample("cbgw_ivr_retries_total", merchant="acme",
                                       verb="menu", reason=reason)
                   for reason in ("invalid", "timeout")}}

    before = counts()
    call = await answered(flow_of(RETRY))
    await call.finish_prompt(CHANNEL)
    await call.keys(CHANNEL, "7")                       # a key the menu does not take
    await call.finish_prompt(CHANNEL)
    await asyncio.sleep(1.3)                            # no key within timeout_s
    await settle()
    await call.finish_prompt(CHANNEL)
    await call.keys(CHANNEL, "1")
    after = counts()
    assert {k: after[k] - before[k] for k in after} == {
        "set": 1, "menu": 1, "hangup": 1, "invalid": 1, "timeout": 1}
