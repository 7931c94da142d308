"""SMS through the Twilio adapter against a local server speaking Twilio's API, recorded in
PostgreSQL: a durable row, the call, the answer, and delivery callbacks (signed)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port

from ivr_platform.delivery import Rejected, Unavailable
from ivr_platform.sms import Encoding, SmsStatus
from ivr_platform.sms_http import twilio_status_handler
from ivr_platform.sms_store import SmsSender, SmsStore, migrations
from ivr_platform.sms_twilio import TwilioSettings, TwilioSms, parse_status_callback
from shared.db import create_pool, migrate_url
from shared.http import error_middleware
from shared.phone import normalise
from tests.integration.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio

ServerFactory = Callable[..., Awaitable[TestServer]]
MOBILE = normalise("090-1234-5678")
SENDER = normalise("050-1111-2222")
JAPANESE_71 = "ご予約ありがとうございます。" + "あ" * 57   # 71 characters: 2 messages


@pytest.fixture(scope="module")
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate_url(pg_url, [migrations()])
    p = await create_pool(pg_url, max_size=5)
    yield p
    await p.close()


@pytest.fixture
async def store(pool: asyncpg.Pool) -> SmsStore:
    await pool.execute("TRUNCATE sms_messages CASCADE")
    return SmsStore(pool)


class Rig:
    def __init__(self, fake: FakeTwilio, sender: SmsSender, twilio: TwilioSms,
                 callback_url: str) -> None:
        self.fake, self.sender, self.twilio, self.callback_url = fake, sender, twilio, callback_url


@pytest.fixture
async def rig(store: SmsStore, aiohttp_server: ServerFactory) -> AsyncIterator[Rig]:
    fake = FakeTwilio()
    provider = await aiohttp_server(fake.app())
    port = unused_port()
    callback_url = f"http://127.0.0.1:{port}/v1/sms/twilio/status"
    ours = web.Application(middlewares=[error_middleware])
    ours.router.add_post("/v1/sms/twilio/status",
                         twilio_status_handler(store, AUTH_TOKEN, callback_url))
    await aiohttp_server(ours, port=port)
    async with aiohttp.ClientSession() as session:
        twilio = TwilioSms(session, TwilioSettings(ACCOUNT_SID, AUTH_TOKEN,
                                                   str(provider.make_url(""))))
        yield Rig(fake, SmsSender(store, twilio, callback_url), twilio, callback_url)


async def test_a_japanese_sms_is_recorded_sent_and_delivered(rig: Rig, store: SmsStore) -> None:
    record = await rig.sender.send("shop-1", MOBILE, SENDER, JAPANESE_71)
    assert (record.status, record.encoding, record.segments) == (
        SmsStatus.QUEUED, Encoding.UCS2, 2)
    assert record.provider == "twilio" and record.provider_id in rig.fake.messages
    assert rig.fake.received == [{"To": "+819012345678", "From": "+815011112222",
                                  "Body": JAPANESE_71, "StatusCallback": rig.callback_url}]
    credentials = base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    assert rig.fake.auth_headers == [f"Basic {credentials}"]
    sid = record.provider_id
    assert sid is not None
    # callbacks out of order: delivered before sent; the status only moves forward
    assert await rig.fake.deliver(sid, "sending") == 204
    assert await rig.fake.deliver(sid, "delivered") == 204
    assert await rig.fake.deliver(sid, "sent") == 204
    final = await store.get(record.id)
    assert final is not None and final.status is SmsStatus.DELIVERED
    assert await store.events(record.id) == [
        (SmsStatus.PENDING, None), (SmsStatus.QUEUED, None), (SmsStatus.SENDING, None),
        (SmsStatus.DELIVERED, None), (SmsStatus.SENT, None)]
    fetched = await rig.twilio.fetch(sid)
    assert (fetched.provider_id, fetched.status) == (sid, SmsStatus.SENT)


async def test_undelivered_keeps_the_carrier_error(rig: Rig, store: SmsStore) -> None:
    record = await rig.sender.send("shop-1", MOBILE, "MG" + "a" * 32, "Reservation 12345")
    assert record.status is SmsStatus.ACCEPTED and record.encoding is Encoding.GSM7
    assert rig.fake.received[0]["MessagingServiceSid"] == "MG" + "a" * 32
    assert record.provider_id is not None
    assert await rig.fake.deliver(record.provider_id, "undelivered", 30003) == 204
    final = await store.get(record.id)
    assert final is not None
    assert (final.status, final.error_code) == (SmsStatus.UNDELIVERED, 30003)


async def test_callbacks_signed_wrongly_or_unknown_are_refused(rig: Rig, store: SmsStore) -> None:
    record = await rig.sender.send("shop-1", MOBILE, SENDER, "hello")
    sid = record.provider_id
    assert sid is not None
    assert await rig.fake.deliver(sid, "delivered", signature="bm90IGl0") == 403
    after = await store.get(record.id)
    assert after is not None and after.status is SmsStatus.QUEUED
    rig.fake.messages["SM" + "0" * 32] = {**rig.fake.messages[sid], "sid": "SM" + "0" * 32}
    assert await rig.fake.deliver("SM" + "0" * 32, "delivered") == 404
    params = {"MessageSid": sid, "MessageStatus": "lost"}
    async with aiohttp.ClientSession() as session, session.post(
            rig.callback_url, data=params,
            headers={"X-Twilio-Signature": rig.fake.sign(rig.callback_url, params)}) as r:
        body: dict[str, Any] = await r.json()
        assert r.status == 400
    assert body["error"]["id"] == "sms-callback-invalid"
    assert body["error"]["field"] == "MessageStatus"
    with pytest.raises(ValueError, match="MessageSid: required"):
        parse_status_callback({"MessageStatus": "sent"})


async def test_a_refused_message_is_recorded_rejected(rig: Rig, store: SmsStore) -> None:
    rig.fake.unsubscribed.add(str(MOBILE))
    with pytest.raises(Rejected) as err:
        await rig.sender.send("shop-1", MOBILE, SENDER, "hello")
    assert (err.value.http_status, err.value.code) == (400, 21610)
    rows = await store._pool.fetch("SELECT id, status, error_code, error_message "
                                   "FROM sms_messages")
    assert [(r["status"], r["error_code"]) for r in rows] == [("rejected", 21610)]
    assert "unsubscribed" in rows[0]["error_message"]


async def test_a_wrong_token_is_a_rejection_naming_twilios_error(rig: Rig) -> None:
    async with aiohttp.ClientSession() as session:
        wrong = TwilioSms(session, TwilioSettings(ACCOUNT_SID, "0" * 32,
                                                  rig.twilio.settings.base_url))
        with pytest.raises(Rejected, match="HTTP 401, error 20003: Authenticate"):
            await wrong.send(MOBILE, SENDER, "hello")
        assert "0" * 32 not in repr(wrong.settings)


@pytest.mark.parametrize("status", [500, 503, 429, 408])
async def test_provider_trouble_leaves_the_row_pending(rig: Rig, store: SmsStore,
                                                       status: int) -> None:
    rig.fake.fail_next.append(status)
    with pytest.raises(Unavailable, match=f"HTTP {status}"):
        await rig.sender.send("shop-1", MOBILE, SENDER, "hello")
    rows = await store._pool.fetch("SELECT status FROM sms_messages")
    assert [r["status"] for r in rows] == ["pending"]


async def test_an_unreachable_provider_is_unavailable(store: SmsStore) -> None:
    async with aiohttp.ClientSession() as session:
        twilio = TwilioSms(session, TwilioSettings(ACCOUNT_SID, AUTH_TOKEN,
                                                   "http://127.0.0.1:9", timeout_s=2))
        with pytest.raises(Unavailable, match="ClientConnectorError"):
            await SmsSender(store, twilio).send("shop-1", MOBILE, SENDER, "hello")


@pytest.mark.parametrize(("to", "body", "message"), [
    ("03-1234-5678", "hello", "not a mobile number"),
    ("090-1234-5678", "  ", "body: empty"),
    ("090-1234-5678", "a" * 1601, "at most 1600"),
])
async def test_bad_messages_are_refused_before_anything_is_recorded(
        rig: Rig, store: SmsStore, to: str, body: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await rig.sender.send("shop-1", normalise(to), SENDER, body)
    assert await store._pool.fetchval("SELECT count(*) FROM sms_messages") == 0
    assert rig.fake.received == []
