"""A postpaid charge's dunning notices reach the merchant's notification channel: a card
declined (real localstripe) queues 決済失敗通知 in the attempt's transaction, the site's
notification worker delivers it to a local Slack webhook with the customer's number, the
account, the amount and Stripe's reason; the retry paid with a new card sends 決済回復通知;
each attempt is notified once (real PostgreSQL with the callback site's migrations). A
merchant in ``[sms] dunning_merchants`` also has its customer told by SMS: queued in the
attempt's transaction, sent once by the SMS worker to the local Twilio API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import asyncpg
import pytest
import stripe
from aiohttp.test_utils import TestServer

from advisors.record_store import ConsultationRecords
from billing.postpaid import Postpaid
from billing.rating import Terms
from callback_server.dunning_notify import DunningNotifications, sms_text
from ivr_platform.notify_compose import Composer
from ivr_platform.notify_config import Channel, Event, Kind, NotifySettings
from ivr_platform.notify_outbox import NotificationWorker
from ivr_platform.notify_webhooks import SlackWebhook, WebhookSettings
from ivr_platform.phonebook import Phonebook
from ivr_platform.sms_config import SmsSettings
from ivr_platform.sms_outbox import SmsWorker
from ivr_platform.sms_twilio import TwilioSettings, TwilioSms
from shared.phone import normalise
from tests.integration import billing_db
from tests.integration.fake_chat import SLACK_PATH, FakeChat
from tests.integration.fake_twilio import ACCOUNT_SID, AUTH_TOKEN, FakeTwilio
from tests.integration.localstripe import client_for, localstripe_fixture
from tests.integration.test_billing_postpaid import registered
from tests.integration.test_ivr_notify_outbox import chat, pool
from tests.unit.test_advisors_records import answered

pytestmark = pytest.mark.integration
localstripe = localstripe_fixture()
__all__ = ["chat", "pool"]          # the fixtures, as the notification tests set them up


async def test_a_declined_charge_and_its_recovery_are_sent_to_the_merchants_channel(
        pool: asyncpg.Pool, chat: tuple[FakeChat, str], localstripe: int) -> None:
    fake, base = chat
    await billing_db.truncate(pool, "consultations")
    client: stripe.StripeClient = client_for(localstripe)
    hook = WebhookSettings(base + SLACK_PATH)
    settings = NotifySettings(channels=(Channel(
        "acme", "slack", Kind.SLACK, frozenset({Event.CHARGE_FAILED, Event.CHARGE_RECOVERED}),
        hook),), poll_s=0.05, backoff_s=0.1, max_backoff_s=0.2)
    record = answered()                              # the customer +819012345678, 95 s
    await ConsultationRecords(pool).save(record)
    await registered(pool, client, "member-42", "4000000000000341")   # declined
    postpaid = Postpaid(pool, client, retry_after_s=(3600,),
                        notices=DunningNotifications(settings))
    failed = await postpaid.charge("acme", "member-42", record.consultation_id, 95,
                                   Terms(100), by="calls")
    assert failed is not None and failed.state == "failed"
    async with aiohttp.ClientSession() as session:
        worker = NotificationWorker(pool, settings, {("acme", "slack"): SlackWebhook(
            session, hook)}, Composer(settings, Phonebook(pool), None), owner="w1")
        assert await worker.run_once() == 1
        [sent] = fake.slack
        assert sent["text"].splitlines()[0] == "【決済失敗通知】"
        lines = sent["text"].splitlines()[1:]
        assert lines[0] == "お客様番号: 090-1234-5678"
        assert lines[2:] == ["口座: member-42", "金額: 200円", "決済回数: 1",
                             "理由: card_declined", f"相談ID: {record.consultation_id}"]
        assert sent["blocks"][0]["text"]["text"] == "決済失敗通知 090-1234-5678"
        await registered(pool, client, "member-42")                    # a new card
        paid = await postpaid.retry("acme", failed.id)
        assert paid.state == "paid"
        assert await worker.run_once() == 1
        assert await worker.run_once() == 0                            # each once
    recovered = fake.slack[1]["text"].splitlines()
    assert recovered[0] == "【決済回復通知】"
    assert recovered[3:] == ["口座: member-42", "金額: 200円", "決済回数: 2",
                             f"相談ID: {record.consultation_id}"]


async def test_the_customer_of_a_merchant_that_opted_in_is_told_by_sms(
        pool: asyncpg.Pool, localstripe: int,
        aiohttp_server: Callable[..., Awaitable[TestServer]]) -> None:
    await billing_db.truncate(pool, "consultations", "sms_messages")
    fake = FakeTwilio()
    provider = await aiohttp_server(fake.app())
    sms = SmsSettings(TwilioSettings(ACCOUNT_SID, AUTH_TOKEN, str(provider.make_url(""))),
                      normalise("050-1111-2222"), dunning_merchants=frozenset({"acme"}))
    client: stripe.StripeClient = client_for(localstripe)
    record = answered()                              # the customer +819012345678, 95 s
    await ConsultationRecords(pool).save(record)
    await registered(pool, client, "member-42", "4000000000000341")   # declined
    postpaid = Postpaid(pool, client, retry_after_s=(3600,),
                        notices=DunningNotifications(None, sms))
    failed = await postpaid.charge("acme", "member-42", record.consultation_id, 95,
                                   Terms(100), by="calls")
    assert failed is not None and failed.state == "failed"
    queued = await pool.fetch("SELECT merchant_id, to_number, sender, body, status "
                              "FROM sms_messages ORDER BY id")
    assert [tuple(r) for r in queued] == [("acme", "+819012345678", "+815011112222",
                                           sms_text("charge-failed", 200), "pending")]
    async with aiohttp.ClientSession() as session:
        worker = SmsWorker(pool, TwilioSms(session, sms.twilio), sms, owner="w1")
        assert await worker.run_once() == 1
        assert [m["Body"] for m in fake.received] == [
            "ご利用料金200円のカード決済ができませんでした。ご登録のカードをご確認ください。"]
        await registered(pool, client, "member-42")                    # a new card
        paid = await postpaid.retry("acme", failed.id)
        assert paid.state == "paid"
        assert await worker.run_once() == 1
        assert await worker.run_once() == 0                            # each once
    assert [m["Body"] for m in fake.received][1:] == [
        "ご利用料金200円のお支払いを確認いたしました。ありがとうございました。"]
    statuses = await pool.fetch("SELECT status FROM sms_messages ORDER BY id")
    assert [r["status"] for r in statuses] == ["queued", "queued"]


async def test_no_sms_for_a_merchant_that_did_not_opt_in(pool: asyncpg.Pool,
                                                        localstripe: int) -> None:
    await billing_db.truncate(pool, "consultations", "sms_messages")
    sms = SmsSettings(TwilioSettings(ACCOUNT_SID, AUTH_TOKEN, "http://127.0.0.1:9"),
                      normalise("050-1111-2222"), dunning_merchants=frozenset({"bento"}))
    client: stripe.StripeClient = client_for(localstripe)
    record = answered()
    await ConsultationRecords(pool).save(record)
    await registered(pool, client, "member-43", "4000000000000341")
    postpaid = Postpaid(pool, client, notices=DunningNotifications(None, sms))
    failed = await postpaid.charge("acme", "member-43", record.consultation_id, 95,
                                   Terms(100), by="calls")
    assert failed is not None and failed.state == "failed"
    assert await pool.fetchval("SELECT count(*) FROM sms_messages") == 0
    assert await pool.fetchval("SELECT count(*) FROM billing_notices WHERE kind = "
                               "'charge-failed' AND detail LIKE 'attempt 1 failed%'") >= 1
