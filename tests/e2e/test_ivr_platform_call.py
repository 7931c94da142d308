"""The Japanese IVR platform end to end: real Asterisks, PostgreSQL, both servers as
``serve`` processes, SIPp as the phones, and local servers speaking Slack's, Teams',
Google Chat's and LINE WORKS' APIs and SMTP.

* On a public holiday (the edge on a fixed clock: Monday 11 January 2027, 成人の日, 11:00
  in Tokyo) a caller hears the closed message as early media and nothing is queued
  (:func:`tests.e2e.test_edge_hours_loop.closed_call`).
* Inside hours the call-back runs the merchant's stored flow: a nested menu (the main
  menu, then a sub-menu that is the merchant's own uploaded Japanese guidance), a digits
  gather read back and confirmed, a message recorded after the beep (the phone sends 3 s
  of tone, then #), an SMS to the caller; every prompt reaches the caller as RTP for as
  long as it plays (each keyed only once its prompt has ended, so none is cut short). The
  recording is as long as what the phone sent between the beep and its # (±0.5 s), its
  sound the tone's length; the SMS reaches a local server speaking Twilio's API, counted as
  Twilio counts it; the request reaches the edge once, and its notifications (the request,
  the message) each of the merchant's channels once, with the caller's company and name
  from the phonebook and a signed link that fetches the recording.
"""

from __future__ import annotations

import asyncio
import io
import re
import struct
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from demo.stack import CALLBACK_HTTP_PORT, MerchantOptions, Stack
from ivr_platform.audio import wav_seconds
from ivr_platform.hours import TOKYO, BusinessHours, Window
from ivr_platform.tts import PromptCache
from shared.language import Language
from tests import prom
from tests.e2e.test_callback_stored_flows import call_api
from tests.e2e.test_edge_hours_loop import WEEKLY, closed_call, hours_toml
from tests.e2e.test_loop_callback import finished, last_call_id, new_edge_call, scrape
from tests.harness.asterisk import (
    AsteriskSite,
    instance_tool,
    prompt_seconds,
    recordings_spool,
    sounds_dir,
)
from tests.harness.clock import fixed_clock
from tests.harness.rtp import RtpCapture
from tests.harness.sipp import CARRIER_A_PORT, media_port_for
from tests.harness.smtp import Inbox, smtp_server
from tests.integration.fake_chat import (
    CHAT_KEY,
    CHAT_PATH,
    CHAT_TOKEN,
    SLACK_PATH,
    TEAMS_PATH,
    FakeChat,
    FakeLineWorks,
)
from tests.integration.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio

#: a stack waits for the machine's stack lock, and its setup counts against the timeout
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ServerFactory = Callable[..., Awaitable[TestServer]]
CUSTOMER = "09012345678"

# --- outside hours: a public holiday on the edge's fixed clock ---------------------------

SEIJIN_NO_HI = datetime(2027, 1, 11, 11, 0, tzinfo=TOKYO)      # a Monday, 成人の日
HOLIDAY_SHOP = MerchantOptions(id="holiday", name="Holiday Closed", number="0120111333",
                               pre_callback_delay_s="0", api_token="holiday-token",
                               hours=hours_toml("", holidays="closed"))
HOLIDAY_HOURS = BusinessHours(weekly=(tuple(Window.parse(w) for w in WEEKLY),) * 7,
                              holidays_closed=True)


async def test_on_a_public_holiday_the_caller_hears_the_closed_message_and_nothing_is_queued(
        tmp_path: Path) -> None:
    async with Stack(tmp_path, merchants=(HOLIDAY_SHOP,), db_prefix="cbgw_e2e_holiday",
                     server_env={"edge": fixed_clock(SEIJIN_NO_HI)}) as stack:
        say, call = await closed_call(stack, HOLIDAY_SHOP, HOLIDAY_HOURS, SEIJIN_NO_HI,
                                      "09055556666")
    assert say == "本日は祝日のため、休業しております。明日は、午前九時から営業いたします。"
    assert call["detail"].startswith("holiday: 成人の日"), call["detail"]
    # the edge's clock, not this machine's, decided: the call is stamped on the holiday
    received = call["received_at"].astimezone(TOKYO)
    assert received.date() == SEIJIN_NO_HI.date(), received
    assert received - SEIJIN_NO_HI < timedelta(minutes=5), received


# --- inside hours: the stored flow, RTP of each prompt, recording, SMS, notifications -----

SUB_MENU = "新しいご注文は2を、前回と同じご注文は3を押してください。"
LEAVE_MESSAGE = "発信音のあとに、ご要望をお話しください。最後にシャープを押してください。"
SMS_TEXT = ("ご注文ありがとうございます。商品コード{item_code}のご注文を承りました。"
            "発送の準備ができましたら、あらためてショートメッセージでお知らせいたします。"
            "ご不明な点はお電話でお問い合わせください。")
SENDER = "+815012345678"
FLOW = """
name = "platform"
start = "confirm_callback"
confirm_callback = "confirm_callback"

[nodes.confirm_callback]
type = "confirm"
prompt = ["sound:cbgw/confirm-callback"]
yes = "main"
no = "goodbye"
timeout_s = 15
retries = 0
on_fail = "goodbye"

[nodes.main]
type = "menu"
prompt = ["sound:cbgw/welcome-menu"]
choices = { "1" = "order_menu", "0" = "goodbye" }
field = "section"
timeout_s = 10
retries = 1
on_fail = "goodbye"

[nodes.order_menu]
type = "menu"
prompt = ["sound:cbgw-guidance/acme/order-menu"]
choices = { "2" = "item_code", "3" = "goodbye" }
field = "order_kind"
timeout_s = 10
retries = 1
on_fail = "goodbye"

[nodes.item_code]
type = "digits"
prompt = ["sound:cbgw/enter-item"]
field = "item_code"
max_length = 12
terminator = "#"
timeout_s = 10
on_fail = "goodbye"
next = "readback"

[nodes.readback]
type = "readback"
prompt = ["sound:cbgw/you-entered"]
fields = ["item_code"]
labels = { item_code = ["sound:cbgw/item-code"] }
next = "confirm"

[nodes.confirm]
type = "confirm"
prompt = ["sound:cbgw/confirm"]
yes = "message"
no = "item_code"
timeout_s = 10
on_fail = "goodbye"

[nodes.message]
type = "record"
prompt = ["sound:cbgw-guidance/acme/leave-message"]
field = "message"
max_s = 30
silence_s = 0
beep = true
terminator = "#"
next = "submit"
on_fail = "goodbye"

[nodes.submit]
type = "submit"
category = "new_order"
fields = ["section", "order_kind", "item_code", "message"]
next = "text_me"

[nodes.text_me]
type = "sms"
to = "caller"
text = "SMS_TEXT"
next = "thanks"

[nodes.thanks]
type = "hangup"
prompt = ["sound:cbgw/thank-you"]

[nodes.goodbye]
type = "hangup"
prompt = ["sound:cbgw/goodbye"]
""".replace("SMS_TEXT", SMS_TEXT)
ITEM = "1234"
MESSAGE_MS = 3000            # the tone the phone sends as its message
#: after the call is answered a prompt starts within this; after a key, sooner
FIRST_PROMPT_WAIT_S = 3.0
PROMPT_WAIT_S = 1.5
_NOT_KEYS = re.compile(r"\[~?\d+\]")


def sound_seconds(site: AsteriskSite, language: str, *names: str) -> float:
    """How long the sounds ``names`` of ``language`` play on ``site`` (``ja/digits/1``,
    ``en/beep``: the files Asterisk finds, links followed inside its root)."""
    tool = instance_tool()
    total = 0.0
    for name in names:
        _, inner = sounds_dir(site.name, f"{language}/{name}.wav", site.root)
        total += wav_seconds(site.root / tool.resolve_in_root(site.root, inner).lstrip("/"))
    return total


def keyed(steps: list[tuple[float, str]]) -> str:
    """The caller's keys (``make_dtmf_pcap``'s script): each step's once the prompts before
    it (``seconds``) have played, with time to spare."""
    script = ""
    for index, (seconds, keys) in enumerate(steps):
        wait = FIRST_PROMPT_WAIT_S if index == 0 else PROMPT_WAIT_S
        script += f"[{round((seconds + wait) * 1000)}]{keys}"
    return script


def windows(rtp: RtpCapture, steps: list[str]) -> list[tuple[float, float]]:
    """Between one step's keys and the next step's (the first: before any key; the last:
    after every key): what the caller hears while the IVR waits for the next step."""
    pressed = iter(rtp.keys())
    edges = [float("-inf")]
    for step in steps:
        digits = [next(pressed) for _ in _NOT_KEYS.sub("", step)]
        edges += [digits[0][0], digits[-1][1]]
    edges.append(float("inf"))
    return list(zip(edges[::2], edges[1::2], strict=True))


def sounding(rtp: RtpCapture, start: float, end: float) -> list[float]:
    return [t for t in rtp.sounding if start < t < end]


def audible_seconds(wav: bytes, floor: int = 328) -> float:
    """From the first to the last sample louder than ``floor`` (by default -40 dBFS) of a
    16-bit mono WAV."""
    with wave.open(io.BytesIO(wav), "rb") as w:
        frames, rate = w.readframes(w.getnframes()), w.getframerate()
    loud = [i for i, (v,) in enumerate(struct.iter_unpack("<h", frames)) if abs(v) > floor]
    return (loud[-1] - loud[0]) / rate if loud else 0.0


class Providers:
    """The local servers a merchant's channels and the site's SMS provider point at."""

    def __init__(self, base: dict[str, str], chat: FakeChat, lineworks: FakeLineWorks,
                 key_file: Path, inbox: Inbox, smtp_port: int, twilio: FakeTwilio) -> None:
        self.base, self.chat, self.lineworks, self.twilio = base, chat, lineworks, twilio
        self.key_file, self.inbox, self.smtp_port = key_file, inbox, smtp_port

    def config(self, merchant: str) -> str:
        """``[sms]`` and the ``[[notify.channels]]`` tables: one of each kind."""
        lw, chat = self.lineworks, self.base["chat"]
        return f"""
[sms]
provider = "twilio"
account_sid = "{ACCOUNT_SID}"
auth_token = "{AUTH_TOKEN}"
base_url = "{self.base["twilio"]}"
sender = "{SENDER}"

[[notify.channels]]
merchant = "{merchant}"
name = "ops-slack"
kind = "slack"
url = "{chat}{SLACK_PATH}"

[[notify.channels]]
merchant = "{merchant}"
name = "ops-teams"
kind = "teams"
url = "{chat}{TEAMS_PATH}"

[[notify.channels]]
merchant = "{merchant}"
name = "ops-chat"
kind = "google_chat"
url = "{chat}{CHAT_PATH}?key={CHAT_KEY}&token={CHAT_TOKEN}"

[[notify.channels]]
merchant = "{merchant}"
name = "ops-lineworks"
kind = "lineworks"
client_id = "{lw.client_id}"
client_secret = "{lw.client_secret}"
service_account = "{lw.service_account}"
private_key_file = "{self.key_file}"
bot_id = "{lw.bot_id}"
channel_id = "{lw.channel_id}"
auth_url = "{self.base["lineworks"]}/oauth2/v2.0/token"
api_base = "{self.base["lineworks"]}/v1.0"

[[notify.channels]]
merchant = "{merchant}"
name = "ops-mail"
kind = "mail"
host = "127.0.0.1"
port = {self.smtp_port}
mail_from = "ivr@acme.example.jp"
mail_to = ["orders@acme.example.jp"]
"""

    def deliveries(self) -> dict[str, int]:
        return {"slack": len(self.chat.slack), "teams": len(self.chat.teams),
                "google_chat": len(self.chat.chat), "lineworks": len(self.lineworks.messages),
                "mail": len(self.inbox.messages)}


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    with smtp_server(inbox) as port:
        yield inbox, port


@pytest.fixture
async def providers(aiohttp_server: ServerFactory, smtp: tuple[Inbox, int],
                    tmp_path: Path) -> Providers:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "lineworks.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    chat, lineworks, twilio = FakeChat(), FakeLineWorks(key.public_key()), FakeTwilio()
    base = {name: str((await aiohttp_server(fake.app())).make_url("")).rstrip("/")
            for name, fake in (("chat", chat), ("lineworks", lineworks), ("twilio", twilio))}
    return Providers(base, chat, lineworks, key_file, *smtp, twilio)


@pytest.fixture
async def stack(tmp_path: Path, providers: Providers) -> AsyncIterator[Stack]:
    recorded = {"CALLBACK__MEDIA__ASTERISK_RECORDINGS_DIR": str(recordings_spool("callback")),
                "CALLBACK__MEDIA__PUBLIC_URL": f"https://127.0.0.1:{CALLBACK_HTTP_PORT}"}
    async with Stack(tmp_path / "stack", merchants=(MerchantOptions(pre_callback_delay_s="0"),),
                     db_prefix="cbgw_e2e_platform", log_level="DEBUG",
                     server_env={"callback": recorded},
                     callback_config=providers.config("acme")) as running:
        yield running


async def guidance(stack: Stack, tmp_path: Path, name: str, text: str) -> float:
    """Upload ``text`` spoken by Open JTalk as the merchant's guidance ``name``; how long
    it plays."""
    spoken = await PromptCache(tmp_path / "tts").get(text, Language.JAPANESE)
    uploaded = await call_api(stack, "PUT", f"/v1/media/guidance/{name}",
                              data=spoken.read_bytes())
    assert uploaded["media"] == f"sound:cbgw-guidance/acme/{name}"
    return float(uploaded["seconds"])


async def fetch(stack: Stack, url: str) -> bytes:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=stack.client_ssl())) as session, session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.read()


async def keyed_call(stack: Stack, steps: list[tuple[float, str]]
                     ) -> tuple[RtpCapture, asyncpg.Record, asyncpg.Record]:
    """A customer's call, called back, keying ``steps`` (:func:`keyed`): what the phone
    was sent and what it sent (RTP), the edge's call and its request, once the call-back's BYE
    came."""
    async with stack.carriers(digits=keyed(steps)) as roles:
        before = await last_call_id(stack)
        with RtpCapture("127.0.0.1", media_port_for(CARRIER_A_PORT)) as rtp:
            await finished(stack.customer_call(CUSTOMER))
            call = await new_edge_call(stack, before)
            request = await stack.wait_for_row(
                "edge", "SELECT * FROM requests WHERE edge_call_id = $1",
                call["edge_call_id"], timeout_s=90)
            await asyncio.to_thread(roles["carrier-a"].wait_for,
                                    lambda m: m.method == "BYE", 60, "the call-back's BYE")
    return rtp, call, request


async def test_inside_hours_the_stored_flow_runs_every_prompt_is_heard_and_notified(
        stack: Stack, providers: Providers, tmp_path: Path) -> None:
    order_menu = await guidance(stack, tmp_path, "order-menu", SUB_MENU)
    leave_message = await guidance(stack, tmp_path, "leave-message", LEAVE_MESSAGE)
    await call_api(stack, "POST", "/v1/ivr/flows?file=platform.toml", data=FLOW)
    assert (await call_api(stack, "POST", "/v1/ivr/flows/1/activate"))["active"] is True
    await call_api(stack, "PUT", f"/v1/phonebook/{CUSTOMER}",
                   json={"company": "株式会社サンプル", "name": "山田太郎"})

    site = stack.callback_site
    beep = sound_seconds(site, "en", "beep")

    def system(*names: str) -> float:
        return sum(prompt_seconds(site, "ja", n) for n in names)

    # (what plays before the step, the step: keys, or the message after the beep and #)
    steps = [
        (system("confirm-callback"), "1"),
        (system("welcome-menu"), "1"),
        (order_menu, "2"),
        (system("enter-item"), f"{ITEM}#"),
        (system("you-entered", "item-code", "confirm") + sound_seconds(site, "ja", *(
            f"digits/{d}" for d in ITEM)), "1"),
        (leave_message + beep, f"[~{MESSAGE_MS}]#"),
    ]
    prompts = [seconds for seconds, _ in steps] + [system("thank-you")]
    rtp, call, request = await keyed_call(stack, steps)

    # Every key reached Asterisk, each after its prompt, and each prompt was heard whole.
    waits = windows(rtp, [step for _, step in steps])
    spans = [(s[-1] - s[0]) if (s := sounding(rtp, *w)) else 0.0 for w in waits]
    for span, expected in zip(spans, prompts, strict=True):
        assert abs(span - expected) <= 0.5, (spans, prompts)

    # The request reached the edge once: both menus' choices, the digits, the recording.
    recording_id = request["fields"]["message"]
    assert (request["category"], request["fields"]) == (
        "new_order", {"section": "1", "order_kind": "2", "item_code": ITEM,
                      "message": recording_id})
    rounds = await stack.fetch(
        "callback", """SELECT f.flow_name, f.version FROM callback_round_flows f
                       JOIN callback_requests r USING (callback_id)
                       WHERE r.edge_call_id = $1""", call["edge_call_id"])
    assert [(r["flow_name"], r["version"]) for r in rounds] == [("platform", 1)]

    # The recording is as long as what the phone sent after the beep until its #, and its
    # sound is the tone's: fetched through the signed link of GET /v1/recordings.
    [listed] = (await call_api(stack, "GET",
                               f"/v1/recordings?edge_call_id={call['edge_call_id']}"))["items"]
    assert listed["id"] == recording_id
    audio = await fetch(stack, listed["link"]["url"])
    with wave.open(io.BytesIO(audio), "rb") as w:
        recorded_s = w.getnframes() / w.getframerate()
    assert listed["duration_ms"] == round(recorded_s * 1000), listed
    beep_ended = sounding(rtp, *waits[-2])[-1]      # the prompt and beep before the #
    hash_pressed = rtp.keys()[-1][0]
    assert abs(recorded_s - (hash_pressed - beep_ended)) <= 0.5, (recorded_s, beep_ended,
                                                                  hash_pressed)
    assert abs(audible_seconds(audio) - MESSAGE_MS / 1000) <= 0.5, audible_seconds(audio)

    # The SMS reached the provider once, for the caller, counted as the provider counts it.
    text = SMS_TEXT.format(item_code=ITEM)
    [sent] = providers.twilio.messages.values()
    assert (sent["to"], sent["from"], sent["body"]) == ("+81" + CUSTOMER[1:], SENDER, text)
    assert sent["num_segments"] == "2"          # 93 characters of UCS-2: 2 × 67
    [row] = await stack.fetch("callback", "SELECT * FROM sms_messages")
    assert (row["merchant_id"], row["to_number"], row["body"], row["encoding"],
            row["segments"], row["provider_id"]) == (
        "acme", sent["to"], text, "ucs2", 2, sent["sid"])

    # Its notifications reached every channel once: the request and the message.
    await stack.wait_for_row(
        "callback", "SELECT 1 FROM notification_deliveries WHERE state = 'delivered' "
        "HAVING count(*) = 10", timeout_s=60)
    deliveries = await stack.fetch(
        "callback", "SELECT n.event, d.channel, d.state, d.attempts FROM notifications n "
        "JOIN notification_deliveries d ON d.notification_id = n.id "
        "ORDER BY n.event, d.channel")
    channels = ("ops-chat", "ops-lineworks", "ops-mail", "ops-slack", "ops-teams")
    assert [tuple(d) for d in deliveries] == [
        (event, channel, "delivered", 1)
        for event in ("message_recorded", "request_collected") for channel in channels]
    assert providers.deliveries() == {"slack": 2, "teams": 2, "google_chat": 2,
                                      "lineworks": 2, "mail": 2}
    title = "着信通知 090-1234-5678 株式会社サンプル 山田太郎"
    slack = next(m for m in providers.chat.slack
                 if f"*item_code*\n{ITEM}" in [f["text"] for f in m["blocks"][1]["fields"]])
    assert slack["blocks"][0]["text"]["text"] == title
    link = slack["blocks"][-1]["text"]["text"]          # <url|録音を聞く>
    assert await fetch(stack, link[1:].partition("|")[0]) == audio
    teams = [m["attachments"][0]["content"] for m in providers.chat.teams]
    assert all(card["body"][0]["text"].startswith(title) for card in teams)
    assert [f["value"] for card in teams for f in card["body"][1]["facts"]
            if f["title"] == "item_code"] == [ITEM]
    assert all(m["text"].splitlines()[0] == f"*{title}*" for m in providers.chat.chat)
    assert sum(f"item_code: {ITEM}" in body["content"]["text"].splitlines()
               for _, body in providers.lineworks.messages) == 1
    assert {m["Subject"] for m in providers.inbox.messages} == {title}
    assert {m["To"] for m in providers.inbox.messages} == {"orders@acme.example.jp"}
    # ... and the edge still has the request once
    assert len(await stack.fetch("edge", "SELECT 1 FROM requests WHERE edge_call_id = $1",
                                 call["edge_call_id"])) == 1

    # The callback site's /metrics counted it: the nodes entered by verb, the recording,
    # the SMS and its segments, each notification by its channel's kind.
    metrics = await scrape(stack, "callback")
    entered = {verb: prom.scraped(metrics, "cbgw_ivr_nodes_total", merchant="acme", verb=verb)
               for verb in ("confirm", "menu", "digits", "readback", "record", "submit",
                            "sms", "hangup")}
    assert entered == {"confirm": 2, "menu": 2, "digits": 1, "readback": 1, "record": 1,
                       "submit": 1, "sms": 1, "hangup": 1}, entered
    assert prom.scraped(metrics, "cbgw_ivr_retries_total", merchant="acme", verb="menu",
                        reason="invalid") == 0
    assert prom.scraped(metrics, "cbgw_ivr_recordings_total", merchant="acme",
                        result="stored") == 1
    assert prom.scraped(metrics, "cbgw_ivr_sms_total", merchant="acme", result="sent") == 1
    assert prom.scraped(metrics, "cbgw_ivr_sms_segments_total", merchant="acme") == 2
    assert {kind: prom.scraped(metrics, "cbgw_ivr_notifications_total", merchant="acme",
                               kind=kind, result="delivered")
            for kind in providers.deliveries()} == providers.deliveries()
