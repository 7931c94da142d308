"""Call notifications delivered to local servers speaking each destination's API: Slack,
Teams Workflows, Google Chat, LINE WORKS API 2.0 (JWT → token → message) and SMTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ivr_platform.delivery import Rejected, Unavailable
from ivr_platform.notice import CallNotice
from ivr_platform.notify_lineworks import LineWorksBot, LineWorksSettings
from ivr_platform.notify_mail import MailNotifier, MailSettings
from ivr_platform.notify_webhooks import (
    ChatworkRoom,
    ChatworkSettings,
    GoogleChatWebhook,
    SlackWebhook,
    TeamsWorkflowWebhook,
    WebhookSettings,
)
from shared.language import Language
from shared.phone import normalise
from tests.harness.smtp import Inbox, free_port, smtp_server
from tests.integration.fake_chat import (
    CHAT_KEY,
    CHAT_PATH,
    CHAT_TOKEN,
    CHATWORK_ROOM,
    CHATWORK_TOKEN,
    SLACK_PATH,
    TEAMS_PATH,
    FakeChat,
    FakeLineWorks,
)

ServerFactory = Callable[..., Awaitable[TestServer]]
NOTICE = CallNotice(
    "shop-1", normalise("090-1234-5678"), datetime(2026, 12, 4, 6, 15, tzinfo=UTC),
    company="株式会社サンプル", name="山田太郎", choices=(("問い合わせ種別", "予約"),),
    digits=(("会員番号", "123456"),), transcript="<予約> & 変更",
    recording_url="https://rec.example.jp/r/abc")


@pytest.fixture
async def chat(aiohttp_server: ServerFactory) -> AsyncIterator[tuple[FakeChat, str,
                                                                    aiohttp.ClientSession]]:
    fake = FakeChat()
    server = await aiohttp_server(fake.app())
    async with aiohttp.ClientSession() as session:
        yield fake, str(server.make_url("")).rstrip("/"), session


async def test_slack_blocks_with_fields_and_the_recording_link(chat: Any) -> None:
    fake, base, session = chat
    await SlackWebhook(session, WebhookSettings(base + SLACK_PATH)).notify(NOTICE)
    [body] = fake.slack
    assert body["text"] == NOTICE.text()
    header, section, link = body["blocks"]
    assert header["text"]["text"] == "着信通知 090-1234-5678 株式会社サンプル 山田太郎"
    texts = [f["text"] for f in section["fields"]]
    assert texts[:2] == ["*発信者番号*\n090-1234-5678", "*会社名*\n株式会社サンプル"]
    assert "*音声認識*\n&lt;予約&gt; &amp; 変更" in texts      # Slack's escaping
    assert link["text"]["text"] == "<https://rec.example.jp/r/abc|録音を聞く>"


async def test_slack_errors_name_slacks_id_and_never_the_secret_url(chat: Any) -> None:
    fake, base, session = chat
    archived = SlackWebhook(session, WebhookSettings(base + "/services/T0001/B0001/archived"))
    with pytest.raises(Rejected) as err:
        await archived.notify(NOTICE)
    assert (err.value.http_status, err.value.code) == (410, "channel_is_archived")
    fake.fail_next.append(503)
    with pytest.raises(Unavailable) as down:
        await SlackWebhook(session, WebhookSettings(base + SLACK_PATH)).notify(NOTICE)
    assert "HTTP 503" in str(down.value) and "SECRET" not in str(down.value)
    assert "SECRET" not in repr(WebhookSettings(base + SLACK_PATH))
    with pytest.raises(ValueError) as bad:
        WebhookSettings("hooks.slack.com/services/T0001/B0001/SECRET")
    assert str(bad.value) == "url: expected an http(s) URL, got '<not an absolute URL>'"


async def test_teams_workflow_adaptive_card(chat: Any) -> None:
    fake, base, session = chat
    settings = WebhookSettings(base + TEAMS_PATH, language=Language.ENGLISH)
    await TeamsWorkflowWebhook(session, settings).notify(NOTICE)
    [body] = fake.teams
    card = body["attachments"][0]["content"]
    assert card["version"] == "1.4"
    assert card["body"][0]["text"].startswith("Incoming call 090-1234-5678")
    facts = {f["title"]: f["value"] for f in card["body"][1]["facts"]}
    assert facts["Caller"] == "090-1234-5678"
    assert facts["Received"] == "Fri 4 Dec 2026 15:15 JST"
    assert facts["会員番号"] == "123456"
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Listen to the recording",
                                "url": "https://rec.example.jp/r/abc"}]


async def test_google_chat_space_webhook(chat: Any) -> None:
    fake, base, session = chat
    url = f"{base}{CHAT_PATH}?key={CHAT_KEY}&token={CHAT_TOKEN}"
    await GoogleChatWebhook(session, WebhookSettings(url)).notify(NOTICE)
    [body] = fake.chat
    lines = body["text"].splitlines()
    assert lines[0] == "*着信通知 090-1234-5678 株式会社サンプル 山田太郎*"
    assert "着信日時: 2026年12月4日(金) 15:15" in lines
    assert lines[-1] == "<https://rec.example.jp/r/abc|録音を聞く>"
    wrong = f"{base}{CHAT_PATH}?key={CHAT_KEY}&token=old"
    with pytest.raises(Rejected) as err:
        await GoogleChatWebhook(session, WebhookSettings(wrong)).notify(NOTICE)
    assert (err.value.http_status, err.value.code) == (401, "UNAUTHENTICATED")
    assert "token=" not in str(err.value)


async def test_chatwork_room_message_in_its_markup(chat: Any) -> None:
    fake, base, session = chat
    settings = ChatworkSettings(CHATWORK_TOKEN, CHATWORK_ROOM, api_base=f"{base}/v2")
    await ChatworkRoom(session, settings).notify(NOTICE)
    [form] = fake.chatwork
    assert form["self_unread"] == "0"
    assert form["body"].startswith("[info][title]着信通知 090-1234-5678 株式会社サンプル "
                                   "山田太郎[/title]発信者番号: 090-1234-5678\n")
    assert form["body"].endswith("\n録音を聞く: https://rec.example.jp/r/abc[/info]")
    wrong = ChatworkSettings("old", CHATWORK_ROOM, api_base=f"{base}/v2")
    with pytest.raises(Rejected, match="HTTP 401, error None: Invalid API token"):
        await ChatworkRoom(session, wrong).notify(NOTICE)
    assert "SECRET" not in repr(settings)


# --- LINE WORKS ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def lineworks(aiohttp_server: ServerFactory, rsa_key: rsa.RSAPrivateKey
                    ) -> AsyncIterator[tuple[FakeLineWorks, LineWorksSettings,
                                             aiohttp.ClientSession]]:
    fake = FakeLineWorks(rsa_key.public_key())
    server = await aiohttp_server(fake.app())
    base = str(server.make_url("")).rstrip("/")
    pem = rsa_key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    settings = LineWorksSettings(
        client_id=fake.client_id, client_secret=fake.client_secret,
        service_account=fake.service_account, private_key_pem=pem, bot_id=fake.bot_id,
        channel_id=fake.channel_id, auth_url=f"{base}/oauth2/v2.0/token",
        api_base=f"{base}/v1.0")
    async with aiohttp.ClientSession() as session:
        yield fake, settings, session


async def test_lineworks_jwt_token_then_message_and_the_token_is_reused(
        lineworks: Any) -> None:
    fake, settings, session = lineworks
    clock = Clock()
    bot = LineWorksBot(session, settings, clock)
    await bot.notify(NOTICE)
    await bot.notify(NOTICE)
    assert len(fake.issued) == 1 and len(fake.messages) == 2
    [claims] = fake.assertions
    assert claims == {"iss": fake.client_id, "sub": fake.service_account,
                      "iat": 1_800_000_000, "exp": 1_800_003_600}
    token, body = fake.messages[0]
    assert token == fake.issued[0]
    assert body == {"content": {"type": "text", "text": NOTICE.text()}}
    clock.now += 86400 - 30          # within the last minute of the token's day: a new one
    await bot.notify(NOTICE)
    assert len(fake.issued) == 2 and fake.messages[-1][0] == fake.issued[1]
    assert "SECRET" not in repr(settings) and "PRIVATE" not in repr(settings)


async def test_lineworks_a_revoked_token_is_renewed_once(lineworks: Any) -> None:
    fake, settings, session = lineworks
    bot = LineWorksBot(session, settings)
    await bot.notify(NOTICE)
    fake.revoked.add(fake.issued[0])
    await bot.notify(NOTICE)
    assert len(fake.issued) == 2 and fake.messages[-1][0] == fake.issued[1]
    fake.refuse_all = True           # every token refused: one renewal, then the error
    with pytest.raises(Rejected) as err:
        await bot.notify(NOTICE)
    assert (err.value.http_status, err.value.code) == (401, "UNAUTHORIZED")
    assert len(fake.issued) == 3 and len(fake.messages) == 2


async def test_lineworks_refusals_name_the_apis_error(lineworks: Any,
                                                      rsa_key: rsa.RSAPrivateKey) -> None:
    fake, settings, session = lineworks
    wrong_secret = LineWorksSettings(**{**_fields(settings), "client_secret": "old"})
    with pytest.raises(Rejected) as err:
        await LineWorksBot(session, wrong_secret).notify(NOTICE)
    assert (err.value.http_status, err.value.code) == (401, "invalid_client")
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()).decode()
    with pytest.raises(Rejected) as err:
        await LineWorksBot(session, LineWorksSettings(
            **{**_fields(settings), "private_key_pem": pem})).notify(NOTICE)
    assert (err.value.http_status, err.value.code) == (400, "invalid_grant")
    with pytest.raises(Rejected) as err:
        await LineWorksBot(session, LineWorksSettings(
            **{**_fields(settings), "channel_id": "gone"})).notify(NOTICE)
    assert (err.value.http_status, err.value.code) == (404, "NOT_FOUND")
    assert fake.messages == []


def _fields(settings: LineWorksSettings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}


# --- e-mail ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    with smtp_server(inbox) as port:
        yield inbox, port


async def test_mail_in_japanese_with_the_recording_link(smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    settings = MailSettings("127.0.0.1", "ivr@shop.example.jp",
                            ("desk@shop.example.jp", "boss@shop.example.jp"), port=port)
    await MailNotifier(settings).notify(NOTICE)
    message = inbox.messages[-1]
    assert inbox.envelopes[-1] == ("ivr@shop.example.jp",
                                   ["desk@shop.example.jp", "boss@shop.example.jp"])
    assert message["Subject"] == "着信通知 090-1234-5678 株式会社サンプル 山田太郎"
    assert message["Message-ID"].endswith("@shop.example.jp>")
    body = message.get_content().replace("\r\n", "\n")   # SMTP lines end in CRLF
    assert body == NOTICE.text() + "\n"
    assert "録音: https://rec.example.jp/r/abc" in body


async def test_mail_refusals_and_a_missing_server(smtp: tuple[Inbox, int]) -> None:
    _, port = smtp
    with pytest.raises(Rejected) as err:
        await MailNotifier(MailSettings("127.0.0.1", "ivr@shop.example.jp",
                                        ("nobody@shop.example.jp",), port=port)).notify(NOTICE)
    assert err.value.http_status == 550 and "no such user" in err.value.message
    with pytest.raises(Unavailable, match="452"):
        await MailNotifier(MailSettings("127.0.0.1", "ivr@shop.example.jp",
                                        ("busy@shop.example.jp",), port=port)).notify(NOTICE)
    with pytest.raises(Unavailable, match="ConnectionRefusedError"):
        await MailNotifier(MailSettings("127.0.0.1", "ivr@shop.example.jp",
                                        ("desk@shop.example.jp",), port=free_port(),
                                        timeout_s=2)).notify(NOTICE)
    with pytest.raises(ValueError, match="mail_to"):
        MailNotifier(MailSettings("127.0.0.1", "ivr@shop.example.jp", ()))

