"""The advisor's call to a presence number (``edge_server.presence_flow``): events in,
commands out, no Asterisk."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_server import presence_flow as pf
from edge_server.flow_messages import (
    CallerHungUp,
    CancelTimer,
    Hangup,
    HangupReason,
    Log,
    Play,
    PlaybackFinished,
    StartTimer,
    Timeout,
)
from edge_server.presence_flow import (
    AskPresence,
    PresenceAnswered,
    PresenceCallArrived,
    PresenceLine,
    PresenceOutcome,
    PresenceTimings,
    PresenceUnavailable,
    Wanted,
)
from ivr_platform.prompts import SYSTEM_PROMPTS
from shared.language import Language
from shared.phone import E164
from tests.purity import io_imports

ONLINE = PresenceLine("acme", Wanted.ONLINE)
TIMINGS = PresenceTimings(ask_s=3.0, announce_guard_s=15.0)


def arrive(caller: str | None = "09012345678", *, line: PresenceLine = ONLINE,
           pres: str | None = "allowed_not_screened", pai: str | None = None
           ) -> pf.Result:
    return pf.transition(pf.Idle(), PresenceCallArrived("1700.1", line, caller, pres,
                                                        asserted_raw=pai, timings=TIMINGS))


def asked(caller: str = "09012345678", line: PresenceLine = ONLINE) -> pf.State:
    state, _ = arrive(caller, line=line)
    assert isinstance(state, pf.Asking)
    return state


def commands_of(result: pf.Result) -> list[type]:
    return [type(c) for c in result[1]]


def test_the_pure_module_imports_no_io() -> None:
    assert io_imports(Path(pf.__file__)) == []


def test_a_registered_phone_is_asked_about_with_its_number_and_the_line_s_wish() -> None:
    state, commands = arrive("090-1234-5678")
    assert state == pf.Asking(ONLINE, TIMINGS)
    assert commands == [
        StartTimer(pf.ASK_TIMER, 3.0),
        AskPresence("edge-1700.1", "acme", E164.parse("+819012345678"), None, Wanted.ONLINE)]


def test_the_offline_number_asks_for_offline() -> None:
    _, commands = arrive(line=PresenceLine("acme", Wanted.OFFLINE))
    ask = commands[-1]
    assert isinstance(ask, AskPresence) and ask.wanted is Wanted.OFFLINE


def test_a_caller_id_that_is_no_phone_number_is_asked_about_as_a_sip_user() -> None:
    _, commands = arrive("1001")
    assert commands[-1] == AskPresence("edge-1700.1", "acme", None, "1001", Wanted.ONLINE)
    _, commands = arrive("alice.smith")
    assert commands[-1] == AskPresence("edge-1700.1", "acme", None, "alice.smith",
                                       Wanted.ONLINE)


def test_the_asserted_identity_stands_in_for_an_empty_from() -> None:
    _, commands = arrive("", pai="+819012345678")
    ask = commands[-1]
    assert isinstance(ask, AskPresence) and ask.caller == E164.parse("+819012345678")


@pytest.mark.parametrize(("caller", "pres"), [
    (None, None), ("anonymous", "allowed_not_screened"),
    ("09012345678", "prohib_not_screened"), ("18409012345678", None),
    ("<script>", None)])
def test_a_withheld_or_unusable_caller_id_hears_dial_186_and_nothing_is_asked(
        caller: str | None, pres: str | None) -> None:
    state, commands = arrive(caller, pres=pres)
    assert state == pf.Announcing(PresenceOutcome.WITHHELD)
    assert not any(isinstance(c, AskPresence) for c in commands)
    assert Play("sound:cbgw/dial-186", early=True, language=Language.JAPANESE) in commands


@pytest.mark.parametrize("outcome", sorted(pf.ANSWERS))
def test_each_answer_is_announced_as_early_media_then_486_never_answered(
        outcome: PresenceOutcome) -> None:
    state, commands = pf.transition(asked(), PresenceAnswered(outcome, "advisor 7"))
    assert state == pf.Announcing(outcome)
    assert commands[0] == CancelTimer(pf.ASK_TIMER)
    assert StartTimer(pf.ANNOUNCE_TIMER, 15.0) in commands
    play = commands[-1]
    assert play == Play(pf.PROMPTS[outcome], early=True, language=Language.JAPANESE)
    state, commands = pf.transition(state, PlaybackFinished())
    assert state == pf.Done(outcome)
    assert commands == [CancelTimer(pf.ANNOUNCE_TIMER), Hangup(HangupReason.BUSY)]


def test_the_announcement_speaks_the_merchant_s_language() -> None:
    line = PresenceLine("acme", Wanted.OFFLINE, Language.ENGLISH)
    state, _ = arrive(line=line)
    _, commands = pf.transition(state, PresenceAnswered(PresenceOutcome.OFFLINE))
    assert Play("sound:cbgw/presence-offline", early=True,
                language=Language.ENGLISH) in commands


@pytest.mark.parametrize("event", [PresenceUnavailable("both routes: connection refused"),
                                   Timeout(pf.ASK_TIMER),
                                   PresenceAnswered(PresenceOutcome.ABANDONED)])
def test_no_usable_answer_in_time_is_announced_as_not_confirmed(event: pf.Event) -> None:
    state, commands = pf.transition(asked(), event)
    assert state == pf.Announcing(PresenceOutcome.UNAVAILABLE)
    assert commands[-1] == Play("sound:cbgw/presence-failed", early=True,
                                language=Language.JAPANESE)
    assert any(isinstance(c, Log) and c.warning for c in commands)


def test_an_answer_after_the_guard_is_ignored() -> None:
    state, _ = pf.transition(asked(), Timeout(pf.ASK_TIMER))
    later, commands = pf.transition(state, PresenceAnswered(PresenceOutcome.ONLINE))
    assert later == state and all(isinstance(c, Log) for c in commands)


def test_hanging_up_while_asking_ends_the_call_without_a_hangup_command() -> None:
    state, commands = pf.transition(asked(), CallerHungUp())
    assert state == pf.Done(PresenceOutcome.ABANDONED)
    assert commands[0] == CancelTimer(pf.ASK_TIMER)
    assert not any(isinstance(c, Hangup) for c in commands)


def test_hanging_up_mid_announcement_keeps_the_outcome() -> None:
    state, _ = pf.transition(asked(), PresenceAnswered(PresenceOutcome.ONLINE))
    state, commands = pf.transition(state, CallerHungUp())
    assert state == pf.Done(PresenceOutcome.ONLINE)
    assert commands == [CancelTimer(pf.ANNOUNCE_TIMER)]


def test_an_announcement_that_never_finishes_is_cut_by_its_guard() -> None:
    state, _ = pf.transition(asked(), PresenceAnswered(PresenceOutcome.IN_CALL))
    state, commands = pf.transition(state, Timeout(pf.ANNOUNCE_TIMER))
    assert state == pf.Done(PresenceOutcome.IN_CALL)
    assert commands[0] == Hangup(HangupReason.BUSY)


def test_hanging_up_before_anything_is_abandoned() -> None:
    assert pf.transition(pf.Idle(), CallerHungUp()) == (
        pf.Done(PresenceOutcome.ABANDONED), [])


def test_every_prompt_it_plays_is_in_the_prompt_table() -> None:
    names = {m.removeprefix("sound:cbgw/") for m in pf.PROMPTS.values()}
    assert names <= set(SYSTEM_PROMPTS), names - set(SYSTEM_PROMPTS)


def test_timings_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PresenceTimings(ask_s=0)


def test_no_path_answers_the_call() -> None:
    """Every reachable command list: never an Answer, never a hangup but busy (486)."""
    starts = [arrive(), arrive(None), arrive("1001")]
    events: list[pf.Event] = [PresenceAnswered(o) for o in PresenceOutcome] + [
        PresenceUnavailable("x"), Timeout(pf.ASK_TIMER), Timeout(pf.ANNOUNCE_TIMER),
        PlaybackFinished(), PlaybackFinished(failed=True), CallerHungUp()]
    seen: list[object] = []
    frontier = [s for s, _ in starts]
    for _, commands in starts:
        seen += commands
    for _ in range(3):
        nxt = []
        for state in frontier:
            for event in events:
                after, commands = pf.transition(state, event)
                seen += commands
                nxt.append(after)
        frontier = nxt
    assert {type(c).__name__ for c in seen} <= {
        "AskPresence", "Play", "Hangup", "StartTimer", "CancelTimer", "Log"}
    assert {c.reason for c in seen if isinstance(c, Hangup)} == {HangupReason.BUSY}
    assert all(c.early for c in seen if isinstance(c, Play))
