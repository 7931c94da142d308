"""SMS through the durable outbox and the Twilio adapter against a local server speaking
Twilio's API, recorded in PostgreSQL: a row accepted, the SMS worker sending it (once,
across a provider that is down and a restart, and after a crash between Twilio's answer and
its record), delivery callbacks (signed) on the site's route, and the maximum age."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port

from ivr_platform.delivery import Rejected
from ivr_platform.sms import Encoding, SmsStatus
from ivr_platform.sms_config import SmsSettings
from ivr_platform.sms_http import STATUS_PATH, install
from ivr_platform.sms_outbox import SmsWorker
from ivr_platform.sms_store import SmsRecord, SmsSender, SmsStore, migrations
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
    """The local Twilio, the site's settings (its status callback URL on ``port``) and a
    sender that queues messages."""

    def __init__(self, fake: FakeTwilio, base_url: str, port: int, pool: asyncpg.Pool,
                 store: SmsStore) -> None:
        self.fake, self.port, self.pool, self.store = fake, port, pool, store
        self.callback_url = f"http://127.0.0.1:{port}{STATUS_PATH}"
        self.settings = SmsSettings(
            TwilioSettings(ACCOUNT_SID, AUTH_TOKEN, base_url, timeout_s=2), SENDER,
            status_callback_url=self.callback_url, backoff_s=0.2, max_backoff_s=0.4,
            lease_s=8, poll_s=0.1)
        self.sender = SmsSender(store, "twilio")

    @asynccontextmanager
    async def site(self, settings: SmsSettings | None = None, *,
                   owner: str = "site-1") -> AsyncIterator[None]:
        """The callback site's SMS part running (its worker, its route) until the block
        ends: a process started, then stopped."""
        app = web.Application(middlewares=[error_middleware])
        install(app, settings or self.settings, lambda a: self.pool, owner=owner)
        server = TestServer(app, port=self.port)
        await server.start_server()
        try:
            yield
        finally:
            await server.close()

    @asynccontextmanager
    async def worker(self, owner: str) -> AsyncIterator[SmsWorker]:
        async with aiohttp.ClientSession() as session:
            yield SmsWorker(self.pool, TwilioSms(session, self.settings.twilio), self.settings,
                            owner=owner)

    async def settled(self, sms_id: int, timeout_s: float = 20.0) -> SmsRecord:
        """The row once it is no longer pending."""
        for _ in range(int(timeout_s / 0.05)):
            record = await self.store.get(sms_id)
            assert record is not None
            if record.status is not SmsStatus.PENDING:
                return record
            await asyncio.sleep(0.05)
        raise AssertionError(f"sms {sms_id} still pending")


@pytest.fixture
async def rig(store: SmsStore, pool: asyncpg.Pool,
              aiohttp_server: ServerFactory) -> Rig:
    fake = FakeTwilio()
    provider = await aiohttp_server(fake.app())
    return Rig(fake, str(provider.make_url("")), unused_port(), pool, store)


async def attempts(pool: asyncpg.Pool, sms_id: int) -> tuple[int, str | None]:
    row = await pool.fetchrow("SELECT attempts, last_error FROM sms_messages WHERE id = $1",
                              sms_id)
    assert row is not None
    return row["attempts"], row["last_error"]


async def test_a_japanese_sms_is_queued_sent_once_and_delivered(rig: Rig,
                                                                store: SmsStore) -> None:
    queued = await rig.sender.send("shop-1", MOBILE, SENDER, JAPANESE_71)
    assert (queued.status, queued.encoding, queued.segments) == (
        SmsStatus.PENDING, Encoding.UCS2, 2)
    async with rig.site():
        record = await rig.settled(queued.id)
        assert record.status is SmsStatus.QUEUED
        assert record.provider == "twilio" and record.provider_id in rig.fake.messages
        assert rig.fake.received == [{"To": "+819012345678", "From": "+815011112222",
                                      "Body": JAPANESE_71,
                                      "StatusCallback": rig.callback_url}]
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
    assert len(rig.fake.received) == 1


async def test_undelivered_keeps_the_carrier_error(rig: Rig, store: SmsStore) -> None:
    service = "MG" + "a" * 32
    queued = await rig.sender.send("shop-1", MOBILE, service, "Reservation 12345")
    async with rig.site():
        record = await rig.settled(queued.id)
        assert record.status is SmsStatus.ACCEPTED and record.encoding is Encoding.GSM7
        assert rig.fake.received[0]["MessagingServiceSid"] == service
        assert record.provider_id is not None
        assert await rig.fake.deliver(record.provider_id, "undelivered", 30003) == 204
    final = await store.get(record.id)
    assert final is not None
    assert (final.status, final.error_code) == (SmsStatus.UNDELIVERED, 30003)


async def test_callbacks_signed_wrongly_or_unknown_are_refused(rig: Rig, store: SmsStore) -> None:
    queued = await rig.sender.send("shop-1", MOBILE, SENDER, "hello")
    async with rig.site():
        record = await rig.settled(queued.id)
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
        params = {"MessageSid": sid, "MessageStatus": "delivered"}
        async with aiohttp.ClientSession() as session, session.post(   # no signature
                rig.callback_url, data=params) as r:
            assert r.status == 403
            assert (await r.json())["error"]["id"] == "sms-signature-invalid"
    after = await store.get(record.id)
    assert after is not None and after.status is SmsStatus.QUEUED
    with pytest.raises(ValueError, match="MessageSid: required"):
        parse_status_callback({"MessageStatus": "sent"})
    async with rig.site(replace(rig.settings, status_callback_url=None)), \
            aiohttp.ClientSession() as session, session.post(rig.callback_url,
                                                             data=params) as r:
        assert r.status == 404
        assert (await r.json())["error"]["id"] == "sms-disabled"


async def test_a_refused_message_is_recorded_rejected_and_not_sent_again(
        rig: Rig, store: SmsStore) -> None:
    rig.fake.unsubscribed.add(str(MOBILE))
    queued = await rig.sender.send("shop-1", MOBILE, SENDER, "hello")
    async with rig.site():
        record = await rig.settled(queued.id)
        await asyncio.sleep(0.5)             # several polls: nothing claims it again
    assert (record.status, record.error_code) == (SmsStatus.REJECTED, 21610)
    assert record.error_message is not None and "unsubscribed" in record.error_message
    assert len(rig.fake.received) == 1
    assert await store.events(record.id) == [(SmsStatus.PENDING, None),
                                             (SmsStatus.REJECTED, 21610)]


async def test_a_wrong_token_is_a_rejection_naming_twilios_error(rig: Rig) -> None:
    async with aiohttp.ClientSession() as session:
        wrong = TwilioSms(session, TwilioSettings(ACCOUNT_SID, "0" * 32,
                                                  rig.settings.twilio.base_url))
        with pytest.raises(Rejected, match="HTTP 401, error 20003: Authenticate"):
            await wrong.send(MOBILE, SENDER, "hello")
        assert "0" * 32 not in repr(wrong.settings)


async def test_provider_down_then_a_restart_sends_the_message_once(rig: Rig,
                                                                   store: SmsStore) -> None:
    """Twilio unreachable while the first process runs: the row stays pending with its
    attempts; the process stops; the next one, with Twilio back, sends it once."""
    down = replace(rig.settings, twilio=replace(rig.settings.twilio,
                                                base_url=f"http://127.0.0.1:{unused_port()}"))
    queued = await rig.sender.send("shop-1", MOBILE, SENDER, "ご予約を承りました")
    async with rig.site(down, owner="site-1"):
        for _ in range(200):
            if (await attempts(rig.pool, queued.id))[0] >= 3:
                break
            await asyncio.sleep(0.05)
    tried, error = await attempts(rig.pool, queued.id)
    assert tried >= 3 and error is not None and "ClientConnectorError" in error
    still = await store.get(queued.id)
    assert still is not None and still.status is SmsStatus.PENDING
    rig.fake.fail_next = [503, 429]          # back, but busy twice: retried on the backoff
    async with rig.site(owner="site-2"):
        record = await rig.settled(queued.id)
        await asyncio.sleep(0.5)
    assert record.status is SmsStatus.QUEUED and record.provider_id is not None
    assert [m["Body"] for m in rig.fake.received] == ["ご予約を承りました"]
    assert list(rig.fake.messages) == [record.provider_id]
    assert (await attempts(rig.pool, queued.id))[0] >= tried + 3


async def test_a_crash_between_twilios_answer_and_its_record_sends_nothing_again(
        rig: Rig, store: SmsStore) -> None:
    """A worker claims the message and Twilio takes it, but the process dies before the
    SID is recorded; once the lease runs out the next worker finds it at Twilio."""
    earlier = await rig.sender.send("shop-1", MOBILE, SENDER, "ご予約を承りました")
    async with rig.worker("site-1") as first:
        assert await first.run_once() == 1     # the same text sent before: a SID recorded
    known = await store.get(earlier.id)
    assert known is not None and known.provider_id is not None
    queued = await rig.sender.send("shop-1", MOBILE, SENDER, "ご予約を承りました")
    async with rig.worker("site-1") as first:
        (claimed,) = await first._claim()
        assert claimed.id == queued.id and claimed.in_doubt_since is None
        await first.provider.send(claimed.to, claimed.sender, claimed.body)   # then dies
    taken = list(rig.fake.messages)[-1]
    assert len(rig.fake.received) == 2 and taken != known.provider_id
    await rig.pool.execute("UPDATE sms_messages SET leased_until = now() WHERE id = $1",
                           queued.id)
    async with rig.worker("site-2") as second:
        assert await second.run_once() == 1
    record = await store.get(queued.id)
    assert record is not None and (record.status, record.provider_id) == (
        SmsStatus.QUEUED, taken)
    assert len(rig.fake.received) == 2
    assert await store.events(queued.id) == [(SmsStatus.PENDING, None),
                                             (SmsStatus.QUEUED, None)]


async def test_a_message_past_its_maximum_age_is_expired_unsent(rig: Rig,
                                                                store: SmsStore) -> None:
    queued = await rig.sender.send("shop-1", MOBILE, SENDER, "too late")
    await rig.pool.execute("UPDATE sms_messages SET created_at = now() - interval '2 days' "
                           "WHERE id = $1", queued.id)
    async with rig.worker("site-1") as worker:
        assert await worker.run_once() == 1
    record = await store.get(queued.id)
    assert record is not None and record.status is SmsStatus.EXPIRED
    assert record.error_message is not None and "86400 s" in record.error_message
    assert rig.fake.received == []


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
