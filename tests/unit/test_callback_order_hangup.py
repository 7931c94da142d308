"""The customer who hangs up at the end of the order IVR, in the ARI adapter (CallRunner
with in-process fakes) and the pure machine: the order is stored when the customer
confirms, before "ご注文を承りました" plays, so hanging up during that prompt, or right
after the confirming key (the key's event still queued behind a busy server), keeps the
order once and ends the call as any answered call-back (leg result, CDR, completed)."""

from __future__ import annotations

from dataclasses import replace

from callback_server import ivr
from callback_server.dialer_messages import Finish, Reason
from callback_server.ivr import CallerHangup, Dtmf, Mode, Play, PlaybackFinished, Submit
from callback_server.ivr_flow import load_named
from shared import ari
from tests.unit.test_callback_stasis import A, Call, ch, settle

LEG = "cb-9-01"
ORDER = Submit("order", (("item_code", "1234"), ("quantity", "2")))
NORMAL_CLEARING = 16


async def at_the_confirm_question() -> Call:
    call = Call()
    await call.start(A)
    await call.push(ari.StasisStart(ch(LEG)))
    await call.keys(LEG, "1" + "1" + "1234#" + "2#")
    await call.finish_prompt(LEG)                    # the read-back -> "press 1 if correct"
    assert call.ari.named("play")[-1][1] == ("sound:cbgw/confirm",)
    return call


async def customer_hangs_up(call: Call) -> None:
    await call.push(ari.ChannelDestroyed(ch(LEG), cause=NORMAL_CLEARING),
                    ari.StasisEnd(ch(LEG)))


async def ended_as_answered(call: Call) -> None:
    assert await call.outcome() == Finish("completed", Reason.ANSWERED, 1)
    assert [(cdr.call_id, cdr.disposition) for cdr, *_ in call.store.cdrs] == [
        (LEG, "answered")]
    assert (LEG, "ended", NORMAL_CLEARING) in call.store.results
    assert LEG not in call.ari.named("hangup")       # gone already: nothing to hang up
    assert call.ari.router.channel_ids == frozenset()


async def test_hanging_up_during_the_thank_you_keeps_the_order_once() -> None:
    call = await at_the_confirm_question()
    await call.keys(LEG, "1")
    assert call.store.infos == [ORDER]               # stored before the prompt plays
    assert call.ari.named("play")[-1][1] == ("sound:cbgw/thank-you",)
    await customer_hangs_up(call)
    await call.finish_prompt(LEG)                    # Asterisk ends the prompt with it
    assert call.store.infos == [ORDER]
    await ended_as_answered(call)


async def test_hanging_up_right_after_the_confirming_key_keeps_the_order() -> None:
    """Under load the key's event and the hang-up's are queued together: the round
    handles them in Asterisk's order, the key first."""
    call = await at_the_confirm_question()
    for event in (ari.ChannelDtmfReceived(ch(LEG), "1"),
                  ari.ChannelDestroyed(ch(LEG), cause=NORMAL_CLEARING),
                  ari.StasisEnd(ch(LEG))):
        call.ari.router.dispatch(event)
    await settle()
    assert call.store.infos == [ORDER]
    await ended_as_answered(call)


async def test_hanging_up_at_the_confirm_question_stores_no_order() -> None:
    call = await at_the_confirm_question()
    await customer_hangs_up(call)
    await call.keys(LEG, "1")                        # a stray late key changes nothing
    assert call.store.infos == []
    await ended_as_answered(call)


def test_the_machine_submits_before_the_thank_you_and_ends_quietly_on_a_hang_up() -> None:
    flow = replace(load_named("order"), start="main", confirm_callback=None)
    state, _ = ivr.start(flow, "ch")
    for digit in "1" "1234#" "2#" "1":
        state, cmds = ivr.transition(state, Dtmf(digit))
    # The adapter runs a step's commands in order: the order is written, then the
    # prompt starts.
    kinds = [type(c) for c in cmds]
    assert kinds.index(Submit) < kinds.index(Play) and cmds[kinds.index(Submit)] == ORDER
    assert state.mode is Mode.ENDING and state.node == "thanks"
    thanks = state.playback
    state, cmds = ivr.transition(state, CallerHangup())
    assert (state.mode, cmds) == (Mode.DONE, [])
    for late in (PlaybackFinished(thanks or ""), Dtmf("1")):
        state, cmds = ivr.transition(state, late)
        assert cmds == []                            # no hang-up of a gone call, no resubmit
