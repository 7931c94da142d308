"""An operator's controls through the ARI adapter (CallRunner + ConsultRunner) with the
in-process fakes: hold takes the customer out of the bridge to music and back, a forced
end plays the farewell in the merchant's language, hangs up both, and the record says so."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from advisors.records import EndReason
from callback_server import consult
from callback_server.call_ports import utcnow
from callback_server.dialer_messages import Finish, Reason
from shared import ari
from shared.language import Language
from tests.unit.test_callback_consult_runner import Consultation, settle, shown

BRIDGE = "cb-7-c1-br"


async def talking(language: Language = Language.JAPANESE) -> Consultation:
    call = Consultation()
    call.runner.consult.ctx = replace(call.runner.consult.ctx, language=language)
    await call.start()
    await call.keys("1" + "0002")
    await call.push(ari.StasisStart(ari.Channel(id="cb-7-02")))
    assert call.runner.consult.state is not None
    assert call.runner.consult.state.phase is consult.Phase.TALKING
    return call


async def control(call: Consultation, event: consult.Operator, cid: str = "cb-7-c1") -> bool:
    sent = call.runner.operator(cid, event)
    await settle()
    return sent


async def test_hold_and_unhold_move_the_customer_between_bridge_and_music() -> None:
    call = await talking()
    assert not await control(call, consult.HoldCustomer(utcnow()), "cb-7-c2"), "not ours"
    assert await control(call, consult.HoldCustomer(utcnow()))
    assert call.ari.named("remove_channel") == [(BRIDGE, "cb-7-01")]
    assert call.ari.named("start_moh") == ["cb-7-01"]
    assert await control(call, consult.ResumeCustomer(utcnow()))
    assert call.ari.named("stop_moh") == ["cb-7-01"]
    assert call.ari.named("add_channel")[-1] == (BRIDGE, ("cb-7-01",))
    await call.push(ari.StasisEnd(ari.Channel(id="cb-7-02")))      # the advisor hangs up
    (saved,) = call.records.saved
    assert len(saved.holds) == 1 and saved.holds[0].ended_at is not None


async def test_forced_end_plays_the_farewell_then_hangs_up_both_and_records_it() -> None:
    call = await talking()
    assert await control(call, consult.ForceEnd(utcnow()))
    assert ("hangup", "cb-7-02") in call.ari.calls
    assert call.ari.named("play")[-1] == ("cb-7-01", (consult.FAREWELL_PROMPT,),
                                          "cb-7-c1-farewell", "ja")
    assert ("hangup", "cb-7-01") not in call.ari.calls, "the customer hears it first"
    await call.push(ari.PlaybackFinished(ari.Playback(id="cb-7-c1-farewell",
                                                      target_uri="channel:cb-7-01")))
    assert ("hangup", "cb-7-01") in call.ari.calls
    (saved,) = call.records.saved
    assert saved.end_reason is EndReason.FORCED_END and saved.advisor_id == 2
    assert shown(call).value in ("wrap_up", "standby")
    assert call.task is not None
    assert await asyncio.wait_for(call.task, 2) == Finish("completed", Reason.ANSWERED, 1)
    assert not call.runner.operator("cb-7-c1", consult.ForceEnd(utcnow())), "over"


async def test_an_english_merchants_customer_hears_the_farewell_in_english() -> None:
    call = await talking(Language.ENGLISH)
    assert await control(call, consult.ForceEnd(utcnow()))
    assert call.ari.named("play")[-1] == ("cb-7-01", (consult.FAREWELL_PROMPT,),
                                          "cb-7-c1-farewell", "en")
