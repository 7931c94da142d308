"""Business hours on the wire: real Asterisks, PostgreSQL, both servers, SIPp.

Two merchants whose hours are set relative to the test's own clock (never waiting for
an hour to come): ``shut`` has a closed special day around today, ``open`` a special day
open all day. A call to ``shut`` gets 183, the closed message saying when it opens (its
length on the wire is the rendered sentence's) and 486, never a 200 OK; nothing is queued
and no carrier sees a call-back INVITE. A call to ``open`` takes the normal loop.
"""

from __future__ import annotations

import asyncio
import wave
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from demo.stack import CALL_CENTER_TOKEN, CLOSED_PROMPTS, MerchantOptions, Stack
from ivr_platform.hours import TOKYO, BusinessHours, SpecialDay, Window
from ivr_platform.hours_speech import closed_announcement
from ivr_platform.speech import reading
from ivr_platform.tts import PromptCache
from shared.language import Language
from shared.phone import normalise
from tests import prom
from tests.harness.asterisk import prompt_seconds, sounds_dir
from tests.harness.rtp import RtpCapture
from tests.harness.sipp import CUSTOMER_IP, CUSTOMER_PORT, SipMessage, SippRole, media_port_for

ORDER_KEYS = "1" + "1" + "1234#" + "2#" + "1"   # accept call-back, order, item, qty, confirm
TODAY = datetime.now(UTC).astimezone(TOKYO).date()
WEEKLY = ("09:00-18:00",)
# closed from yesterday to the day after tomorrow (Tokyo): a test running across midnight
# is still closed, and opens on a day after tomorrow ("次の営業は、…", not "明日は、…")
SHUT_UNTIL = TODAY + timedelta(days=2)
SHUT_HOURS = BusinessHours(
    weekly=(tuple(Window.parse(w) for w in WEEKLY),) * 7, holidays_closed=False,
    special=(SpecialDay(TODAY - timedelta(days=1), SHUT_UNTIL, (), "臨時休業"),))


def hours_toml(special: str, holidays: str = "weekly") -> str:
    days = "".join(f'{day} = {list(WEEKLY)!r}\n'.replace("'", '"') for day in (
        "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"))
    return f'[merchants.hours]\n{days}public_holidays = "{holidays}"\n' \
           f'outside_hours = "drop"\n{special}'


def special(first: date, last: date, body: str) -> str:
    return f"[[merchants.hours.special]]\ndate = {first}\nuntil = {last}\n{body}\n"


SHUT = MerchantOptions(id="shut", name="Shut Today", number="0120111222",
                       pre_callback_delay_s="0", api_token="shut-token",
                       hours=hours_toml(special(TODAY - timedelta(days=1), SHUT_UNTIL,
                                                'closed = true\nnote = "臨時休業"')))
OPEN = MerchantOptions(pre_callback_delay_s="0",
                       hours=hours_toml(special(TODAY - timedelta(days=1),
                                                TODAY + timedelta(days=1),
                                                'windows = ["00:00-24:00"]')))

PCMU = 0

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with Stack(tmp_path_factory.mktemp("hours"), merchants=(OPEN, SHUT),
                     db_prefix="cbgw_e2e_hours", log_level="DEBUG") as running:
        yield running


def first(messages: list[SipMessage], status: int) -> SipMessage:
    return next(m for m in messages if m.status == status)


async def finished(role: SippRole, within_s: float = 40) -> None:
    await asyncio.to_thread(role.wait, within_s)


async def rendered(stack: Stack, text: str, within_s: float = 30) -> Path:
    """The closed sentence's WAV, once the edge has rendered it ahead."""
    host, _ = sounds_dir("edge", CLOSED_PROMPTS, stack.edge_site.root)
    cache = PromptCache(host)
    for _ in range(int(within_s / 0.1)):
        path = cache.cached(text, Language.JAPANESE)
        if path is not None:
            return path
        await asyncio.sleep(0.1)
    raise AssertionError(f"the edge did not render {text!r} ahead:\n{stack.log_tail('edge')}")


async def edge_metrics(stack: Stack) -> str:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=stack.client_ssl())) as session, \
            session.get(f"{stack.edge_url}/metrics") as resp:
        return await resp.text()


async def closed_call(stack: Stack, merchant: MerchantOptions, hours: BusinessHours,
                      now: datetime, caller: str) -> tuple[str, asyncpg.Record]:
    """Call ``merchant``, closed at ``now`` by ``hours``, and check what the caller is
    told and that nothing follows: 183, the closed sentence (its rendered length, on the
    wire as RTP all along), 486 and never a 200 OK; the edge's call ``closed`` /
    ``outside_hours`` and counted once (and once by why it is closed); nothing in the
    outbox or queued at the callback site, and no carrier sees a call-back INVITE. The
    sentence and the edge's call row."""
    say = closed_announcement(hours, now, reading(Language.JAPANESE))
    assert say is not None
    wav = await rendered(stack, say)
    with wave.open(str(wav), "rb") as w:
        sentence_s = w.getnframes() / w.getframerate()
    before = await edge_metrics(stack)
    async with stack.carriers(digits=ORDER_KEYS) as roles:
        with RtpCapture(CUSTOMER_IP, media_port_for(CUSTOMER_PORT)) as rtp:
            phone = stack.customer_call(caller, dialled=merchant.number)
            await finished(phone)
        call = await stack.wait_for_row(
            "edge", "SELECT * FROM edge_calls WHERE merchant_id = $1", merchant.id)
        await asyncio.sleep(5)     # a call-back (pre-callback delay 0) would be ringing now
        invites = [m for role in (roles["carrier-a"], roles["carrier-b"])
                   for m in role.invites_received()]

    statuses = phone.statuses_received()
    assert 183 in statuses and statuses[-1] == 486, statuses
    assert 200 not in statuses, f"the edge answered the toll-free call: {statuses}"
    messages = phone.dialog_messages()
    assert first(messages, 183).has_sdp
    heard = (first(messages, 486).at - first(messages, 183).at).total_seconds()
    fixed = prompt_seconds(stack.edge_site, "ja", "closed")
    assert abs(heard - sentence_s) <= 0.5 < abs(heard - fixed), (heard, sentence_s, fixed)
    # The sentence reached the phone as RTP (PCMU, one packet per 20 ms) all along.
    pcmu = sum(1 for _, payload_type in rtp.packets if payload_type == PCMU)
    assert abs(rtp.seconds(PCMU) - sentence_s) <= 0.5, (rtp.seconds(PCMU), sentence_s)
    assert pcmu >= 0.9 * sentence_s / 0.020, (pcmu, sentence_s)

    assert (call["state"], call["outcome"]) == ("closed", "outside_hours")
    assert call["caller"] == str(normalise(caller)) and call["message_id"] is None
    assert not await stack.fetch("edge", "SELECT 1 FROM outbox WHERE merchant_id = $1",
                                 merchant.id)
    assert not await stack.fetch(
        "callback", "SELECT 1 FROM callback_requests WHERE merchant_id = $1", merchant.id)
    assert not invites, [str(m) for m in invites]

    after = await edge_metrics(stack)
    labels = {"merchant": merchant.id, "outcome": "closed", "reason": "outside_hours"}
    assert prom.scraped(after, "cbgw_edge_calls_total", **labels) - \
        prom.scraped(before, "cbgw_edge_calls_total", **labels) == 1
    why = {"merchant": merchant.id, "status": hours.status(now).status.value}
    assert prom.scraped(after, "cbgw_edge_closed_calls_total", **why) - \
        prom.scraped(before, "cbgw_edge_closed_calls_total", **why) == 1
    return say, call


async def test_a_closed_merchants_caller_hears_when_it_opens_and_is_never_called_back(
        stack: Stack) -> None:
    say, call = await closed_call(stack, SHUT, SHUT_HOURS, datetime.now(UTC), "09011112222")
    assert say.startswith("本日は休業日です。次の営業は、")
    assert call["detail"].startswith("special day: 臨時休業; opens ")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=stack.client_ssl())) as session, session.get(
            f"{stack.edge_url}/v1/calls", headers={"Authorization": "Bearer shut-token"}
            ) as resp:
        listed = (await resp.json())["items"]
    assert [(c["state"], c["outcome"]) for c in listed] == [("closed", "outside_hours")]


async def test_an_open_merchants_caller_is_called_back_as_usual(stack: Stack) -> None:
    async with stack.carriers(digits=ORDER_KEYS) as roles:
        phone = stack.customer_call("09033334444", dialled=OPEN.number)
        await finished(phone)
        call = await stack.wait_for_row(
            "edge", "SELECT * FROM edge_calls WHERE merchant_id = 'acme' "
            "AND state = 'released'")
        cdr = await stack.wait_for_row(
            "edge", "SELECT * FROM cdrs WHERE edge_call_id = $1 AND disposition = 'answered'",
            call["edge_call_id"], timeout_s=60)
        answered = roles["carrier-a"].invites_received()
    statuses = phone.statuses_received()
    assert 183 in statuses and statuses[-1] == 486 and 200 not in statuses
    heard = (first(phone.dialog_messages(), 486).at
             - first(phone.dialog_messages(), 183).at).total_seconds()
    assert abs(heard - prompt_seconds(stack.edge_site, "ja", "received")) <= 0.5
    assert answered and answered[0].ruri_user == "819033334444"
    assert cdr["carrier"] == "carrier-a"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=stack.client_ssl())) as session, session.get(
            f"{stack.edge_url}/v1/calls",
            headers={"Authorization": f"Bearer {CALL_CENTER_TOKEN}"}) as resp:
        listed = (await resp.json())["items"]
    assert [(c["state"], c["outcome"]) for c in listed] == [("released", "callback_released")]
