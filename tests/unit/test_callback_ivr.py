"""The IVR engine and flow validation: events in, commands out."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from callback_server import ivr
from callback_server.ivr import (
    CallerHangup,
    CancelTimer,
    DialOperator,
    Dtmf,
    Hangup,
    IvrState,
    Mode,
    OperatorFailed,
    Play,
    PlaybackFinished,
    StartTimer,
    StopPlayback,
    Submit,
    Timeout,
)
from callback_server.ivr_flow import FLOWS_DIR, Flow, FlowError, load_flow, load_named, parse_flow


@pytest.fixture(scope="module")
def flow() -> Flow:
    # The order flow now starts with the confirm-before-connect gate (tested in
    # tests/unit/test_guard_confirm.py). These engine tests start at the menu behind it.
    return replace(load_named("order"), start="main", confirm_callback=None)


def feed(state: IvrState, *events: ivr.Event) -> tuple[IvrState, list[ivr.Command]]:
    out: list[ivr.Command] = []
    for ev in events:
        state, cmds = ivr.transition(state, ev)
        out += cmds
    return state, out


def finish_prompt(state: IvrState) -> tuple[IvrState, list[ivr.Command]]:
    assert state.playback is not None, "no prompt playing"
    return ivr.transition(state, PlaybackFinished(state.playback))


def keys(state: IvrState, digits: str) -> tuple[IvrState, list[ivr.Command]]:
    return feed(state, *(Dtmf(d) for d in digits))


def plays(cmds: list[ivr.Command]) -> list[tuple[str, ...]]:
    return [c.media for c in cmds if isinstance(c, Play)]


def started(flow: Flow) -> IvrState:
    state, cmds = ivr.start(flow, "ch")
    assert plays(cmds) == [("sound:cbgw/welcome-menu",)]
    return state


# --- menu ----------------------------------------------------------------------------------

def test_menu_timer_starts_when_the_prompt_ends(flow: Flow) -> None:
    state, cmds = finish_prompt(started(flow))
    assert cmds == [StartTimer("ch-t2", 8.0)] and state.mode is Mode.WAIT


def test_menu_barge_in_stops_prompt_and_follows_choice(flow: Flow) -> None:
    state, cmds = keys(started(flow), "2")
    assert cmds[0] == StopPlayback("ch-p1")
    assert plays(cmds) == [("sound:cbgw/inquiry",)]
    assert state.node == "order_number"


def test_only_the_first_key_during_a_prompt_stops_it(flow: Flow) -> None:
    """Barge-in costs one ARI request a prompt, however many keys the caller types into it."""
    state, _ = keys(started(flow), "2")              # the order number's prompt plays
    prompt = state.playback
    assert prompt is not None
    state, cmds = keys(state, "7001")
    assert [c for c in cmds if isinstance(c, StopPlayback)] == [StopPlayback(prompt)]
    assert state.playback is None and state.node == "order_number"


def test_menu_invalid_key_reprompts_then_fails(flow: Flow) -> None:
    state, _ = finish_prompt(started(flow))
    state, cmds = keys(state, "7")
    assert plays(cmds) == [("sound:cbgw/invalid", "sound:cbgw/welcome-menu")]
    assert CancelTimer("ch-t2") in cmds
    state, _ = keys(state, "8")
    state, cmds = keys(state, "9")           # third bad key: retries (2) used up
    assert state.node == "goodbye" and plays(cmds) == [("sound:cbgw/goodbye",)]
    state, cmds = finish_prompt(state)
    assert cmds == [Hangup()] and state.mode is Mode.DONE


def test_menu_timeout_reprompts_with_no_input_prompt(flow: Flow) -> None:
    state, _ = finish_prompt(started(flow))
    state, cmds = ivr.transition(state, Timeout("ch-t2"))
    assert plays(cmds)[0][0] == "sound:cbgw/no-input"
    assert state.tries == 1


def test_stale_timer_and_playback_events_are_ignored(flow: Flow) -> None:
    state, _ = keys(started(flow), "1")       # stopped ch-p1 by barge-in
    assert ivr.transition(state, PlaybackFinished("ch-p1")) == (state, [])
    assert ivr.transition(state, Timeout("ch-t0")) == (state, [])


# --- order path ----------------------------------------------------------------------------

def order_until_confirm(flow: Flow) -> tuple[IvrState, list[ivr.Command]]:
    state, _ = keys(started(flow), "1")
    state, _ = keys(state, "1234#")
    assert state.node == "quantity"
    state, _ = finish_prompt(state)
    state, cmds = keys(state, "2#")
    assert state.node == "readback"
    return state, cmds


def test_digit_entry_with_hash_then_readback(flow: Flow) -> None:
    state, cmds = order_until_confirm(flow)
    assert plays(cmds) == [("sound:cbgw/you-entered", "sound:cbgw/item-code", "digits:1234",
                            "sound:cbgw/quantity", "digits:2")]
    assert state.value("item_code") == "1234" and state.value("quantity") == "2"
    state, cmds = finish_prompt(state)
    assert state.node == "confirm" and plays(cmds) == [("sound:cbgw/confirm",)]


def test_a_key_during_the_readback_answers_the_confirm_question(flow: Flow) -> None:
    state, _ = order_until_confirm(flow)
    readback = state.playback
    state, cmds = keys(state, "1")                  # type-ahead: no need to wait
    assert cmds[0] == ivr.StopPlayback(readback)
    assert ("sound:cbgw/confirm",) not in plays(cmds)
    assert Submit("order", (("item_code", "1234"), ("quantity", "2"))) in cmds
    state, _ = order_until_confirm(flow)
    state, cmds = keys(state, "5")                  # a wrong key is wrong at the question
    assert state.node == "confirm" and plays(cmds)[-1][0] == "sound:cbgw/invalid"


def test_confirm_submits_thanks_and_hangs_up(flow: Flow) -> None:
    state, _ = order_until_confirm(flow)
    state, _ = finish_prompt(state)
    state, cmds = keys(state, "1")
    assert Submit("order", (("item_code", "1234"), ("quantity", "2"))) in cmds
    assert plays(cmds) == [("sound:cbgw/thank-you",)]
    state, cmds = finish_prompt(state)
    assert cmds == [Hangup()]


def test_confirm_2_reenters_from_item_code(flow: Flow) -> None:
    state, _ = order_until_confirm(flow)
    state, _ = finish_prompt(state)
    state, _ = keys(state, "2")
    assert state.node == "item_code"
    state, _ = keys(state, "99#")
    state, _ = keys(state, "5#")
    state, _ = finish_prompt(state)
    state, cmds = keys(state, "1")
    assert Submit("order", (("item_code", "99"), ("quantity", "5"))) in cmds


def test_digits_terminator_alone_is_invalid(flow: Flow) -> None:
    state, _ = keys(started(flow), "1")
    state, cmds = keys(state, "#")
    assert state.node == "item_code" and plays(cmds)[0][0] == "sound:cbgw/invalid"


def test_digits_star_clears_and_max_length_completes(flow: Flow) -> None:
    state, _ = keys(started(flow), "1")
    state, _ = keys(state, "55*")
    assert state.buffer == ""
    state, _ = keys(state, "123456789012")    # max_length 12: no # needed
    assert state.node == "quantity" and state.value("item_code") == "123456789012"


def test_digits_inter_digit_timer_restarts(flow: Flow) -> None:
    state, _ = keys(started(flow), "1")
    state, _ = finish_prompt(state)
    first = state.timer
    state, cmds = keys(state, "4")
    assert CancelTimer(first or "") in cmds and state.timer != first
    assert [c for c in cmds if isinstance(c, StartTimer)][0].seconds == 10.0


def test_inquiry_submits_order_number(flow: Flow) -> None:
    state, _ = keys(started(flow), "2")
    state, cmds = keys(state, "700123#")
    assert Submit("inquiry", (("order_number", "700123"),)) in cmds


# --- operator, hang-up ---------------------------------------------------------------------

def test_zero_dials_operator(flow: Flow) -> None:
    state, cmds = keys(started(flow), "0")
    assert DialOperator("operator") in cmds
    assert plays(cmds) == [("sound:cbgw/connecting-operator",)]
    assert state.mode is Mode.OPERATOR
    assert feed(state, Dtmf("1"))[1] == []         # keys go to the operator, not the IVR


def test_operator_failure_goes_back_to_the_menu(flow: Flow) -> None:
    state, _ = keys(started(flow), "0")
    state, cmds = feed(state, OperatorFailed())
    assert plays(cmds) == [("sound:cbgw/operator-unavailable",)]
    state, cmds = finish_prompt(state)
    assert state.node == "main"


def test_caller_hangup_ends_and_cancels_timer(flow: Flow) -> None:
    state, _ = finish_prompt(started(flow))
    state, cmds = feed(state, CallerHangup())
    assert cmds == [CancelTimer("ch-t2")] and state.mode is Mode.DONE
    assert feed(state, Dtmf("1")) == (state, [])


# --- flow validation -----------------------------------------------------------------------

def base() -> dict[str, Any]:
    data = tomllib.loads((FLOWS_DIR / "order.toml").read_text())
    return data


@pytest.mark.parametrize(("mutate", "node", "text"), [
    (lambda d: d["nodes"]["main"].update(type="gather"), "main", "type: expected one of"),
    (lambda d: d["nodes"]["main"].pop("on_fail"), "main", "missing required keys: on_fail"),
    (lambda d: d["nodes"]["main"].update(colour="red"), "main", "unknown keys"),
    (lambda d: d["nodes"]["main"]["choices"].update({"12": "main"}), "main", "single DTMF"),
    (lambda d: d["nodes"]["main"]["choices"].update({"3": "nowhere"}), "main", "nowhere"),
    (lambda d: d["nodes"]["quantity"].update(max_length=99), "quantity", "max_length"),
    (lambda d: d["nodes"]["thanks"].update(prompt=["cbgw/x"]), "thanks", "media URI"),
    (lambda d: d["nodes"]["submit_order"].update(fields=["colour"]), "submit_order",
     "not collected"),
    (lambda d: d["nodes"].update(orphan={"type": "hangup"}), "orphan", "not reachable"),
    (lambda d: d["nodes"]["confirm"].update(yes_key="2"), "confirm", "must differ"),
])
def test_flow_errors_name_file_and_node(mutate: Any, node: str, text: str) -> None:
    data = base()
    mutate(data)
    with pytest.raises(FlowError) as info:
        parse_flow(data, "flows/order.toml")
    assert info.value.file == "flows/order.toml" and info.value.node == node
    assert f"node {node!r}" in str(info.value) and text in str(info.value)


def test_flow_missing_start_and_bad_toml(tmp_path: Path) -> None:
    data = base()
    data["start"] = "nope"
    with pytest.raises(FlowError, match="start: no node 'nope'"):
        parse_flow(data, "x.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(FlowError, match=r"bad\.toml: invalid TOML"):
        load_flow(bad)


def test_submit_loop_is_rejected() -> None:
    data = {"name": "x", "start": "a", "nodes": {
        "a": {"type": "digits", "prompt": ["sound:x"], "field": "f", "next": "s",
              "on_fail": "a"},
        "s": {"type": "submit", "category": "c", "fields": ["f"], "next": "t"},
        "t": {"type": "submit", "category": "c", "fields": ["f"], "next": "s"}}}
    with pytest.raises(FlowError, match="loop"):
        parse_flow(data, "x.toml")


def test_flow_name_must_match_file(tmp_path: Path) -> None:
    (tmp_path / "other.toml").write_text((FLOWS_DIR / "order.toml").read_text())
    with pytest.raises(FlowError, match="differs from the file name"):
        load_named("other", tmp_path)


def test_evolve_makes_what_dataclasses_replace_makes_for_every_field(flow: Flow) -> None:
    """``IvrState.evolve`` (the machine's cheap copy) changes the field it is given and
    keeps every other, as ``dataclasses.replace`` does: a field added to the state and
    not to ``evolve`` fails here."""
    from dataclasses import fields

    state, _ = ivr.start(flow, "c1", (("caller", "+819012345678"),))
    state, _ = keys(state, "1")
    changed: dict[str, Any] = {
        "flow": load_named("consult"), "call_id": "c2", "node": "item_code",
        "mode": Mode.DONE, "buffer": "12", "tries": 2, "collected": (("a", "b"),),
        "playback": None, "timer": "c1-t9", "seq": 9, "listed": (), "page": 1,
        "pending": "c1-w3", "held": ("sound:x",), "frames": ((flow, "main"),),
        "entered": ("menu",)}
    assert set(changed) == {f.name for f in fields(IvrState)}
    assert state.evolve() == state and state.evolve() is not state
    for name, value in changed.items():
        made = state.evolve(**{name: value})
        assert made == replace(state, **{name: value}), name
        assert made.entered == replace(state, **{name: value}).entered, name
        assert getattr(made, name) == value, name
