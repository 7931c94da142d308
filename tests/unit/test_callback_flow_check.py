"""Flow validation read from text: errors name file, line and node; loops without exit."""

from __future__ import annotations

from pathlib import Path

import pytest

from callback_server.flow_check import without_exit
from callback_server.ivr_flow import FLOWS_DIR, FlowError, load_flow, parse_text

ORDER = (FLOWS_DIR / "order.toml").read_text(encoding="utf-8")


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


def error_of(text: str, source: str = "flows/m.toml") -> FlowError:
    with pytest.raises(FlowError) as info:
        parse_text(text, source)
    return info.value


FLOW = """\
name = "m"
start = "main"

[nodes.main]
type = "menu"
prompt = ["sound:cbgw/welcome-menu"]
choices = { "1" = "bye", "9" = "main" }
on_fail = "bye"

[nodes.bye]
type = "hangup"
prompt = ["sound:cbgw/goodbye"]
"""


def test_the_shipped_flow_and_a_retry_loop_with_an_exit_are_valid() -> None:
    assert parse_text(ORDER, "order.toml").name == "order"
    # "9" repeats the menu (a loop), but "1" and on_fail leave it
    assert parse_text(FLOW, "m.toml").node("main").choice("9") == "main"


@pytest.mark.parametrize(("old", "new", "node", "needle", "text"), [
    # an unknown key: the line of that key inside its node's table
    ('type = "hangup"', 'type = "hangup"\nvolume = 3', "bye", "volume = 3", "unknown keys"),
    # a bad value: the line of the key
    ('"9" = "main"', '"12" = "main"', "main", "choices =", "not a single DTMF key"),
    ('prompt = ["sound:cbgw/goodbye"]', 'prompt = ["bell"]', "bye", 'prompt = ["bell"]',
     "not a media URI"),
    # a target that is not there
    ('on_fail = "bye"', 'on_fail = "nowhere"', "main", 'on_fail = "nowhere"', "no node"),
    # a missing key or an unreachable node: the node's header
    ('on_fail = "bye"\n', "", "main", "[nodes.main]", "missing required keys: on_fail"),
    ("[nodes.bye]", '[nodes.orphan]\ntype = "hangup"\n\n[nodes.bye]', "orphan",
     "[nodes.orphan]", "not reachable"),
])
def test_errors_name_file_line_and_node(old: str, new: str, node: str, needle: str,
                                        text: str) -> None:
    bad = FLOW.replace(old, new)
    assert bad != FLOW
    err = error_of(bad)
    assert (err.file, err.node, err.line) == ("flows/m.toml", node, line_of(bad, needle))
    assert str(err).startswith(f"flows/m.toml:{err.line}: node {node!r}: ")
    assert text in err.message


def test_top_level_errors_name_their_line() -> None:
    bad = FLOW.replace('start = "main"', 'start = "main"\ncolour = "blue"')
    err = error_of(bad)
    assert (err.node, err.line) == (None, 3)
    assert str(err) == "flows/m.toml:3: unknown top-level keys: colour"
    err = error_of(FLOW.replace('start = "main"', 'start = "nope"'))
    assert str(err) == "flows/m.toml:2: start: no node 'nope'"


def test_a_choices_sub_table_is_found_by_its_header() -> None:
    bad = FLOW.replace('choices = { "1" = "bye", "9" = "main" }\n', "") + (
        '\n[nodes.main.choices]\n"1" = "bye"\n"x" = "main"\n')
    err = error_of(bad)
    assert (err.node, err.line) == ("main", line_of(bad, "[nodes.main.choices]"))


def test_load_flow_names_the_path_and_line(tmp_path: Path) -> None:
    path = tmp_path / "order.toml"
    path.write_text(ORDER.replace("max_length = 12", "max_length = 99"))
    with pytest.raises(FlowError) as info:
        load_flow(path)
    assert str(info.value).startswith(
        f"{path}:{line_of(ORDER, 'max_length = 12')}: node 'item_code': max_length: ")


SAYS = """\
name = "s"
start = "main"

[nodes.main]
type = "menu"
prompt = ["sound:cbgw/welcome-menu"]
choices = { "1" = "ping", "2" = "bye" }
on_fail = "bye"

[nodes.ping]
type = "say"
prompt = ["sound:cbgw/thanks"]
next = "pong"

[nodes.pong]
type = "say"
prompt = ["sound:cbgw/thanks"]
next = "ping"

[nodes.bye]
type = "hangup"
"""


def test_two_say_nodes_pointing_at_each_other_are_a_loop_without_exit() -> None:
    err = error_of(SAYS)
    assert err.node == "ping" and err.line == line_of(SAYS, "[nodes.ping]")
    assert err.message == ("loop without exit: from ping, pong no path reaches a hangup, "
                           "operator, transfer or return node")


def test_a_menu_whose_every_branch_returns_is_a_loop_without_exit() -> None:
    trap = """\
name = "t"
start = "main"

[nodes.main]
type = "menu"
prompt = ["sound:cbgw/welcome-menu"]
choices = { "1" = "bye", "2" = "again" }
on_fail = "bye"

[nodes.again]
type = "menu"
prompt = ["sound:cbgw/welcome-menu"]
choices = { "1" = "again", "2" = "say_again" }
on_fail = "again"

[nodes.say_again]
type = "say"
prompt = ["sound:cbgw/thanks"]
next = "again"

[nodes.bye]
type = "hangup"
"""
    err = error_of(trap)
    assert err.node == "again" and "from again, say_again no path" in err.message
    # one way out is enough: the operator ends the IVR's part of the call
    ok = trap.replace('on_fail = "again"', 'on_fail = "op"') + (
        '\n[nodes.op]\ntype = "operator"\ntarget = "desk"\non_fail = "again"\n')
    assert parse_text(ok, "t.toml").node("again").on_fail == "op"


def test_without_exit_lists_every_trapped_node_in_order() -> None:
    edges = {"a": ["b"], "b": ["c", "a"], "c": ["c"], "d": ["e"], "e": []}
    assert without_exit(edges, {"e"}) == ["a", "b", "c"]
    assert without_exit(edges, {"e", "c"}) == []
    assert without_exit({"x": ["x"]}, set()) == ["x"]
