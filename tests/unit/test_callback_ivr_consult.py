"""The IVR's consultation nodes (``advisor_code``, ``connect``): validation and engine."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from typing import Any

import pytest

from callback_server import ivr
from callback_server.ivr import (
    AdvisorUnavailable,
    ConnectAdvisor,
    ConsultBusy,
    ConsultEnded,
    ConsultFailed,
    ConsultRefused,
    Dtmf,
    IvrState,
    Mode,
    StartTimer,
    Timeout,
)
from callback_server.ivr_flow import FLOWS_DIR, Flow, FlowError, load_named, parse_flow
from ivr_platform.prompts import SYSTEM_PROMPTS
from tests.unit.test_callback_ivr import feed, finish_prompt, plays


@pytest.fixture(scope="module")
def flow() -> Flow:
    return replace(load_named("consult"), start="main", confirm_callback=None)


def at_code(flow: Flow) -> IvrState:
    state, _ = ivr.start(flow, "cb-1-01")
    state, _ = feed(state, Dtmf("1"))
    state, _ = finish_prompt(state)
    assert state.node == "code" and state.mode is Mode.WAIT
    return state


def test_four_digits_connect_the_advisor_of_that_code(flow: Flow) -> None:
    state, cmds = feed(at_code(flow), *(Dtmf(d) for d in "0042"))
    assert cmds[-1] == ConnectAdvisor("code", "0042")
    assert state.mode is Mode.CONSULT and state.timer is None
    # keys while connected are not the IVR's
    assert feed(state, Dtmf("1"), Timeout("x"))[1] == []


@pytest.mark.parametrize(("reason", "prompt"), [
    ("unknown", "sound:cbgw/advisor-unknown"), ("talking", "sound:cbgw/advisor-talking"),
    ("offline", "sound:cbgw/advisor-offline"), ("away", "sound:cbgw/advisor-away")])
def test_an_unavailable_advisor_says_why_and_asks_again(flow: Flow, reason: str,
                                                        prompt: str) -> None:
    state, _ = feed(at_code(flow), *(Dtmf(d) for d in "1234"))
    state, cmds = feed(state, AdvisorUnavailable(reason))
    assert plays(cmds) == [(prompt, "sound:cbgw/enter-advisor-code")]
    state, cmds = finish_prompt(state)
    assert state.node == "code" and isinstance(cmds[-1], StartTimer)
    state, cmds = feed(state, *(Dtmf(d) for d in "5678"))
    assert cmds[-1] == ConnectAdvisor("code", "5678")


def test_retries_used_up_go_to_on_fail(flow: Flow) -> None:
    state = at_code(flow)
    for _ in range(3):       # retries = 2: the third refusal ends the node
        state, _ = feed(state, *(Dtmf(d) for d in "9999"))
        state, _ = feed(state, AdvisorUnavailable("unknown"))
        if state.node == "code":
            state, _ = finish_prompt(state)
    assert state.node == "no_advisor"


def test_a_short_code_ended_with_hash_is_invalid(flow: Flow) -> None:
    state, cmds = feed(at_code(flow), Dtmf("1"), Dtmf("2"), Dtmf("#"))
    assert plays(cmds) == [("sound:cbgw/invalid", "sound:cbgw/enter-advisor-code")]
    assert not any(isinstance(c, ConnectAdvisor) for c in cmds)


def test_connect_rings_the_group_and_outcomes_lead_on(flow: Flow) -> None:
    state, _ = ivr.start(flow, "cb-1-01")
    state, cmds = feed(state, Dtmf("2"))
    assert ConnectAdvisor("group", None, "all", 60) in cmds
    assert plays(cmds)[-1] == ("sound:cbgw/connecting-advisor",)
    assert state.mode is Mode.CONSULT
    busy, cmds = feed(state, ConsultBusy())
    assert busy.node == "goodbye"
    assert plays(cmds) == [("sound:cbgw/lines-busy", "sound:cbgw/goodbye")]
    failed, _ = feed(state, ConsultFailed())
    assert failed.node == "no_advisor"
    ended, _ = feed(state, ConsultEnded())
    assert ended.node == "after"
    # a fixed advisor is not asked again: unavailable is on_fail
    assert feed(state, AdvisorUnavailable("talking"))[0].node == "no_advisor"


@pytest.mark.parametrize("reason", ["balance-too-low", "no-card", "in-dunning",
                                    "unpaid-limit"])
def test_a_billing_refusal_says_why_then_takes_the_failure_branch(flow: Flow,
                                                                  reason: str) -> None:
    state, _ = feed(at_code(flow), *(Dtmf(d) for d in "0042"))
    state, cmds = feed(state, ConsultRefused(reason))
    assert state.node == "no_advisor"
    assert plays(cmds) == [(f"sound:cbgw/{reason}", "sound:cbgw/advisor-unavailable")]
    assert f"{reason}" in SYSTEM_PROMPTS


def test_outcomes_outside_a_consultation_change_nothing(flow: Flow) -> None:
    state, _ = ivr.start(flow, "cb-1-01")
    for event in (ConsultBusy(), ConsultFailed(), ConsultEnded(), AdvisorUnavailable("x"),
                  ConsultRefused("balance-too-low")):
        assert feed(state, event) == (state, [])


def raw_flow() -> dict[str, Any]:
    return tomllib.loads((FLOWS_DIR / "consult.toml").read_text())


@pytest.mark.parametrize(("mutate", "node", "text"), [
    (lambda f: f["nodes"]["anyone"].pop("group"), "anyone", "give one of group"),
    (lambda f: f["nodes"]["anyone"].update(advisor="0042"), "anyone", "give one of group"),
    (lambda f: f["nodes"]["anyone"].update(group=None, advisor=42), "anyone",
     "advisor: expected a 4-digit advisor code"),
    (lambda f: f["nodes"]["anyone"].update(on_busy="nowhere"), "anyone",
     "on_busy: no node 'nowhere'"),
    (lambda f: f["nodes"]["code"].pop("on_busy"), "code", "missing required keys: on_busy"),
    (lambda f: f["nodes"]["code"].update(max_length=6), "code", "unknown keys"),
    (lambda f: f["nodes"]["anyone"].update(queue_s=-1), "anyone", "queue_s"),
    (lambda f: f["nodes"]["anyone"].update(busy_prompt=["nope"]), "anyone",
     "busy_prompt: 'nope' is not a media URI"),
])
def test_consult_node_errors_name_the_node(mutate: Any, node: str, text: str) -> None:
    data = raw_flow()
    mutate(data)
    data["nodes"]["anyone"] = {k: v for k, v in data["nodes"]["anyone"].items()
                               if v is not None}
    with pytest.raises(FlowError) as err:
        parse_flow(data, "flows/consult.toml")
    assert err.value.node == node and text in str(err.value)


# --- advisor lists ------------------------------------------------------------------------

AOI = ivr.Listed(7, ("sound:cbgw-guidance/acme/aoi",))
REN_TALKING = ivr.Listed(9, ("digits:8765",), "talking")


def at_list(flow: Flow, key: str) -> tuple[IvrState, list[ivr.Command]]:
    state, _ = ivr.start(flow, "cb-1-01")
    return feed(state, Dtmf(key))


def test_online_list_reads_each_advisor_with_their_key_and_rings_the_chosen(
        flow: Flow) -> None:
    state, cmds = at_list(flow, "3")
    assert cmds[-1] == ivr.ListAdvisors("online") and state.mode is Mode.LISTING
    state, cmds = feed(state, ivr.AdvisorsListed((AOI, replace(REN_TALKING,
                                                                unavailable=None))))
    assert plays(cmds) == [("sound:cbgw/advisor-list-online", "digits:1",
                            "sound:cbgw-guidance/acme/aoi", "digits:2", "digits:8765")]
    state, cmds = feed(state, Dtmf("2"))          # barge-in: the second one
    assert cmds[-1] == ConnectAdvisor("online_list", advisor_id=9)
    assert state.mode is Mode.CONSULT


def test_all_list_says_why_an_advisor_cannot_take_it_and_reads_the_list_again(
        flow: Flow) -> None:
    state, _ = at_list(flow, "4")
    state, cmds = feed(state, ivr.AdvisorsListed((AOI, REN_TALKING)))
    assert plays(cmds)[-1][-3:] == ("digits:2", "digits:8765", "sound:cbgw/advisor-talking")
    state, cmds = feed(state, Dtmf("2"))
    assert not any(isinstance(c, ConnectAdvisor) for c in cmds)
    assert plays(cmds) == [("sound:cbgw/advisor-talking", "sound:cbgw/advisor-list-all",
                            "digits:1", "sound:cbgw-guidance/acme/aoi", "digits:2",
                            "digits:8765", "sound:cbgw/advisor-talking")]
    state, cmds = feed(state, Dtmf("1"))
    assert cmds[-1] == ConnectAdvisor("all_list", advisor_id=7)


def test_a_key_past_the_list_is_invalid_and_an_empty_list_fails(flow: Flow) -> None:
    state, _ = at_list(flow, "3")
    listed, _ = feed(state, ivr.AdvisorsListed((AOI,)))
    _, cmds = feed(listed, Dtmf("5"))
    assert plays(cmds)[0][:2] == ("sound:cbgw/invalid", "sound:cbgw/advisor-list-online")
    empty, _ = feed(state, ivr.AdvisorsListed(()))
    assert empty.node == "no_advisor"


def test_a_listed_advisor_taken_meanwhile_is_said_and_the_list_read_again(
        flow: Flow) -> None:
    state, _ = at_list(flow, "3")
    state, _ = feed(state, ivr.AdvisorsListed((AOI,)), Dtmf("1"))
    state, cmds = feed(state, AdvisorUnavailable("talking"))
    assert state.node == "online_list" and plays(cmds)[0][0] == "sound:cbgw/advisor-talking"
    assert plays(cmds)[0][-1] == "sound:cbgw-guidance/acme/aoi"


def test_list_node_keys_are_checked() -> None:
    data = raw_flow()
    data["nodes"]["all_list"]["list"] = "everyone"
    with pytest.raises(FlowError) as err:
        parse_flow(data, "flows/consult.toml")
    assert err.value.node == "all_list" and "list: expected one of online all" in str(err.value)
