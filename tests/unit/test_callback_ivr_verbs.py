"""The IVR verbs beyond menus and advisors: set, hours, subflow/return, record, sms,
webhook, transfer. Flow text in, validation errors (file, line, node) or commands out."""

from __future__ import annotations

from pathlib import Path

import pytest

from callback_server import ivr
from callback_server.ivr import (
    CallWebhook,
    CheckHours,
    Dtmf,
    Hangup,
    HoursChecked,
    IvrState,
    Mode,
    Play,
    PlaybackFinished,
    Recorded,
    SendSms,
    StartRecording,
    Submit,
    TransferCall,
    TransferFailed,
    WebhookAnswered,
    WebhookFailed,
)
from callback_server.ivr_flow import Flow, FlowError, load_named, parse_text, resolve

CALLER = (("caller", "+819012345678"),)


def flow_of(body: str, name: str = "t", start: str = "main") -> Flow:
    return parse_text(f'name = "{name}"\nstart = "{start}"\n\n{body}', f"{name}.toml")


def error_of(body: str) -> FlowError:
    with pytest.raises(FlowError) as info:
        flow_of(body)
    return info.value


def run(flow: Flow, *events: ivr.Event) -> tuple[IvrState, list[ivr.Command]]:
    state, out = ivr.start(flow, "ch", CALLER)
    for event in events:
        state, cmds = ivr.transition(state, event)
        out += cmds
    return state, out


def of(cmds: list[ivr.Command], kind: type) -> list[object]:
    return [c for c in cmds if isinstance(c, kind)]


BYE = '[nodes.bye]\ntype = "hangup"\n'

# --- set -----------------------------------------------------------------------------------

SET = """\
[nodes.main]
type = "set"
values = { plan = "gold", note = "plan {plan} for {caller}" }
next = "send"

[nodes.send]
type = "submit"
category = "order"
fields = ["plan", "note", "caller"]
next = "bye"

""" + BYE


def test_set_fills_variables_in_order_and_submit_forwards_them() -> None:
    state, cmds = run(flow_of(SET))
    assert of(cmds, Submit) == [Submit("order", (("plan", "gold"),
                                                  ("note", "plan gold for +819012345678"),
                                                  ("caller", "+819012345678")))]
    assert cmds[-1] == Hangup() and state.mode is Mode.DONE


def test_a_template_naming_no_variable_of_the_flow_is_refused_with_its_line() -> None:
    err = error_of(SET.replace("{caller}", "{callr}"))
    assert (err.node, err.line) == ("main", 6)
    assert "values.note: {callr} is not a variable of this flow" in err.message


def test_set_needs_values_and_cannot_set_the_caller() -> None:
    assert "set at least one variable" in error_of(SET.replace(
        'values = { plan = "gold", note = "plan {plan} for {caller}" }', "values = {}")).message
    err = error_of(SET.replace('plan = "gold"', 'caller = "x"'))
    assert "'caller' is set by the call itself" in err.message


def test_submit_of_a_variable_nothing_sets_is_refused() -> None:
    err = error_of(SET.replace('"caller"]', '"missing"]'))
    assert (err.node, err.message) == ("send", "fields: 'missing' is not collected or set by "
                                       "any node")


def test_say_plays_a_variable_in_its_media_and_never_two_media_from_one() -> None:
    flow = flow_of("""\
[nodes.main]
type = "set"
values = { code = "12,sound:x", empty = "" }
next = "read"

[nodes.read]
type = "say"
prompt = ["sound:cbgw/thanks", "digits:{code}", "digits:{empty}"]
next = "bye"

""" + BYE)
    _, cmds = run(flow)
    assert of(cmds, Play) == [Play("ch-p1", ("sound:cbgw/thanks", "digits:12sound:x"))]


def test_set_and_sms_nodes_that_loop_are_refused() -> None:
    err = error_of("""\
[nodes.main]
type = "menu"
prompt = ["sound:cbgw/x"]
choices = { "1" = "a" }
on_fail = "bye"

[nodes.a]
type = "set"
values = { x = "1" }
next = "b"

[nodes.b]
type = "sms"
to = "caller"
text = "hi"
next = "a"

""" + BYE)
    assert err.message == "set, sms, submit nodes form a loop"

# --- hours ---------------------------------------------------------------------------------

HOURS = """\
[nodes.main]
type = "hours"
open = "welcome"
closed = "closed"

[nodes.welcome]
type = "say"
prompt = ["sound:cbgw/welcome"]
next = "bye"

[nodes.closed]
type = "hangup"
prompt = ["sound:cbgw/closed"]

""" + BYE


def test_hours_asks_the_adapter_and_follows_its_answer() -> None:
    state, cmds = run(flow_of(HOURS))
    assert cmds == [CheckHours()] and state.mode is Mode.HOURS
    opened, cmds = ivr.transition(state, HoursChecked(open=True))
    assert opened.node == "welcome" and of(cmds, Play)[0].media == ("sound:cbgw/welcome",)
    closed, cmds = ivr.transition(state, HoursChecked(open=False))
    assert closed.node == "closed" and closed.mode is Mode.ENDING
    assert ivr.transition(opened, HoursChecked(open=False)) == (opened, [])   # stale


def test_hours_needs_both_branches_and_they_must_exist() -> None:
    err = error_of(HOURS.replace('closed = "closed"\n', ""))
    assert (err.node, err.message) == ("main", "missing required keys: closed")
    err = error_of(HOURS.replace('open = "welcome"', 'open = "nowhere"'))
    assert (err.node, err.message, err.line) == ("main", "open: no node 'nowhere'", 6)

# --- sub-flows -----------------------------------------------------------------------------

MAIN = """\
[nodes.main]
type = "subflow"
flow = "survey"
next = "after"

[nodes.after]
type = "say"
prompt = ["sound:cbgw/thanks"]
next = "bye"

""" + BYE

SURVEY = """\
[nodes.main]
type = "digits"
prompt = ["sound:cbgw/score"]
field = "score"
next = "done"
on_fail = "done"

[nodes.done]
type = "return"
"""


def test_a_sub_flow_runs_from_its_start_and_returns_to_next() -> None:
    survey = flow_of(SURVEY, "survey")
    flow = resolve(flow_of(MAIN), {"survey": survey}.get)
    state, cmds = run(flow)
    assert state.flow == survey and state.node == "main"
    assert of(cmds, Play)[0].media == ("sound:cbgw/score",)
    state, cmds = run(flow, Dtmf("7"), Dtmf("#"))
    assert state.flow is flow and state.node == "after" and state.frames == ()
    assert state.value("score") == "7"       # the sub-flow's variables are the call's


def test_return_in_the_top_flow_hangs_up_and_a_sub_flow_may_hang_up() -> None:
    state, cmds = run(flow_of(SURVEY, "survey"), Dtmf("1"), Dtmf("#"))
    assert cmds[-1] == Hangup() and state.mode is Mode.DONE
    ends = flow_of(SURVEY.replace('type = "return"', 'type = "hangup"'), "survey")
    state, cmds = run(resolve(flow_of(MAIN), {"survey": ends}.get), Dtmf("1"), Dtmf("#"))
    assert cmds[-1] == Hangup() and state.node == "done"


def test_a_missing_sub_flow_is_refused_at_load_with_its_line() -> None:
    text = 'name = "t"\nstart = "main"\n\n' + MAIN
    with pytest.raises(FlowError) as info:
        resolve(parse_text(text, "t.toml"), {}.get, text)
    assert (info.value.node, info.value.line) == ("main", 6)
    assert str(info.value) == "t.toml:6: node 'main': flow: no flow 'survey'"


def test_recursion_through_sub_flows_is_refused() -> None:
    loop = flow_of(MAIN.replace('"survey"', '"t"').replace('[nodes.main]', '[nodes.main]'),
                   "survey")   # survey calls t, t calls survey
    flows = {"survey": loop, "t": flow_of(MAIN)}
    with pytest.raises(FlowError) as info:
        resolve(flows["t"], flows.get)
    assert info.value.message == ("flow: 't' is already running (t -> survey -> t): a flow "
                                  "cannot call itself")
    with pytest.raises(FlowError, match="a flow cannot call itself"):
        resolve(flow_of(MAIN.replace('"survey"', '"t"')), {}.get)

# --- record --------------------------------------------------------------------------------

RECORD = """\
[nodes.main]
type = "record"
prompt = ["sound:cbgw/leave-message"]
field = "message"
max_s = 120
silence_s = 3
next = "send"
on_fail = "sorry"

[nodes.send]
type = "submit"
category = "voicemail"
fields = ["message"]
next = "bye"

[nodes.sorry]
type = "hangup"
prompt = ["sound:cbgw/invalid"]

""" + BYE


def test_record_plays_its_prompt_then_records_and_names_the_recording() -> None:
    state, cmds = run(flow_of(RECORD))
    assert of(cmds, Play) == [Play("ch-p1", ("sound:cbgw/leave-message",))]
    state, cmds = ivr.transition(state, Dtmf("5"))        # no skipping ahead
    assert cmds == [] and state.node == "main"
    state, cmds = ivr.transition(state, PlaybackFinished("ch-p1"))
    assert cmds == [StartRecording("ch-r2", 120, 3, True, "#")]
    assert state.mode is Mode.RECORDING
    assert ivr.transition(state, Recorded("ch-r9", "x")) == (state, [])    # not ours
    done, cmds = ivr.transition(state, Recorded("ch-r2", "5f0c"))
    assert of(cmds, Submit) == [Submit("voicemail", (("message", "5f0c"),))]
    assert cmds[-1] == Hangup()


def test_nothing_recorded_goes_to_on_fail_else_next() -> None:
    state, _ = run(flow_of(RECORD), PlaybackFinished("ch-p1"))
    failed, cmds = ivr.transition(state, Recorded("ch-r2", None))
    assert failed.node == "sorry" and of(cmds, Submit) == []
    plain = flow_of(RECORD.replace('on_fail = "sorry"\n', "").replace(
        'prompt = ["sound:cbgw/leave-message"]\n', "").replace(
        '[nodes.sorry]\ntype = "hangup"\nprompt = ["sound:cbgw/invalid"]\n', ""))
    state, cmds = run(plain)
    assert cmds == [StartRecording("ch-r1", 120, 3, True, "#")]   # no prompt: at once
    state, cmds = ivr.transition(state, Recorded("ch-r1", None))
    assert state.node == "bye"


def test_record_limits_are_checked() -> None:
    err = error_of(RECORD.replace("max_s = 120", "max_s = 601"))
    assert (err.node, err.line, err.message) == ("main", 8, "max_s: expected an integer in "
                                                 "1..600, got 601")
    assert "beep: expected true or false" in error_of(
        RECORD.replace("max_s = 120", 'beep = "no"')).message

# --- sms -----------------------------------------------------------------------------------

SMS = """\
[nodes.main]
type = "digits"
prompt = ["sound:cbgw/order-number"]
field = "order_no"
next = "text"
on_fail = "bye"

[nodes.text]
type = "sms"
to = "caller"
text = "ご注文 {order_no} を承りました"
next = "copy"

[nodes.copy]
type = "sms"
to = "+819011112222"
text = "order {order_no} from {caller}"
next = "bye"

""" + BYE


def test_sms_is_sent_in_the_background_and_the_call_goes_on() -> None:
    state, cmds = run(flow_of(SMS), Dtmf("4"), Dtmf("2"), Dtmf("#"))
    assert of(cmds, SendSms) == [SendSms("+819012345678", "ご注文 42 を承りました"),
                                 SendSms("+819011112222", "order 42 from +819012345678")]
    assert cmds[-1] == Hangup()


def test_sms_recipient_must_be_the_caller_or_an_e164_number() -> None:
    err = error_of(SMS.replace('to = "+819011112222"', 'to = "09011112222"'))
    assert (err.node, err.line) == ("copy", 19)
    assert err.message.startswith("to: expected an E.164 number")

# --- webhook -------------------------------------------------------------------------------

HOOK = """\
[nodes.main]
type = "webhook"
url = "https://crm.example/ivr"
sets = ["plan"]
timeout_s = 3
next = "send"
on_fail = "bye"

[nodes.send]
type = "submit"
category = "crm"
fields = ["plan"]
next = "bye"

""" + BYE


def test_webhook_posts_the_variables_and_its_answer_sets_only_what_sets_names() -> None:
    state, cmds = run(flow_of(HOOK))
    assert cmds == [CallWebhook("ch-w1", "https://crm.example/ivr", CALLER, ("plan",), 3.0)]
    assert ivr.transition(state, WebhookAnswered("ch-w0", ())) == (state, [])
    done, cmds = ivr.transition(state, WebhookAnswered("ch-w1", (("plan", "gold"),
                                                                ("caller", "+1"))))
    assert of(cmds, Submit) == [Submit("crm", (("plan", "gold"),))]
    assert done.value("caller") == "+819012345678"


def test_webhook_failure_or_timeout_takes_on_fail() -> None:
    state, _ = run(flow_of(HOOK))
    done, cmds = ivr.transition(state, WebhookFailed("ch-w1", "timeout"))
    assert of(cmds, Submit) == [] and cmds[-1] == Hangup()


def test_webhook_url_must_be_http() -> None:
    err = error_of(HOOK.replace("https://crm.example/ivr", "ftp://crm.example"))
    assert (err.node, err.line, err.message) == ("main", 6, "url: expected an http(s) URL")

# --- transfer ------------------------------------------------------------------------------

TRANSFER = """\
[nodes.main]
type = "transfer"
prompt = ["sound:cbgw/connecting"]
number = "+81312345678"
ring_s = 20
on_fail = "bye"

""" + BYE


def test_transfer_dials_the_number_while_its_prompt_plays_and_fails_over() -> None:
    state, cmds = run(flow_of(TRANSFER))
    assert of(cmds, TransferCall) == [TransferCall("+81312345678", 20)]
    assert state.mode is Mode.TRANSFER
    state, cmds = ivr.transition(state, TransferFailed())
    assert cmds[-1] == Hangup()


def test_transfer_is_an_exit_and_needs_a_number() -> None:
    flow_of(TRANSFER.replace('on_fail = "bye"', 'on_fail = "main"').replace(BYE, ""))
    err = error_of(TRANSFER.replace('number = "+81312345678"\n', ""))
    assert err.message == "missing required keys: number"


def test_file_flows_find_their_sub_flows_beside_them(tmp_path: Path) -> None:
    (tmp_path / "t.toml").write_text('name = "t"\nstart = "main"\n\n' + MAIN)
    with pytest.raises(FlowError) as info:
        load_named("t", tmp_path)
    assert str(info.value) == f"{tmp_path / 't.toml'}:6: node 'main': flow: no flow 'survey'"
    (tmp_path / "survey.toml").write_text('name = "survey"\nstart = "main"\n\n' + SURVEY)
    flow = load_named("t", tmp_path)
    assert flow.subflow("survey").node("done").type == "return"
    (tmp_path / "survey.toml").write_text('name = "survey"\nstart = "main"\n\n'
                                          + MAIN.replace('"survey"', '"t"'))
    with pytest.raises(FlowError, match=r"'t' is already running \(t -> survey -> t\)"):
        load_named("t", tmp_path)


def test_a_confirm_gates_yes_must_be_a_node_the_call_stops_at() -> None:
    gate = """\
confirm_callback = "main"

[nodes.main]
type = "confirm"
prompt = ["sound:cbgw/confirm-callback"]
yes = "remember"
no = "bye"
on_fail = "bye"

[nodes.remember]
type = "set"
values = { plan = "gold" }
next = "bye"

""" + BYE
    err = error_of(gate)
    assert err.node == "main" and err.message.startswith(
        "yes: must lead to its own node that the call stops at (not return, set, sms, "
        "subflow, submit)")
    flow_of(gate.replace('type = "set"\nvalues = { plan = "gold" }',
                         'type = "hours"\nopen = "bye"\nclosed = "bye"').replace(
        'next = "bye"\n\n[nodes.bye]', '\n[nodes.bye]'))


def test_a_menu_with_a_field_keeps_the_key_chosen_as_a_variable() -> None:
    flow = flow_of("""\
[nodes.main]
type = "menu"
prompt = ["sound:cbgw/welcome-menu"]
choices = { "1" = "send", "2" = "send" }
field = "topic"
on_fail = "bye"

[nodes.send]
type = "submit"
category = "inquiry"
fields = ["topic"]
next = "bye"

""" + BYE)
    _, cmds = run(flow, Dtmf("9"), Dtmf("2"))         # an invalid key keeps nothing
    assert of(cmds, Submit) == [Submit("inquiry", (("topic", "2"),))]


def test_a_sub_flow_uses_variables_the_calling_flow_must_have() -> None:
    notify = flow_of("""\
uses = ["order_no"]

[nodes.main]
type = "sms"
to = "caller"
text = "order {order_no}"
next = "done"

[nodes.done]
type = "return"
""", "notify")
    calling = MAIN.replace('"survey"', '"notify"')
    with pytest.raises(FlowError) as info:
        resolve(flow_of(calling), {"notify": notify}.get)
    assert (info.value.node, info.value.message) == (
        "main", "flow: 'notify' uses order_no, which this flow does not collect or set")
    with_order = flow_of("""\
[nodes.main]
type = "set"
values = { order_no = "42" }
next = "call"

[nodes.call]
type = "subflow"
flow = "notify"
next = "bye"

""" + BYE)
    _, cmds = run(resolve(with_order, {"notify": notify}.get))
    assert of(cmds, SendSms) == [SendSms("+819012345678", "order 42")]


def test_a_step_says_which_nodes_it_entered_and_a_re_prompt_enters_none() -> None:
    flow = flow_of(SET.replace('next = "send"', 'next = "menu"', 1) + """
[nodes.menu]
type = "menu"
prompt = ["sound:cbgw/welcome-menu"]
choices = { "1" = "send" }
on_fail = "bye"
""")
    state, _ = ivr.start(flow, "ch", CALLER)
    assert state.entered == ("set", "menu")
    state, _ = ivr.transition(state, Dtmf("7"))           # not a choice: the menu again
    assert (state.entered, state.tries) == ((), 1)
    state, _ = ivr.transition(state, Dtmf("1"))
    assert state.entered == ("submit", "hangup")
