"""The consultation queue end to end: a merchant that queues customers on busy lines, one
line, two customers. Real Asterisks, PostgreSQL, servers and SIPp (carrier A is both
customers' phones, the edge's ``operator`` phone the one advisor's, who stays on the line).

The first customer talks with the advisor; the second finds the one line in use: they
wait in the queue, hear their place (「ただいま一番目にお待ちいただいております」, the
merchant's language), then the music on hold; when the first customer's call ends, the
second is put through to the advisor. Asserted: SIP facts, the RTP reaching the phones
(the place: speech about the prompt's length; the music: the hold tune's notes), the
records and the advisor's events.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from demo.stack import Stack
from tests.e2e.test_consult_calls import (
    ANYONE,
    CONFIRM,
    SIP_ADVISOR,
    Admin,
    admin,
    events,
    record,
    stack,
    wait_for,
)
from tests.harness import asterisk as ast_harness
from tests.harness.rtp import RtpCapture, tone_share
from tests.harness.sipp import CARRIER_A_PORT, SipMessage, media_port_for

pytestmark = pytest.mark.e2e
__all__ = ["admin", "stack"]      # the fixtures, as the consultation tests set them up

#: the notes of the site's music on hold (deploy/asterisk/instance.py hold_music)
HOLD_NOTES = (523.25, 659.25, 783.99, 1046.5)
MUSIC_S = 4.0                     # the second customer hears the music this long at least
ANNOUNCE_S = 10                   # the merchant's queue_announce_s: the place again then


def _answered(m: SipMessage) -> bool:
    return m.direction == "sent" and m.status == 200 and m.cseq_method == "INVITE"


def _said_between_music(heard: list[tuple[float, float]]) -> list[float]:
    """How long each stretch of speech lasted that the music came before and after: the
    packets' times and shares of the hold tune's notes, in order. Music is a run of at
    least half a second of tune packets; speech, packets far from the tune."""
    blocks: list[tuple[float, float]] = []
    run: list[float] = []
    for t, share in (*heard, (float("inf"), 0.0)):
        if share >= 0.8:
            run.append(t)
        elif share < 0.5:
            if len(run) >= 25:
                blocks.append((run[0], run[-1]))
            run = []
    spans = []
    for (_, before), (after, _) in zip(blocks, blocks[1:], strict=False):
        speech = [t for t, share in heard if share < 0.5 and before < t < after]
        if speech:
            spans.append(speech[-1] - speech[0])
    return spans


async def test_the_second_customer_hears_their_place_then_music_and_gets_the_freed_line(
        stack: Stack, admin: Admin) -> None:
    await admin.call("PUT", "/v1/advisor-settings", {
        "ring_timeout_s": 20, "lines": 1, "misses_before_break": 3, "wrap_up_s": 0,
        "lines_busy": "queue", "queue_announce_s": ANNOUNCE_S})
    advisor_id = await admin.advisor("心春", "5353", SIP_ADVISOR)
    await admin.group("all", [advisor_id])
    first, second = "07011110041", "07011110042"
    await admin.fund(first)
    await admin.fund(second)
    place_s = ast_harness.prompt_seconds(stack.callback_site, "ja", "queue-place-1")
    async with stack.carriers(a="uas_answer_dtmf_long.xml", operator="uas_answer_forever.xml",
                              digits=CONFIRM + ANYONE) as roles:
        advisor = roles["operator"]
        await asyncio.to_thread(stack.customer_call(first).wait, 40)
        await wait_for(advisor, _answered, 60)             # the one line is in use
        wall_minus_monotonic = time.time() - time.monotonic()
        with RtpCapture("127.0.0.1", media_port_for(CARRIER_A_PORT)) as to_phones:
            await asyncio.to_thread(stack.customer_call(second).wait, 40)
            await stack.wait_for_row("callback", "SELECT 1 FROM advisor_queue", timeout_s=60)
            queued = time.monotonic()
            await asyncio.sleep(ANNOUNCE_S + place_s + MUSIC_S + 1)
            first_leg = await stack.wait_for_row(
                "callback", "SELECT channel_id FROM callback_attempts WHERE leg = 'customer' "
                "AND answered AND endpoint LIKE '%7011110041%'")
            async with stack.callback_site.client() as ari:   # the first customer's call ends
                await ari.hangup(first_leg["channel_id"])
            freed = time.monotonic()
            invites = advisor.invites_received()
            second_ok = await wait_for(advisor, lambda m: _answered(m) and m.call_id
                                       != invites[0].call_id, 30)
        second_leg = await stack.wait_for_row(
            "callback", "SELECT channel_id FROM callback_attempts WHERE leg = 'customer' "
            "AND answered AND endpoint LIKE '%7011110042%'")
        async with stack.callback_site.client() as ari:
            await ari.hangup(second_leg["channel_id"])
        first_made = await record(stack, "+817011110041")
        second_made = await record(stack, "+817011110042")
        rung = advisor.invites_received()
    # while queued: the place said on entering (after the connect prompt), then the hold
    # tune; the place said again after the merchant's interval, between stretches of it
    heard = [(t, tone_share(p, HOLD_NOTES)) for t, p in to_phones.audible
             if queued - 1 <= t <= freed]
    speech = [t for t, share in heard if share < 0.5]
    assert speech and speech[0] <= queued + 1.5, "the place is said on entering"
    said = _said_between_music(heard)
    assert len(said) == 1 and place_s - 0.6 <= said[0] <= place_s + 0.6, (said, place_s)
    music = [t for t, share in heard if share >= 0.8]
    assert len([t for t in music if t > speech[-1]]) >= 0.8 * MUSIC_S / 0.02
    # put through once the line was free: the advisor's second INVITE came after it
    assert len(rung) == 2
    assert rung[1].at.timestamp() - wall_minus_monotonic >= freed - 0.5
    assert second_ok.at >= rung[1].at
    assert first_made["end_reason"] == "customer_hangup"
    assert second_made["advisor_id"] == advisor_id and second_made["answered_at"] is not None
    assert [r["outcome"] for r in second_made["rings"]] == ["answered"]
    assert [e for e, _ in await events(stack, advisor_id)][:6] == [
        "online", "offered", "answered", "ended", "offered", "answered"]
    assert await stack.fetch("callback", "SELECT 1 FROM advisor_queue") == []
