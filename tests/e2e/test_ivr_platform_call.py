"""The Japanese IVR platform end to end: real Asterisks, PostgreSQL, both servers as
``serve`` processes, SIPp as the phones, and local servers speaking Slack's, Teams',
Google Chat's and LINE WORKS' APIs and SMTP.

* On a public holiday (the edge on a fixed clock: Monday 11 January 2027, 成人の日, 11:00
  in Tokyo) a caller hears the closed message as early media and nothing is queued
  (:func:`tests.e2e.test_edge_hours_loop.closed_call`).
* Inside hours the call-back runs the merchant's stored flow: a nested menu (the main
  menu, then a sub-menu that is the merchant's own uploaded Japanese guidance), a digits
  gather read back and confirmed; every prompt reaches the caller as RTP for as long as it
  plays (each keyed only once its prompt has ended, so none is cut short). The request
  reaches the edge once, and its notification each of the merchant's channels once, with
  the caller's company and name from the phonebook.
"""

from __future__ import annotations

import asyncio
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from demo.stack import MerchantOptions, Stack
from ivr_platform.hours import TOKYO, BusinessHours, Window
from ivr_platform.tts import PromptCache
from shared.language import Language
from tests.e2e.test_callback_stored_flows import call_api
from tests.e2e.test_edge_hours_loop import WEEKLY, closed_call, hours_toml
from tests.e2e.test_loop_callback import finished, last_call_id, new_edge_call
from tests.harness.asterisk import AsteriskSite, prompt_seconds, sounds_dir
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

pytestmark = pytest.mark.e2e

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


# --- inside hours: the stored flow, RTP of each prompt, request and notifications ---------

SUB_MENU = "新しいご注文は2を、前回と同じご注文は3を押してください。"
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
timeout_s = 10
retries = 1
on_fail = "goodbye"

[nodes.order_menu]
type = "menu"
prompt = ["sound:cbgw-guidance/acme/order-menu"]
choices = { "2" = "item_code", "3" = "goodbye" }
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
yes = "submit"
no = "item_code"
timeout_s = 10
on_fail = "goodbye"

[nodes.submit]
type = "submit"
category = "new_order"
fields = ["item_code"]
next = "thanks"

[nodes.thanks]
type = "hangup"
prompt = ["sound:cbgw/thank-you"]

[nodes.goodbye]
type = "hangup"
prompt = ["sound:cbgw/goodbye"]
"""
ITEM = "1234"
#: after the call is answered a prompt starts within this; after a key, sooner
FIRST_PROMPT_WAIT_S = 3.0
PROMPT_WAIT_S = 1.5


def wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


def digit_seconds(site: AsteriskSite, digits: str) -> float:
    """How long a ``digits:`` read-back of ``digits`` plays in Japanese."""
    host, _ = sounds_dir(site.name, "ja/digits", site.root)
    return sum(wav_seconds(host / f"{d}.wav") for d in digits)


def keyed(steps: list[tuple[float, str]]) -> str:
    """The caller's keys (``make_dtmf_pcap``'s script): each step's keys once the prompts
    before them (``seconds``) have played, with time to spare."""
    script = ""
    for index, (seconds, keys) in enumerate(steps):
        wait = FIRST_PROMPT_WAIT_S if index == 0 else PROMPT_WAIT_S
        script += f"[{round((seconds + wait) * 1000)}]{keys}"
    return script


def heard(rtp: RtpCapture, keys: list[str]) -> list[float]:
    """How long the caller heard sound before each step's keys (after the previous
    step's) and after the last: from the first to the last audible packet between them."""
    pressed = iter(rtp.keys())
    edges = [float("-inf")]
    for step in keys:
        digits = [next(pressed) for _ in step]
        edges += [digits[0][0], digits[-1][1]]
    edges.append(float("inf"))
    spans = []
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        sound = [t for t in rtp.sounding if start < t < end]
        spans.append(sound[-1] - sound[0] if sound else 0.0)
    return spans


class ChatServers:
    """The local chat API servers a merchant's channels point at."""

    def __init__(self, chat: FakeChat, chat_url: str, lineworks: FakeLineWorks,
                 lineworks_url: str, key_file: Path, inbox: Inbox, smtp_port: int) -> None:
        self.chat, self.lineworks, self.inbox = chat, lineworks, inbox
        self.chat_url, self.lineworks_url = chat_url, lineworks_url
        self.key_file, self.smtp_port = key_file, smtp_port

    def channels(self, merchant: str) -> str:
        """The ``[[notify.channels]]`` tables: one of each kind, all at these servers."""
        lw = self.lineworks
        return f"""
[[notify.channels]]
merchant = "{merchant}"
name = "ops-slack"
kind = "slack"
url = "{self.chat_url}{SLACK_PATH}"

[[notify.channels]]
merchant = "{merchant}"
name = "ops-teams"
kind = "teams"
url = "{self.chat_url}{TEAMS_PATH}"

[[notify.channels]]
merchant = "{merchant}"
name = "ops-chat"
kind = "google_chat"
url = "{self.chat_url}{CHAT_PATH}?key={CHAT_KEY}&token={CHAT_TOKEN}"

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
auth_url = "{self.lineworks_url}/oauth2/v2.0/token"
api_base = "{self.lineworks_url}/v1.0"

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
async def servers(aiohttp_server: ServerFactory, smtp: tuple[Inbox, int],
                  tmp_path: Path) -> ChatServers:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "lineworks.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    chat, lineworks = FakeChat(), FakeLineWorks(key.public_key())
    chat_server = await aiohttp_server(chat.app())
    lineworks_server = await aiohttp_server(lineworks.app())
    return ChatServers(chat, str(chat_server.make_url("")).rstrip("/"), lineworks,
                       str(lineworks_server.make_url("")).rstrip("/"), key_file, *smtp)


@pytest.fixture
async def stack(tmp_path: Path, servers: ChatServers) -> AsyncIterator[Stack]:
    async with Stack(tmp_path / "stack", merchants=(MerchantOptions(pre_callback_delay_s="0"),),
                     db_prefix="cbgw_e2e_platform", log_level="DEBUG",
                     callback_config=servers.channels("acme")) as running:
        yield running


async def test_inside_hours_the_stored_flow_runs_every_prompt_is_heard_and_notified(
        stack: Stack, servers: ChatServers, tmp_path: Path) -> None:
    # The merchant's own sub-menu, spoken by Open JTalk, uploaded as its guidance.
    spoken = await PromptCache(tmp_path / "tts").get(SUB_MENU, Language.JAPANESE)
    guidance = await call_api(stack, "PUT", "/v1/media/guidance/order-menu",
                              data=spoken.read_bytes())
    assert guidance["media"] == "sound:cbgw-guidance/acme/order-menu"
    await call_api(stack, "POST", "/v1/ivr/flows?file=platform.toml", data=FLOW)
    assert (await call_api(stack, "POST", "/v1/ivr/flows/1/activate"))["active"] is True
    await call_api(stack, "PUT", f"/v1/phonebook/{CUSTOMER}",
                   json={"company": "株式会社サンプル", "name": "山田太郎"})

    site = stack.callback_site

    def system(*names: str) -> float:
        return sum(prompt_seconds(site, "ja", n) for n in names)

    # (what plays before the keys, the keys); then thank-you
    steps = [
        (system("confirm-callback"), "1"),
        (system("welcome-menu"), "1"),
        (float(guidance["seconds"]), "2"),
        (system("enter-item"), f"{ITEM}#"),
        (system("you-entered", "item-code") + digit_seconds(site, ITEM) + system("confirm"),
         "1"),
    ]
    prompts = [seconds for seconds, _ in steps] + [system("thank-you")]
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

    # Every key reached Asterisk, each after its prompt, and each prompt was heard whole.
    assert len(rtp.keys()) == sum(len(keys) for _, keys in steps), rtp.keys()
    spans = heard(rtp, [keys for _, keys in steps])
    for span, expected in zip(spans, prompts, strict=True):
        assert abs(span - expected) <= 0.5, (spans, prompts)

    # The request reached the edge once, from the stored flow's nested menu and gather.
    assert (request["category"], request["fields"]) == ("new_order", {"item_code": ITEM})
    rounds = await stack.fetch(
        "callback", """SELECT f.flow_name, f.version FROM callback_round_flows f
                       JOIN callback_requests r USING (callback_id)
                       WHERE r.edge_call_id = $1""", call["edge_call_id"])
    assert [(r["flow_name"], r["version"]) for r in rounds] == [("platform", 1)]

    # Its notification reached every channel once: caller, phonebook name, the digits.
    await stack.wait_for_row(
        "callback", "SELECT 1 FROM notification_deliveries WHERE state = 'delivered' "
        "HAVING count(*) = 5", timeout_s=60)
    deliveries = await stack.fetch(
        "callback", "SELECT n.event, d.channel, d.state, d.attempts FROM notifications n "
        "JOIN notification_deliveries d ON d.notification_id = n.id ORDER BY d.channel")
    assert [tuple(d) for d in deliveries] == [
        ("request_collected", channel, "delivered", 1) for channel in (
            "ops-chat", "ops-lineworks", "ops-mail", "ops-slack", "ops-teams")]
    assert servers.deliveries() == {"slack": 1, "teams": 1, "google_chat": 1,
                                    "lineworks": 1, "mail": 1}
    title = "着信通知 090-1234-5678 株式会社サンプル 山田太郎"
    [slack] = servers.chat.slack
    assert slack["blocks"][0]["text"]["text"] == title
    assert f"*item_code*\n{ITEM}" in [f["text"] for f in slack["blocks"][1]["fields"]]
    [teams] = servers.chat.teams
    card = teams["attachments"][0]["content"]
    assert card["body"][0]["text"].startswith(title)
    assert {f["title"]: f["value"] for f in card["body"][1]["facts"]}["item_code"] == ITEM
    [chat] = servers.chat.chat
    assert chat["text"].splitlines()[0] == f"*{title}*"
    [(_, lineworks)] = servers.lineworks.messages
    assert f"item_code: {ITEM}" in lineworks["content"]["text"].splitlines()
    [mail] = servers.inbox.messages
    assert mail["Subject"] == title and mail["To"] == "orders@acme.example.jp"
    assert f"item_code: {ITEM}" in mail.get_content()
    # ... and the edge still has the request once
    assert len(await stack.fetch("edge", "SELECT 1 FROM requests WHERE edge_call_id = $1",
                                 call["edge_call_id"])) == 1
