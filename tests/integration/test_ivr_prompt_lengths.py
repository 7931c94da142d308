"""The rendered length of the prompts that must fit a bound, by the real engines.

In answer mode the edge answers, plays ``received`` and hangs up when
``FlowTimings.answer_guard_s`` runs out (4.5 s after the answer, under the 5 s cap on
time on the line): a greeting longer than the guard less the time from the answer to the
first sound is cut. The digits a ``digits:`` read-back plays one after another must be a
digit's length, not a digit wrapped in the engine's second of silence.
"""

from __future__ import annotations

import wave
from pathlib import Path

import pytest

from edge_server.flow_messages import PROMPT_RECEIVED, FlowTimings
from ivr_platform.prompts import DIGIT_PROMPTS, SYSTEM_PROMPTS
from ivr_platform.tts import PromptCache
from shared.language import Language

#: from the Answer (when the guard starts) to the prompt's first packet: the answer's
#: round trip and the playback's start, with room for a loaded machine
ANSWER_TO_SOUND_S = 0.5
#: a spoken Japanese digit (キュウ, the longest) with the render's short lead-in and tail
DIGIT_MAX_S = 0.6


def seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


@pytest.mark.parametrize("language", list(Language))
async def test_the_answer_mode_greeting_fits_the_answer_guard(
        tmp_path: Path, language: Language) -> None:
    name = PROMPT_RECEIVED.removeprefix("sound:cbgw/")
    path = await PromptCache(tmp_path).get(SYSTEM_PROMPTS[name].text(language), language)
    bound = FlowTimings().answer_guard_s - ANSWER_TO_SOUND_S
    assert seconds(path) <= bound, (
        f"{language.value} {name!r} plays {seconds(path):.2f} s, cut after {bound} s")


async def test_japanese_digits_are_rendered_each_a_digit_long(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path)
    digits = DIGIT_PROMPTS[Language.JAPANESE]
    assert sorted(digits) == [str(d) for d in range(10)]
    lengths = {d: seconds(await cache.get(text, Language.JAPANESE))
               for d, text in digits.items()}
    assert all(0.15 <= s <= DIGIT_MAX_S for s in lengths.values()), lengths
