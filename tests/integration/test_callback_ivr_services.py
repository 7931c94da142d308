"""What the IVR verbs reach beyond ARI (callback_server.ivr_services), on real PostgreSQL
and real HTTP servers: a recording moved from Asterisk's spool into the recordings store,
an SMS queued in the background and sent by the SMS worker, a signed webhook and its answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from callback_server.call_ports import CallFacts
from callback_server.ivr import CallWebhook, WebhookAnswered, WebhookFailed
from callback_server.ivr_services import IvrServices, Recordings, Sms, webhook_session
from ivr_platform.recordings import RecordingStore
from ivr_platform.sms_config import SmsSettings
from ivr_platform.sms_outbox import SmsWorker
from ivr_platform.sms_store import SmsSender, SmsStore, migrations
from ivr_platform.sms_twilio import TwilioSettings, TwilioSms
from shared.db import create_pool, migrate_url
from shared.phone import normalise
from shared.signing import SignatureError, Signer, SigningKey, Verifier
from tests import prom
from tests.integration.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio
from tests.integration.test_ivr_audio import tone

ServerFactory = Callable[..., Awaitable[TestServer]]
CALL = CallFacts("acme", "cb-7", "edge-7", normalise("090-1234-5678"))


@pytest.fixture(scope="module")
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate_url(pg_url, [migrations()])
    p = await create_pool(pg_url, max_size=5)
    yield p
    await p.close()


def spooled(spool: Path, name: str, seconds: float) -> None:
    """What Asterisk's record leaves in its spool: 8 kHz 16-bit mono WAV."""
    spool.mkdir(exist_ok=True)
    tone(spool / f"{name}.wav", seconds, channels=1, extra=("-ar", "8000"))


async def test_a_recording_is_moved_from_the_spool_into_the_store(
        pool: asyncpg.Pool, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    store = RecordingStore(pool, tmp_path / "recordings")
    services = IvrServices(recordings=Recordings(store, spool, lambda m: timedelta(days=7)))
    spooled(spool, "cb-7-01-r3", 1.5)
    recording_id = await services.store_recording("cb-7-01-r3", CALL)
    assert recording_id is not None and not (spool / "cb-7-01-r3.wav").exists()
    (row,) = [r for r in await store.list("acme", edge_call_id="edge-7")
              if str(r.id) == recording_id]
    assert (row.call_id, row.callback_id, row.duration_ms) == ("cb-7-01-r3", "cb-7", 1500)
    assert row.expires_at - row.created_at == timedelta(days=7)
    assert store.path(row).exists()
    spooled(spool, "cb-7-01-r4", 0.05)      # a '#' at once: nothing recorded
    assert await services.store_recording("cb-7-01-r4", CALL) is None
    assert not (spool / "cb-7-01-r4.wav").exists()
    assert await services.store_recording("cb-7-01-r5", CALL) is None   # no file
    assert await IvrServices().store_recording("cb-7-01-r3", CALL) is None


async def test_an_sms_is_queued_in_the_background_and_sent_by_the_worker(
        pool: asyncpg.Pool, aiohttp_server: ServerFactory) -> None:
    fake = FakeTwilio()
    provider = await aiohttp_server(fake.app())
    async with aiohttp.ClientSession() as session:
        twilio = TwilioSms(session, TwilioSettings(ACCOUNT_SID, AUTH_TOKEN,
                                                   str(provider.make_url(""))))
        settings = SmsSettings(twilio.settings, normalise("050-1111-2222"))
        services = IvrServices(sms=Sms(SmsSender(SmsStore(pool), twilio.provider), settings))
        services.send_sms("+819012345678", "ご注文 42 を承りました", CALL)
        await services.drain()
        row = await pool.fetchrow("SELECT id, merchant_id, status FROM sms_messages "
                                  "WHERE body = 'ご注文 42 を承りました'")
        assert row is not None and (row["merchant_id"], row["status"]) == ("acme", "pending")
        assert fake.received == []             # queued: the call did not wait for Twilio
        sent = prom.sample("cbgw_ivr_sms_total", merchant="acme", result="sent")
        segments = prom.sample("cbgw_ivr_sms_segments_total", merchant="acme")
        worker = SmsWorker(pool, twilio, settings, owner="test")
        while await worker.run_once():
            pass
    assert prom.sample("cbgw_ivr_sms_total", merchant="acme", result="sent") == sent + 1
    assert prom.sample("cbgw_ivr_sms_segments_total", merchant="acme") == segments + 1
    assert fake.received == [{"To": "+819012345678", "From": "+815011112222",
                              "Body": "ご注文 42 を承りました"}]
    assert await pool.fetchval("SELECT status FROM sms_messages WHERE id = $1",
                               row["id"]) == "queued"


class Crm:
    """A merchant's webhook: verifies the signature, answers what it is told to."""

    def __init__(self, verifier: Verifier) -> None:
        self.verifier = verifier
        self.bodies: list[bytes] = []
        self.answer: web.Response = web.json_response({"plan": "gold", "visits": 3,
                                                       "vip": True, "other": "x"})
        self.delay_s = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            self.verifier.verify("POST", request.path_qs, body, request.headers)
        except SignatureError as exc:
            return web.json_response({"error": exc.error_id}, status=401)
        self.bodies.append(body)
        await asyncio.sleep(self.delay_s)
        return self.answer


async def test_a_webhook_is_signed_and_its_answer_sets_variables(
        aiohttp_server: ServerFactory) -> None:
    key = SigningKey.generate("cb-1")
    crm = Crm(Verifier({"cb-1": key.public()}))
    app = web.Application()
    app.router.add_post("/ivr", crm.handle)
    server = await aiohttp_server(app)
    url = str(server.make_url("/ivr?shop=1"))
    ask = CallWebhook("cb-7-01-w2", url, (("caller", "+819012345678"), ("order", "42")),
                      ("plan", "visits", "vip"), 1.0)
    before = webhooks()
    async with aiohttp.ClientSession() as session:
        services = IvrServices(session=session, signer=Signer([key]), private_ok=True)
        assert await services.call_webhook(ask, CALL) == WebhookAnswered(
            "cb-7-01-w2", (("plan", "gold"), ("visits", "3")))
        assert b'"variables": {"caller": "+819012345678", "order": "42"}' in crm.bodies[0]
        crm.delay_s = 2.0
        failed = await services.call_webhook(ask, CALL)
        assert isinstance(failed, WebhookFailed) and "TimeoutError" in failed.reason
        crm.delay_s, crm.answer = 0.0, web.json_response({"error": "no"}, status=404)
        assert await services.call_webhook(ask, CALL) == WebhookFailed("cb-7-01-w2",
                                                                       "HTTP 404")
        other = IvrServices(session=session, signer=Signer([SigningKey.generate("x")]),
                            private_ok=True)
        crm.answer = web.json_response({})
        assert await other.call_webhook(ask, CALL) == WebhookFailed(   # another key
            "cb-7-01-w2", "HTTP 401")
    # counted on the site's /metrics by outcome
    assert webhooks(before) == {"answered": 1, "unavailable": 1, "rejected": 2, "refused": 0}


async def test_a_webhook_never_reaches_the_sites_own_network(
        aiohttp_server: ServerFactory) -> None:
    """A merchant's flow cannot make the site POST to loopback or private addresses
    (ARI, the database's neighbours): neither as an IP literal nor by a name."""
    key = SigningKey.generate("cb-1")
    crm = Crm(Verifier({"cb-1": key.public()}))
    app = web.Application()
    app.router.add_post("/ivr", crm.handle)
    server = await aiohttp_server(app)
    by_name = CallWebhook("cb-7-01-w2", f"http://localhost:{server.port}/ivr", (), (), 1.0)
    async with aiohttp.ClientSession() as plain:     # the name does lead to the server
        services = IvrServices(session=plain, signer=Signer([key]), private_ok=True)
        assert isinstance(await services.call_webhook(by_name, CALL), WebhookAnswered)
    crm.bodies.clear()
    before = webhooks()
    async with webhook_session() as session:
        services = IvrServices(session=session, signer=Signer([key]))
        failed = await services.call_webhook(by_name, CALL)   # the resolver keeps no address
        assert isinstance(failed, WebhookFailed) and "localhost" in failed.reason
        for host in ("127.0.0.1", "[::1]", "10.0.0.7", "169.254.169.254"):
            ask = CallWebhook("cb-7-01-w2", f"http://{host}:{server.port}/ivr", (), (), 1.0)
            failed = await services.call_webhook(ask, CALL)
            assert isinstance(failed, WebhookFailed), host
            assert failed.reason.endswith("is not a public address"), failed
    assert crm.bodies == []
    assert webhooks(before) == {"answered": 0, "unavailable": 1, "rejected": 0, "refused": 4}


def webhooks(before: dict[str, float] | None = None) -> dict[str, float]:
    """``cbgw_ivr_webhooks_total`` of the merchant by outcome (since ``before``)."""
    now = {outcome: prom.sample("cbgw_ivr_webhooks_total", merchant="acme", outcome=outcome)
           for outcome in ("answered", "unavailable", "rejected", "refused")}
    return {k: v - (before or {}).get(k, 0.0) for k, v in now.items()}
