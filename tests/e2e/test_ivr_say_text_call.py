"""A call-back round through a ``say`` node speaking a text template, end to end: real
Asterisks, PostgreSQL, both servers as ``serve`` processes, SIPp as the phones.

The merchant's stored flow gathers a quantity, then says 「ご注文は{qty:digits}個ですね。」:
the callback site renders the filled text with Open JTalk into the guidance library's
``_tts`` while the call waits (not rendered before: its file is removed first), and the
customer hears it after the digits as RTP for as long as the render sounds (±0.3 s); the
request data reaches the edge as any flow's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from demo.stack import MerchantOptions, Stack
from ivr_platform.audio import wav_seconds
from ivr_platform.speech import spoken_text
from ivr_platform.tts import PromptCache
from shared.language import Language
from tests import prom
from tests.e2e.test_callback_stored_flows import call_api
from tests.e2e.test_ivr_platform_call import (
    audible_seconds,
    keyed_call,
    sounding,
    windows,
)
from tests.e2e.test_loop_callback import scrape
from tests.harness.asterisk import prompt_seconds, sounds_dir

#: a stack waits for the machine's stack lock, and its setup counts against the timeout
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

QTY = "12"
FLOW = """
name = "say-qty"
start = "confirm_callback"
confirm_callback = "confirm_callback"

[nodes.confirm_callback]
type = "confirm"
prompt = ["sound:cbgw/confirm-callback"]
yes = "qty"
no = "goodbye"
timeout_s = 15
retries = 0
on_fail = "goodbye"

[nodes.qty]
type = "digits"
prompt = ["sound:cbgw/enter-item"]
field = "qty"
max_length = 4
terminator = "#"
timeout_s = 10
on_fail = "goodbye"
next = "submit"

[nodes.submit]
type = "submit"
category = "order"
fields = ["qty"]
next = "tell"

[nodes.tell]
type = "say"
text = "ご注文は{qty:digits}個ですね。"
next = "bye"

[nodes.bye]
type = "hangup"

[nodes.goodbye]
type = "hangup"
prompt = ["sound:cbgw/goodbye"]
"""
#: what a μ-law packet the RTP capture counts as sounding holds (``rtp._sounds``: a
#: sample out of G.711's quietest segment, 16-bit magnitude above 31 x 4)
ULAW_QUIETEST = 124


async def test_a_say_text_filled_with_the_callers_digits_is_rendered_and_heard(
        tmp_path: Path) -> None:
    async with Stack(tmp_path / "stack", merchants=(MerchantOptions(pre_callback_delay_s="0"),),
                     db_prefix="cbgw_e2e_say", log_level="DEBUG") as stack:
        site = stack.callback_site
        # the text as the site fills it, rendered here by the same engine and voice: the
        # same key, so the name of the file the site renders
        text = spoken_text((("ご注文は", False), (QTY, True), ("個ですね。", False)),
                           Language.JAPANESE)
        mine = await PromptCache(tmp_path / "tts").get(text, Language.JAPANESE)
        library, _ = sounds_dir("callback", "cbgw-guidance", site.root)
        rendered = library / "_tts" / mine.name
        rendered.unlink(missing_ok=True)        # a miss: rendered during the call

        await call_api(stack, "POST", "/v1/ivr/flows?file=say-qty.toml", data=FLOW)
        assert (await call_api(stack, "POST", "/v1/ivr/flows/1/activate"))["active"] is True
        steps = [(prompt_seconds(site, "ja", "confirm-callback"), "1"),
                 (prompt_seconds(site, "ja", "enter-item"), f"{QTY}#")]
        rtp, _, request = await keyed_call(stack, steps)
        metrics = await scrape(stack, "callback")

    # The site rendered the filled text during the call: as long as this render of it
    # (sox dithers, so not the same bytes).
    assert wav_seconds(rendered) == wav_seconds(mine)
    # After the digits the customer heard it, for as long as it sounds.
    expected = audible_seconds(rendered.read_bytes(), floor=ULAW_QUIETEST)
    heard = sounding(rtp, *windows(rtp, [step for _, step in steps])[-1])
    assert heard, "nothing was heard after the digits"
    assert abs((heard[-1] - heard[0]) - expected) <= 0.3, (heard[-1] - heard[0], expected)
    # The request data reached the edge as any flow's.
    assert (request["category"], request["fields"]) == ("order", {"qty": QTY})
    # The site's /metrics counted the say node, the cache's miss and the render.
    assert prom.scraped(metrics, "cbgw_ivr_nodes_total", merchant="acme", verb="say") == 1
    assert prom.scraped(metrics, "cbgw_ivr_tts_lookups_total", language="ja",
                        result="miss") == 1
    assert prom.scraped(metrics, "cbgw_ivr_tts_lookups_total", language="ja",
                        result="hit") == 0
    assert prom.scraped(metrics, "cbgw_ivr_tts_render_seconds_count", language="ja",
                        result="ok") == 1
