"""Call notifications through the callback site's outbox: request info stored by the
store queues one delivery per configured channel in its transaction, and the site's
delivery worker sends them to local servers speaking each API (Slack, Teams, Google Chat,
Chatwork, LINE WORKS, SMTP by aiosmtpd) with the phonebook's company and name, the time in
Tokyo, the menu's choice, the digits, the transcript and a signed link to the recording;
retries a 500, parks a 4xx, never holds up the store, and is at least once across a crash
(real PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from callback_server.app import POOL_KEY, SETTINGS_KEY, create_app
from callback_server.config import CallbackSettings
from callback_server.dialer_messages import Finish, Reason
from callback_server.http import STORE_KEY
from callback_server.ivr import Submit
from callback_server.notify_cli import main as notify_cli
from callback_server.schemas import IntakeRequest
from ivr_platform.media_http import RECORDINGS_KEY
from ivr_platform.notify_compose import Composer
from ivr_platform.notify_config import Channel, Event, Kind, NotifySettings
from ivr_platform.notify_outbox import NotificationWorker
from ivr_platform.notify_webhooks import SlackWebhook, WebhookSettings
from ivr_platform.phonebook import Phonebook
from shared.config import ConfigError
from shared.phone import E164
from tests import prom
from tests.harness.smtp import smtp_server
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
from tests.integration.test_callback_app import settings
from tests.integration.test_ivr_audio import tone
from tests.integration.test_ivr_notify_functional import Inbox

pytestmark = pytest.mark.integration

ServerFactory = Callable[..., Awaitable[TestServer]]
AUTH = {"Authorization": "Bearer test"}     # deploy/callback.example.toml's acme token
CALLER = E164("819012345678")
AT = datetime(2026, 12, 4, 6, 15, tzinfo=UTC)   # 15:15 in Tokyo, a Friday
PUBLIC = "https://callback.example.jp"


def notify_settings(pki: Path, db_url: str, tmp_path: Path, notify_toml: str, **env: str
                    ) -> CallbackSettings:
    """The example config with ``[[notify.channels]]`` appended (its ``[notify]`` table
    comes first) and a worker polling and retrying in tenths of a second."""
    base = settings(pki, db_url, tmp_path)
    base.path.write_text(base.path.read_text() + "\n" + notify_toml)
    return CallbackSettings.load(base.path, environ={
        "CALLBACK__DATABASE__URL": db_url, "CALLBACK__ARI__URL": "http://127.0.0.1:9",
        "CALLBACK__RATES__ENABLED": "false",
        "CALLBACK__PEER__ROUTES": '[{name = "internet", url = "http://127.0.0.1:9"}]',
        "CALLBACK__MEDIA__RECORDINGS_DIR": str(tmp_path / "recordings"),
        "CALLBACK__MEDIA__PUBLIC_URL": PUBLIC, **FAST, **env})


def channel_toml(name: str, kind: str, events: str = '["request_collected"]',
                 **keys: Any) -> str:
    lines = ["[[notify.channels]]", 'merchant = "acme"', f'name = "{name}"',
             f'kind = "{kind}"', f"events = {events}"]
    for key, value in keys.items():
        lines.append(f"{key} = " + (f'"{value}"' if isinstance(value, str)
                                    else str(value).lower() if isinstance(value, bool)
                                    else "[" + ", ".join(f'"{v}"' for v in value) + "]"
                                    if isinstance(value, list) else f"{value}"))
    return "\n".join(lines) + "\n"


FAST = {"CALLBACK__NOTIFY__POLL_S": "0.05", "CALLBACK__NOTIFY__BACKOFF_S": "0.1",
        "CALLBACK__NOTIFY__MAX_BACKOFF_S": "0.2", "CALLBACK__NOTIFY__MAX_ATTEMPTS": "4"}


@pytest.fixture
async def chat(aiohttp_server: ServerFactory) -> AsyncIterator[tuple[FakeChat, str]]:
    fake = FakeChat()
    server = await aiohttp_server(fake.app())
    yield fake, str(server.make_url("")).rstrip("/")


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    with smtp_server(inbox) as port:
        yield inbox, port


async def store_request(app: web.Application, edge_call_id: str,
                        caller: E164 = CALLER) -> float:
    """An intake then the IVR's request info, as the call stores it; the seconds the
    request info's store call took."""
    store = app[STORE_KEY]
    s = app[SETTINGS_KEY]
    await store.intake(str(uuid.uuid4()), IntakeRequest(
        edge_call_id=edge_call_id, merchant_id="acme", caller=caller, dialed="+81120123456",
        received_at=AT, hungup_at=AT, announce_mode="early_media"), s.merchant("acme"))
    callback_id = await app[POOL_KEY].fetchval(
        "SELECT callback_id FROM callback_requests WHERE edge_call_id = $1", edge_call_id)
    started = time.monotonic()
    await store.record_info(Submit("order", (("item_code", "1234"), ("quantity", "2"))),
                            callback_id=callback_id, edge_call_id=edge_call_id,
                            merchant_id="acme", caller=caller, collected_at=AT, seq=1)
    return time.monotonic() - started


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        await asyncio.sleep(0.05)


Client = TestClient[web.Request, web.Application]


async def deliveries(client: Client, **query: str) -> list[dict[str, Any]]:
    resp = await client.get("/v1/notifications", params=query, headers=AUTH)
    assert resp.status == 200, await resp.text()
    items: list[dict[str, Any]] = (await resp.json())["items"]
    return items


async def test_request_info_notifies_every_channel_with_what_the_call_gave(
        pki_dir: Path, pg_url: str, tmp_path: Path, chat: tuple[FakeChat, str],
        aiohttp_server: ServerFactory, smtp: tuple[Inbox, int]) -> None:
    fake, base = chat
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    works = FakeLineWorks(key.public_key())
    works_base = str((await aiohttp_server(works.app())).make_url("")).rstrip("/")
    key_file = tmp_path / "lineworks.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    inbox, smtp_port = smtp
    toml = "".join([
        channel_toml("slack", "slack", '["request_collected", "message_recorded"]',
                     url=base + SLACK_PATH),
        channel_toml("teams", "teams", url=base + TEAMS_PATH, language="en"),
        channel_toml("gchat", "google_chat",
                     url=f"{base}{CHAT_PATH}?key={CHAT_KEY}&token={CHAT_TOKEN}"),
        channel_toml("chatwork", "chatwork", api_token=CHATWORK_TOKEN, room_id=CHATWORK_ROOM,
                     api_base=base + "/v2"),
        channel_toml("works", "lineworks", client_id=works.client_id,
                     client_secret=works.client_secret,
                     service_account=works.service_account, private_key_file=str(key_file),
                     bot_id=works.bot_id, channel_id=works.channel_id,
                     auth_url=works_base + "/oauth2/v2.0/token",
                     api_base=works_base + "/v1.0"),
        channel_toml("desk", "mail", host="127.0.0.1", port=smtp_port,
                     mail_from="ivr@acme.example.jp", mail_to=["desk@acme.example.jp"])])
    app = create_app(notify_settings(pki_dir, pg_url, tmp_path, toml), with_ari=False)
    async with TestClient(TestServer(app)) as client:
        resp = await client.put("/v1/phonebook/090-1234-5678", headers=AUTH,
                                json={"company": "株式会社サンプル", "name": "山田太郎"})
        assert resp.status == 201, await resp.text()
        recording = await app[RECORDINGS_KEY].add(
            "acme", tone(tmp_path / "call.wav", 1.0, channels=1),
            retention=timedelta(days=1), edge_call_id="e-1", caller=CALLER,
            transcript="明日の午前中に折り返しください")
        await store_request(app, "e-1")

        async def all_delivered() -> bool:
            return len(await deliveries(client, state="delivered")) == 7
        await until(all_delivered, "7 deliveries (6 channels + the recording's)")
        assert {(d["event"], d["channel"]) for d in await deliveries(client)} == {
            ("request_collected", c) for c in ("slack", "teams", "gchat", "chatwork",
                                               "works", "desk")} | {
            ("message_recorded", "slack")}

        link_path = f"/v1/recordings/{recording.id}/audio?expires="
        slack = next(m for m in fake.slack if "item_code" in m["text"])
        for text in (slack["text"], fake.chat[0]["text"], fake.chatwork[0]["body"],
                     works.messages[0][1]["content"]["text"],
                     inbox.messages[-1].get_content()):
            for expected in ("090-1234-5678", "株式会社サンプル", "山田太郎",
                             "2026年12月4日(金) 15:15", "用件: order", "item_code: 1234",
                             "quantity: 2", "音声認識: 明日の午前中に折り返しください",
                             PUBLIC + link_path):
                assert expected in text, (expected, text)
        assert inbox.messages[-1]["Subject"] == "着信通知 090-1234-5678 株式会社サンプル 山田太郎"
        card = fake.teams[0]["attachments"][0]["content"]
        facts = {f["title"]: f["value"] for f in card["body"][1]["facts"]}
        assert facts["Received"] == "Fri 4 Dec 2026 15:15 JST"
        assert facts["Request"] == "order" and facts["Company"] == "株式会社サンプル"
        assert facts["Transcript"] == "明日の午前中に折り返しください"
        assert card["actions"][0]["url"].startswith(PUBLIC + link_path)
        recorded = next(m for m in fake.slack if "item_code" not in m["text"])
        assert "録音: " + PUBLIC + link_path in recorded["text"]

        audio = await client.get(card["actions"][0]["url"].removeprefix(PUBLIC))
        assert audio.status == 200 and audio.content_type == "audio/wav"
        assert len(fake.slack) == 2 and len(fake.teams) == len(fake.chatwork) == 1


async def test_a_500_is_retried_until_delivered_and_a_4xx_is_parked_until_requeued(
        pki_dir: Path, pg_url: str, tmp_path: Path, chat: tuple[FakeChat, str]) -> None:
    fake, base = chat
    fake.fail_next.extend([500, 503])
    toml = channel_toml("slack", "slack", url=base + SLACK_PATH) + channel_toml(
        "archived", "slack", url=base + "/services/T0001/B0001/archived")
    app = create_app(notify_settings(pki_dir, pg_url, tmp_path, toml), with_ari=False)
    async with TestClient(TestServer(app)) as client:
        await app[POOL_KEY].execute("TRUNCATE notifications CASCADE")
        before = await (await client.get("/metrics")).text()
        await store_request(app, "e-2")

        async def settled() -> bool:
            return not await deliveries(client, state="pending")
        await until(settled, "both deliveries settled")
        # the site's /metrics: one delivered, one failed (parked); retries are neither
        after = await (await client.get("/metrics")).text()
        assert {result: prom.scraped(after, "cbgw_ivr_notifications_total", merchant="acme",
                                     kind="slack", result=result)
                - prom.scraped(before, "cbgw_ivr_notifications_total", merchant="acme",
                               kind="slack", result=result)
                for result in ("delivered", "failed")} == {"delivered": 1, "failed": 1}
        by_channel = {d["channel"]: d for d in await deliveries(client)}
        slack = by_channel["slack"]
        assert slack["state"] == "delivered" and slack["attempts"] == 3, slack
        assert [a["outcome"] for a in slack["attempt_log"]] == ["retry", "retry", "delivered"]
        assert "HTTP 500" in slack["attempt_log"][0]["error"]
        assert len(fake.slack) == 1
        parked = by_channel["archived"]
        assert parked["state"] == "parked" and parked["attempts"] == 1, parked
        assert "channel_is_archived" in parked["last_error"]
        assert "/services/" not in parked["last_error"]   # the URL is the secret
        assert [d["channel"] for d in await deliveries(client, state="parked")] == [
            "archived"]

        resp = await client.post(f"/v1/notifications/{parked['notification_id']}/channels/"
                                 "archived/requeue", headers=AUTH)
        assert resp.status == 200, await resp.text()

        async def parked_again() -> bool:
            return [d["attempts"] for d in await deliveries(client, state="parked")] == [2]
        await until(parked_again, "the requeued delivery tried and parked again")
        resp = await client.post(f"/v1/notifications/{parked['notification_id']}/channels/"
                                 "slack/requeue", headers=AUTH)
        assert resp.status == 404   # delivered: never sent again
        assert len(fake.slack) == 1


async def test_a_channel_that_hangs_never_delays_storing_the_request(
        pki_dir: Path, pg_url: str, tmp_path: Path, aiohttp_server: ServerFactory) -> None:
    arrived: list[float] = []

    async def hang(request: web.Request) -> web.Response:
        arrived.append(time.monotonic())
        await asyncio.sleep(30)
        return web.Response(text="ok")
    hanging = web.Application()
    hanging.router.add_post("/hook", hang)
    url = str((await aiohttp_server(hanging)).make_url("/hook"))
    toml = channel_toml("slow", "slack", url=url, timeout_s=12)
    app = create_app(notify_settings(pki_dir, pg_url, tmp_path, toml), with_ari=False)
    async with TestClient(TestServer(app)):
        await app[POOL_KEY].execute("TRUNCATE notifications CASCADE")
        first = await store_request(app, "e-3")
        deadline = time.monotonic() + 10
        while not arrived:   # the worker is now waiting on the hanging channel
            assert time.monotonic() < deadline, "the worker never sent"
            await asyncio.sleep(0.05)
        took = [first] + [await store_request(app, f"e-3-{i}") for i in range(3)]
        # The channel holds each send 12 s and more; storing a request never waits for it.
        assert max(took) < 2.0, took
        assert await app[POOL_KEY].fetchval(
            "SELECT count(*) FROM notification_deliveries WHERE state = 'pending'") == 4


@pytest.fixture
async def pool(pki_dir: Path, pg_url: str, tmp_path: Path) -> AsyncIterator[asyncpg.Pool]:
    """The site's database with its migrations (the site applies them at start)."""
    app = create_app(notify_settings(pki_dir, pg_url, tmp_path, ""), with_ari=False)
    async with TestClient(TestServer(app)):
        pool: asyncpg.Pool = app[POOL_KEY]
        await pool.execute("TRUNCATE notifications, phonebook CASCADE")
        yield pool


def slack_settings(url: str, lease_s: float = 60.0) -> tuple[NotifySettings, WebhookSettings]:
    hook = WebhookSettings(url)
    return NotifySettings(channels=(Channel("acme", "slack", Kind.SLACK,
                                            frozenset({Event.REQUEST_COLLECTED}), hook),),
                          poll_s=0.05, backoff_s=0.1, max_backoff_s=0.2,
                          lease_s=lease_s), hook


async def enqueue_facts(pool: asyncpg.Pool, settings: NotifySettings, n: int) -> None:
    from ivr_platform.notify_outbox import enqueue
    async with pool.acquire() as conn, conn.transaction():
        for i in range(n):
            await enqueue(conn, settings, merchant_id="acme", event=Event.REQUEST_COLLECTED,
                          fact_key=f"fact-{i}", facts={
                              "caller": str(CALLER), "at": AT.isoformat(),
                              "category": "order", "fields": {"n": str(i)}})


async def test_two_workers_deliver_each_notification_once(
        pool: asyncpg.Pool, chat: tuple[FakeChat, str]) -> None:
    fake, base = chat
    s, hook = slack_settings(base + SLACK_PATH)
    await enqueue_facts(pool, s, 20)
    async with aiohttp.ClientSession() as session:
        workers = [NotificationWorker(pool, s, {("acme", "slack"): SlackWebhook(
            session, hook)}, Composer(s, Phonebook(pool), None),
            owner=f"w{i}") for i in (1, 2)]
        while await pool.fetchval("SELECT count(*) FROM notification_deliveries "
                                  "WHERE state = 'pending'"):
            await asyncio.gather(*(w.run_once() for w in workers))
        assert sum([await w.run_once() for w in workers]) == 0
    sent = sorted(int(m["text"].rpartition("n: ")[2]) for m in fake.slack)
    assert sent == list(range(20))


async def test_a_crash_between_send_and_mark_sends_again_once_and_never_after_the_mark(
        pool: asyncpg.Pool, aiohttp_server: ServerFactory) -> None:
    """At least once: the destination took the message, the process died before the
    result was committed; after the lease the next worker sends it again. Once marked
    delivered, no worker sends it again."""
    received: list[dict[str, Any]] = []
    hold, taken = asyncio.Event(), asyncio.Event()

    async def webhook(request: web.Request) -> web.Response:
        received.append(await request.json())
        taken.set()
        await hold.wait()
        return web.Response(text="ok")
    app = web.Application()
    app.router.add_post("/hook", webhook)
    url = str((await aiohttp_server(app)).make_url("/hook"))
    s, hook = slack_settings(url, lease_s=1.0)
    await enqueue_facts(pool, s, 1)
    async with aiohttp.ClientSession() as session:
        def worker(owner: str) -> NotificationWorker:
            return NotificationWorker(pool, s, {("acme", "slack"): SlackWebhook(
                session, hook)}, Composer(s, Phonebook(pool), None),
                owner=owner)
        crashing = asyncio.create_task(worker("w1").run_once())
        await asyncio.wait_for(taken.wait(), 10)
        crashing.cancel()          # the process dies with the message sent, not marked
        with pytest.raises(asyncio.CancelledError):
            await crashing
        hold.set()
        assert await worker("w2").run_once() == 0      # w1's lease still holds
        await asyncio.sleep(1.1)
        assert await worker("w2").run_once() == 1
        assert len(received) == 2                      # sent again: at least once
        for owner in ("w2", "w3"):
            assert await worker(owner).run_once() == 0
    assert len(received) == 2
    row = await pool.fetchrow("SELECT state, attempts FROM notification_deliveries")
    assert row is not None and (row["state"], row["attempts"]) == ("delivered", 2)


def test_notify_config_errors_name_file_line_and_key_and_never_a_secret(
        pki_dir: Path, tmp_path: Path) -> None:
    db = "postgresql://x@127.0.0.1/x"
    secret = "https://hooks.example.jp/services/T0/B0/SECRET"
    with pytest.raises(ConfigError, match=r"callback\.toml:\d+: notify\.channels\[0\]\."
                                          r"api_token: unknown key") as err:
        notify_settings(pki_dir, db, tmp_path,
                        channel_toml("s", "slack", url=secret, api_token="SECRET-token"))
    assert "SECRET" not in str(err.value)
    with pytest.raises(ConfigError, match=r"notify\.channels\[0\]\.merchant: no merchant "
                                          r"'nobody'"):
        notify_settings(pki_dir, db, tmp_path, channel_toml("s", "slack", url=secret)
                        .replace('"acme"', '"nobody"'))
    with pytest.raises(ConfigError, match=r"notify\.channels\[0\]\.url: expected an "
                                          r"http\(s\) URL") as err:
        notify_settings(pki_dir, db, tmp_path,
                        channel_toml("s", "slack", url="ftp://hooks.example.jp/SECRET"))
    assert "SECRET" not in str(err.value)
    with pytest.raises(ConfigError, match=r"notify\.channels\[0\]\.events: expected some "
                                          r"of request_collected, message_recorded"):
        notify_settings(pki_dir, db, tmp_path,
                        channel_toml("s", "slack", '["missed"]', url=secret))
    with pytest.raises(ConfigError, match=r"notify\.lease_s: 30 s is shorter than 4 times "
                                          r"the longest channel timeout_s \(10 s\)"):
        notify_settings(pki_dir, db, tmp_path, channel_toml("s", "slack", url=secret),
                        CALLBACK__NOTIFY__LEASE_S="30")
    with pytest.raises(ConfigError, match=r"notify\.channels\[1\]\.name: merchant 'acme' "
                                          r"has two channels named 's'"):
        notify_settings(pki_dir, db, tmp_path, channel_toml("s", "slack", url=secret) * 2)
    loaded = notify_settings(pki_dir, db, tmp_path, channel_toml("s", "slack", url=secret))
    assert "SECRET" not in repr(loaded.notify)
    assert loaded.notify.channels_for("acme", Event.REQUEST_COLLECTED) == ("s",)
    assert loaded.notify.channels_for("acme", Event.MESSAGE_RECORDED) == ()


async def test_a_call_back_that_failed_is_notified_as_missed(
        pki_dir: Path, pg_url: str, tmp_path: Path, chat: tuple[FakeChat, str]) -> None:
    fake, base = chat
    toml = channel_toml("missed", "google_chat", '["callback_missed"]',
                        url=f"{base}{CHAT_PATH}?key={CHAT_KEY}&token={CHAT_TOKEN}")
    app = create_app(notify_settings(pki_dir, pg_url, tmp_path, toml), with_ari=False)
    async with TestClient(TestServer(app)) as client:
        await app[POOL_KEY].execute("TRUNCATE notifications CASCADE")
        # A number of its own: the guard limits call-backs per number and hour.
        await store_request(app, "e-4", E164("819087654321"))   # not an event it takes
        store = app[STORE_KEY]
        callback_id = await app[POOL_KEY].fetchval(   # due now, not after the example's delay
            "UPDATE callback_requests SET next_attempt_at = now() WHERE edge_call_id = 'e-4' "
            "RETURNING callback_id")
        assert callback_id in [j.callback_id for j in await store.claim(100)]
        assert await store.finish(callback_id, Finish("failed", Reason.NO_ANSWER, 3))

        async def delivered() -> bool:
            return [d["event"] for d in await deliveries(client, state="delivered")] == [
                "callback_missed"]
        await until(delivered, "the missed call-back notified")
    text = fake.chat[0]["text"]
    for expected in ("090-8765-4321", "2026年12月4日(金) 15:15", "折り返し: 不成立",
                     "理由: no_answer", "発信回数: 3"):
        assert expected in text, (expected, text)
    assert len(fake.chat) == 1


async def test_a_click_to_call_that_failed_queues_the_missed_notification_with_its_reason(
        pki_dir: Path, pg_url: str, tmp_path: Path) -> None:
    """A web click-to-call finished failed (the customer or the advisor not answering,
    billing refusing) queues ``callback_missed`` in the transaction finishing it, with its
    reason, once."""
    toml = channel_toml("missed", "google_chat", '["callback_missed"]',
                        url="https://chat.example.jp/v1/spaces/S/messages?key=k&token=t")
    app = create_app(notify_settings(pki_dir, pg_url, tmp_path, toml), with_ari=False)
    reasons = (Reason.NO_ANSWER, Reason.ADVISOR_NO_ANSWER, Reason.BILLING_REFUSED)
    async with TestClient(TestServer(app)):
        pool = app[POOL_KEY]
        await pool.execute("TRUNCATE notifications CASCADE")
        store = app[STORE_KEY]
        clicks = []
        for i, reason in enumerate(reasons):
            click = await store.store_click(app[SETTINGS_KEY].merchant("acme"),
                                            E164(f"81908765000{i}"), 7, None)
            assert click.callback_id in [j.callback_id for j in await store.claim(100)]
            assert await store.finish(click.callback_id, Finish("failed", reason, 1))
            clicks.append(click.callback_id)
        rows = await pool.fetch("SELECT event, fact_key, facts FROM notifications ORDER BY id")
    assert [(r["event"], r["fact_key"]) for r in rows] == [
        ("callback_missed", f"callback_missed:{callback_id}") for callback_id in clicks]
    assert [(r["facts"]["caller"], r["facts"]["reason"], r["facts"]["attempts"],
             r["facts"]["edge_call_id"]) for r in rows] == [
        (f"+81908765000{i}", str(reason), 1, f"click:{callback_id}")
        for i, (reason, callback_id) in enumerate(zip(reasons, clicks, strict=True))]


async def test_the_cli_lists_parked_deliveries_requeues_them_and_keeps_the_phonebook(
        pki_dir: Path, pg_url: str, tmp_path: Path, chat: tuple[FakeChat, str],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _, base = chat
    toml = channel_toml("archived", "slack", url=base + "/services/T0001/B0001/archived")
    s = notify_settings(pki_dir, pg_url, tmp_path, toml)
    for key, value in {"CALLBACK__DATABASE__URL": pg_url, "CALLBACK__RATES__ENABLED": "false",
                       **FAST}.items():
        monkeypatch.setenv(key, value)

    async def cli(*args: str, status: int = 0) -> Any:
        code = await asyncio.to_thread(notify_cli, ["--config", str(s.path), "--merchant",
                                                    "acme", *args])
        out = capsys.readouterr()
        assert code == status, out
        return json.loads(out.out) if status == 0 else out.err

    app = create_app(s, with_ari=False)
    async with TestClient(TestServer(app)) as client:
        await app[POOL_KEY].execute("TRUNCATE notifications, phonebook CASCADE")
        await store_request(app, "e-5", E164("819011112222"))

        async def parked() -> bool:
            return len(await deliveries(client, state="parked")) == 1
        await until(parked, "the archived channel's delivery parked")
        (item,) = await cli("deliveries", "--state", "parked")
        assert item["channel"] == "archived" and "channel_is_archived" in item["last_error"]
        again = await cli("requeue", str(item["notification_id"]), "archived")
        assert again["state"] == "pending"
        err = await cli("requeue", "999999", "archived", status=2)
        assert err.startswith("error: no parked delivery of notification 999999")

    added = await cli("phonebook", "put", "090-1111-2222", "--company", "株式会社サンプル",
                      "--name", "山田太郎")
    assert added == {"number": "+819011112222", "company": "株式会社サンプル",
                     "name": "山田太郎", "created": True}
    assert await cli("phonebook", "list") == [{k: v for k, v in added.items()
                                               if k != "created"}]
    assert (await cli("phonebook", "put", "0901111222x", status=2)).startswith(
        "error: NUMBER: ")
    assert (await cli("phonebook", "put", "09011112222", status=2)).startswith(
        "error: --name: an entry has a company, a name or both")
    assert (await cli("phonebook", "delete", "+819011112222"))["deleted"] is True
    assert "no phonebook entry" in await cli("phonebook", "delete", "09011112222", status=2)


async def test_a_queued_notification_wakes_the_worker_at_once(
        pki_dir: Path, pg_url: str, tmp_path: Path, chat: tuple[FakeChat, str]) -> None:
    """The site's worker polls only every 60 s here: the NOTIFY sent at the fact's commit
    is what has it deliver within seconds."""
    fake, base = chat
    s = notify_settings(pki_dir, pg_url, tmp_path,
                        channel_toml("slack", "slack", url=base + SLACK_PATH),
                        CALLBACK__NOTIFY__POLL_S="60")
    app = create_app(s, with_ari=False)
    async with TestClient(TestServer(app)) as client:
        await app[POOL_KEY].execute("TRUNCATE notifications CASCADE")
        await asyncio.sleep(0.5)   # the worker's first look is over: it now waits
        await store_request(app, "e-6", E164("819033334444"))

        async def delivered() -> bool:
            return len(await deliveries(client, state="delivered")) == 1
        await until(delivered, "delivered on NOTIFY, long before the 60 s poll", 10)
    assert len(fake.slack) == 1
