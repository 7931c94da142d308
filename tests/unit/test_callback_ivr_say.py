"""A say node's text, spoken by the site's TTS: validation (file, line, node), the pure
machine's ``Speak``/``Spoken``/``Play``, the adapter (cache hit, render, failure) and the
site's check of the engines."""

from __future__ import annotations

from pathlib import Path

import pytest

from callback_server import ivr
from callback_server.config import speech_problems
from callback_server.ivr import (
    ConsultBusy,
    Dtmf,
    IvrState,
    Mode,
    Play,
    PlaybackFinished,
    Speak,
    Spoken,
)
from callback_server.ivr_services import IvrServices
from callback_server.testing import MemoryIvrServices
from ivr_platform.media_config import MediaSettings
from ivr_platform.speech import spoken_text
from ivr_platform.tts import MAX_CHARS, PromptCache
from shared.language import Language
from tests.unit.test_callback_ivr_verbs import BYE, error_of, flow_of, of, run
from tests.unit.test_callback_ivr_verbs_runner import CHANNEL, answered

SAY = """\
[nodes.main]
type = "digits"
prompt = "sound:cbgw/enter-item"
field = "item_code"
max_length = 4
next = "tell"
on_fail = "bye"

[nodes.tell]
type = "say"
text = "商品番号{item_code:digits}、{item_code}個ですね。"
next = "bye"

""" + BYE

STATIC = """\
[nodes.main]
type = "say"
text = "Welcome."
language = "en"
next = "bye"

""" + BYE


def test_a_say_node_has_a_prompt_or_a_text_not_both_nor_neither() -> None:
    both = error_of('[nodes.main]\ntype = "say"\nprompt = "sound:cbgw/x"\ntext = "a"\n'
                    'next = "bye"\n\n' + BYE)
    assert (both.file, both.line, both.node) == ("t.toml", 4, "main")
    assert "give one of prompt (media) or text" in str(both)
    neither = error_of('[nodes.main]\ntype = "say"\nnext = "bye"\n\n' + BYE)
    assert neither.node == "main" and "give one of prompt" in neither.message


def test_a_say_texts_variables_must_be_the_flows_and_digits_only_in_say() -> None:
    err = error_of(SAY.replace("{item_code}個", "{count}個"))
    assert (err.file, err.line, err.node) == ("t.toml", 14, "tell")
    assert err.message == ("text: {count} is not a variable of this flow (collected, set "
                           "or caller)")
    err = error_of(SAY.replace("{item_code:digits}", "{item_code:words}"))
    assert err.node == "tell" and "{item_code:words} is not a variable name" in err.message
    sms = error_of('[nodes.main]\ntype = "sms"\nto = "caller"\ntext = "{caller:digits}"\n'
                   'next = "bye"\n\n' + BYE)
    assert (sms.line, sms.node) == (7, "main")
    assert sms.message == "text: {caller:digits}: :digits is only for a say node's text"


def test_a_say_language_is_ja_or_en_and_only_with_a_text() -> None:
    err = error_of(STATIC.replace('"en"', '"fr"'))
    assert (err.line, err.node) == (7, "main")
    assert err.message == "language: expected one of ja en, got 'fr'"
    err = error_of('[nodes.main]\ntype = "say"\nprompt = "sound:cbgw/x"\nlanguage = "en"\n'
                   'next = "bye"\n\n' + BYE)
    assert err.message == "language: only with text"


def test_the_machine_asks_for_the_filled_text_and_plays_what_was_rendered() -> None:
    flow = flow_of(SAY)
    state, cmds = run(flow, PlaybackFinished("ch-p1"), *(Dtmf(d) for d in "0120"))
    speak = of(cmds, Speak)
    assert speak == [Speak("ch-s6", (("商品番号", False), ("0120", True), ("、", False),
                                     ("0120", False), ("個ですね。", False)), None)]
    assert state.mode is Mode.SPEAKING
    state, stale = _step(state, Spoken("ch-s1", "sound:cbgw-guidance/_tts/old"))
    assert stale == [] and state.mode is Mode.SPEAKING
    state, played = _step(state, Spoken("ch-s6", "sound:cbgw-guidance/_tts/abc"))
    assert played == [Play("ch-p7", ("sound:cbgw-guidance/_tts/abc",))]
    state, cmds = _step(state, PlaybackFinished("ch-p7"))
    assert state.node == "bye"


def test_a_text_that_could_not_be_rendered_goes_on_to_next() -> None:
    state, cmds = run(flow_of(STATIC))
    assert of(cmds, Speak) == [Speak("ch-s1", (("Welcome.", False),), "en")]
    state, cmds = _step(state, Spoken("ch-s1", None))
    assert state.node == "bye" and of(cmds, Play) == []


def test_a_prompt_before_the_say_plays_with_the_rendered_text() -> None:
    flow = flow_of("""\
[nodes.main]
type = "connect"
group = "sales"
next = "bye"
on_busy = "sorry"
on_fail = "bye"

[nodes.sorry]
type = "say"
text = "Sorry."
next = "bye"

""" + BYE)
    state, _ = run(flow, ConsultBusy())
    state, cmds = _step(state, Spoken(state.pending or "", "sound:cbgw-guidance/_tts/k"))
    assert [c.media for c in cmds if isinstance(c, Play)] == [
        ("sound:cbgw/lines-busy", "sound:cbgw-guidance/_tts/k")]
    state, cmds = run(flow, ConsultBusy())
    state, cmds = _step(state, Spoken(state.pending or "", None))
    assert [c.media for c in cmds if isinstance(c, Play)] == [("sound:cbgw/lines-busy",)]


def test_digits_are_read_one_by_one_in_the_language() -> None:
    parts = (("番号は", False), ("+81 3-12", True), ("です", False), ("x", True))
    assert spoken_text(parts, Language.JAPANESE) == \
        "番号はハチ、イチ、サン、イチ、ニーです"
    assert spoken_text((("code ", False), ("407", True)), Language.ENGLISH) == \
        "code four zero seven"


async def test_the_adapter_plays_a_cached_text_at_once_and_renders_another() -> None:
    cached = MemoryIvrServices(cached={"Welcome.": "sound:cbgw-guidance/_tts/w"})
    call = await answered(flow_of(STATIC), services=cached)
    assert call.ari.named("play")[-1][1] == ("sound:cbgw-guidance/_tts/w",)
    assert cached.said == []                              # no render on a hit
    rendered = MemoryIvrServices(rendered={"Welcome.": "sound:cbgw-guidance/_tts/w"})
    call = await answered(flow_of(STATIC), services=rendered)
    assert rendered.said == [("Welcome.", Language.ENGLISH)]
    assert call.ari.named("play")[-1][1] == ("sound:cbgw-guidance/_tts/w",)


async def test_the_adapter_fills_digits_in_the_merchants_language_and_skips_a_failure(
        ) -> None:
    services = MemoryIvrServices()                        # nothing can be rendered
    call = await answered(flow_of(SAY), services=services)
    await call.finish_prompt(CHANNEL)
    await call.keys(CHANNEL, "4071")
    assert services.said == [("商品番号ヨン、ゼロ、ナナ、イチ、4071個ですね。",
                              Language.JAPANESE)]
    assert CHANNEL in call.ari.named("hangup")            # on to next: the call goes on


async def test_a_filled_text_too_long_to_render_is_skipped_not_raised(tmp_path: Path
                                                                      ) -> None:
    services = IvrServices(speech=PromptCache(tmp_path))
    text = "あ" * (MAX_CHARS + 1)               # a short template, long values
    assert services.spoken(text, Language.JAPANESE) is None
    assert await services.speak(text, Language.JAPANESE) is None


def test_check_refuses_a_say_text_without_guidance_dir_or_its_engine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flow = flow_of(SAY)
    assert speech_problems(flow, Language.JAPANESE, MediaSettings()) == [
        "flow 't' speaks a text (a say node), but [media] guidance_dir (where the callback "
        "Asterisk reads it) is not set"]
    media = MediaSettings(guidance_dir=tmp_path)
    assert speech_problems(flow, Language.JAPANESE, media) == []
    monkeypatch.setenv("PATH", str(tmp_path))             # no engine on this PATH
    problems = speech_problems(flow, Language.JAPANESE, media)
    assert len(problems) == 1 and "speaks 'ja' text" in problems[0]
    assert "apt-get install open-jtalk" in problems[0]
    assert "espeak-ng" in speech_problems(flow_of(STATIC), Language.JAPANESE, media)[0]
    assert speech_problems(flow_of(BYE.replace("bye", "main")), Language.JAPANESE,
                            MediaSettings()) == []


def _step(state: IvrState, event: ivr.Event) -> tuple[IvrState, list[ivr.Command]]:
    return ivr.transition(state, event)
