"""An IVR list of more than 9 advisors is read 9 a page: 「次の一覧は0を押してください。」
after a page with more after it, 0 reads the next page (after the last page 0 reads the
first again, 「最初の一覧に戻るには0を押してください。」 says so), and keys 1-9 pick from the
page being read."""

from __future__ import annotations

from dataclasses import replace

import pytest

from callback_server import ivr
from callback_server.ivr import ConnectAdvisor, Dtmf, IvrState, Mode, StartTimer
from callback_server.ivr_flow import Flow, load_named
from ivr_platform.prompts import SYSTEM_PROMPTS
from tests.unit.test_callback_ivr import feed, finish_prompt, plays

MORE, FIRST = "sound:cbgw/advisor-list-more", "sound:cbgw/advisor-list-first"


@pytest.fixture(scope="module")
def flow() -> Flow:
    return replace(load_named("consult"), start="main", confirm_callback=None)


def advisors(n: int, *, talking: frozenset[int] = frozenset()) -> tuple[ivr.Listed, ...]:
    return tuple(ivr.Listed(100 + i, (f"digits:{1000 + i}",),
                            "talking" if i in talking else None) for i in range(n))


def names(media: tuple[str, ...]) -> list[str]:
    return [m for m in media if m.startswith("digits:1") and len(m) == 11]


def listed(flow: Flow, n: int, key: str = "4", **kw: frozenset[int]
           ) -> tuple[IvrState, list[ivr.Command]]:
    state, _ = ivr.start(flow, "cb-1-01")
    state, _ = feed(state, Dtmf(key))
    return feed(state, ivr.AdvisorsListed(advisors(n, **kw)))


def test_the_prompts_exist_in_both_languages() -> None:
    assert SYSTEM_PROMPTS["advisor-list-more"].ja == "次の一覧は0を押してください。"
    assert SYSTEM_PROMPTS["advisor-list-first"].ja == "最初の一覧に戻るには0を押してください。"
    assert SYSTEM_PROMPTS["advisor-list-more"].en and SYSTEM_PROMPTS["advisor-list-first"].en


def test_nine_or_fewer_are_read_as_before_and_0_is_an_invalid_key(flow: Flow) -> None:
    state, cmds = listed(flow, 9)
    read = plays(cmds)[0]
    assert names(read) == [f"digits:{1000 + i}" for i in range(9)]
    assert MORE not in read and FIRST not in read
    _, cmds = feed(state, Dtmf("0"))
    assert plays(cmds)[0][0] == "sound:cbgw/invalid"


def test_the_first_page_is_read_then_how_to_hear_more(flow: Flow) -> None:
    _, cmds = listed(flow, 20)
    read = plays(cmds)[0]
    assert read[0] == "sound:cbgw/advisor-list-all" and read[-1] == MORE
    assert names(read) == [f"digits:{1000 + i}" for i in range(9)]
    assert read[1:3] == ("digits:1", "digits:1000")


def test_0_reads_the_next_page_whose_keys_pick_from_it(flow: Flow) -> None:
    state, _ = listed(flow, 20)
    state, cmds = feed(state, Dtmf("0"))          # barge-in on the first page
    assert isinstance(cmds[0], ivr.StopPlayback)
    read = plays(cmds)[0]
    assert read[0] == "digits:1" and read[1] == "digits:1009"     # no prompt, key 1 again
    assert names(read) == [f"digits:{1009 + i}" for i in range(9)] and read[-1] == MORE
    assert state.tries == 0 and state.page == 1
    _, cmds = feed(state, Dtmf("3"))
    assert cmds[-1] == ConnectAdvisor("all_list", advisor_id=111)


def test_the_last_page_says_0_goes_back_and_0_does(flow: Flow) -> None:
    state, _ = listed(flow, 20)
    state, cmds = feed(state, Dtmf("0"), Dtmf("0"))
    read = plays(cmds)[-1]
    assert state.page == 2
    assert names(read) == ["digits:1018", "digits:1019"] and read[-1] == FIRST
    _, cmds = feed(state, Dtmf("3"))              # past the last page's two
    assert plays(cmds)[0][0] == "sound:cbgw/invalid"
    state, cmds = finish_prompt(state)
    assert isinstance(cmds[-1], StartTimer)       # the page read, the keys awaited
    _, cmds = feed(state, Dtmf("2"))
    assert cmds[-1] == ConnectAdvisor("all_list", advisor_id=119)
    state, cmds = feed(state, Dtmf("0"))
    assert state.page == 0 and names(plays(cmds)[0])[0] == "digits:1000"
    assert plays(cmds)[0][-1] == MORE


def test_a_retry_reads_the_page_being_read_again(flow: Flow) -> None:
    state, _ = listed(flow, 12, talking=frozenset({10}))
    state, _ = feed(state, Dtmf("0"))
    state, cmds = feed(state, Dtmf("2"))          # advisor 110 is talking
    assert not any(isinstance(c, ConnectAdvisor) for c in cmds)
    read = plays(cmds)[0]
    assert read[0] == "sound:cbgw/advisor-talking"
    assert names(read) == ["digits:1009", "digits:1010", "digits:1011"] and read[-1] == FIRST
    assert state.page == 1 and state.mode is Mode.PROMPT
