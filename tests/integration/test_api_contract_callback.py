"""The callback site's HTTP API (intake, call-center, guard operator API, rates) against its
own /openapi.json (schemathesis) and a raw fuzz of every route: real PostgreSQL, signed link
requests, the merchant's and the operator's tokens; nothing answers 5xx. Mounted as
create_app mounts them, the IVR flows routes included."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web

import advisors
import billing
import ivr_platform
from advisors import record_store
from advisors.edge_phones import install as install_edge_phones
from advisors.http import install as install_advisors
from advisors.phone import install as install_phone_presence
from advisors.record_store import ConsultationRecords
from advisors.session_http import install as install_sessions
from billing import records as billing_records
from billing.card_http import install as install_cards
from billing.http import install as install_billing
from billing.settings import BillingSettings
from billing.topup_link_http import install as install_topup_links
from callback_server.advisor_desk import AdvisorDesk
from callback_server.click_http import ClickIntake
from callback_server.click_http import install as install_click_to_call
from callback_server.click_web_http import install as install_click_web
from callback_server.consult_billing import ConsultBilling
from callback_server.consult_control import install as install_consult_control
from callback_server.flows_http import install as install_flows
from callback_server.flows_store import FlowStore
from callback_server.guard.http import GUARD_KEY, install
from callback_server.guard.service import Guard
from callback_server.guard.settings import GuardSettings
from callback_server.http import attach_store, create_http_app
from callback_server.ivr_flow import FLOWS_DIR
from callback_server.routing import Routing
from callback_server.store import CallbackStore
from ivr_platform.audio import AudioLimits
from ivr_platform.media_config import MediaSettings
from ivr_platform.media_http import install as install_media
from ivr_platform.notify_config import NotifySettings
from ivr_platform.notify_http import install as install_notify
from ivr_platform.phonebook import Entry, Phonebook
from ivr_platform.recordings import RecordingStore
from ivr_platform.sms_config import SmsSettings
from ivr_platform.sms_http import install as install_sms
from ivr_platform.sms_twilio import TwilioSettings
from routing_rates.carriers import Carrier
from routing_rates.http import routes as rates_routes
from routing_rates.index import Row
from routing_rates.service import RatingService
from shared import outbox_operator
from shared.db import migrate_url, package_migrations
from shared.link import OPERATOR_PREFIX
from shared.metrics_http import install as install_metrics
from shared.openapi import add_operations
from shared.phone import E164
from shared.signing import Signer, Verifier
from tests.integration import callback_db
from tests.integration.api_contract import (
    Served,
    SigningSession,
    assert_keeps_its_document,
    assert_no_5xx,
    document,
    serving,
)
from tests.integration.localstripe import localstripe_fixture
from tests.integration.test_billing_card_http import settings_for
from tests.integration.test_callback_http import MERCHANTS, PEER_KEY, TOKEN, body
from tests.integration.test_ivr_audio import tone
from tests.unit.test_advisors_records import answered
from tests.unit.test_rates_decision import FX, INBOUND, NTT, usd
from web.advisor_page import install as install_advisor_page
from web.click_page import install as install_click_page
from web.operator_page import install as install_operator_page
from web.pages import install as install_pages

pytestmark = pytest.mark.integration

OPERATOR = "operator-contract-token"
OPERATOR_SHA256 = hashlib.sha256(OPERATOR.encode()).hexdigest()
pool, clean = callback_db.fixtures(MERCHANTS)
localstripe = localstripe_fixture()


def make_app(pool: asyncpg.Pool, db_url: str, media: MediaSettings, stripe_port: int
             ) -> web.Application:
    """As the site's composition root mounts them: intake and call-center API, the guard
    (operator API, intake screening), the rates routes, /metrics, the outbox's dead
    letters, the advisors' admin API and an operator's control of consultations, presence
    by phone, the billing API with its card routes (against a real localstripe), its
    top-up links and the card and top-up pages, the media API and the notifications'
    phonebook and deliveries, the advisor's and the operators' pages and their session
    routes, click-to-call
    (``POST /v1/consultations``) and the customer's click-to-call page and its routes."""
    guard = Guard(pool, GuardSettings(operator_token_sha256=OPERATOR_SHA256))
    app = create_http_app(merchants=MERCHANTS,
                          verifier=Verifier({PEER_KEY.key_id: PEER_KEY.public()}))
    install(app)
    attach_store(app, CallbackStore(pool, owner="contract", guard=guard))
    app[GUARD_KEY] = guard
    carrier = Carrier("carrier-a", "A", dial_string="PJSIP/{digits}@carrier-a")
    rates = RatingService.from_rows([carrier, INBOUND], {
        "carrier-a": [Row("8190", "JP mobile", usd("0.1398"))], "ntt-freedial": NTT}, FX)
    add_operations(app, rates_routes(rates))
    install_metrics(app, lambda _: pool)
    outbox_operator.add_routes(app)
    install_advisors(app, lambda _: (db_url, pool), operators={})
    install_phone_presence(app, lambda _: pool)
    install_edge_phones(app, lambda _: pool)
    install_billing(app, lambda _: pool)
    install_media(app, media, lambda _: pool)
    install_flows(app, lambda _: pool)
    install_consult_control(app, lambda _: pool)
    install_notify(app, NotifySettings(), lambda _: pool, owner="contract")
    sms = SmsSettings(   # the status route checks Twilio's signature
        TwilioSettings("AC" + "0" * 32, "t" * 32, "http://127.0.0.1:9"), "MG" + "0" * 32,
        status_callback_url="https://cb.example.jp/v1/sms/twilio/status")
    install_sms(app, sms, lambda _: pool, owner="contract")
    install_sessions(app)
    install_advisor_page(app)
    install_operator_page(app)
    install_click_to_call(app, lambda _: ClickIntake(
        CallbackStore(pool, owner="contract"), AdvisorDesk(pool, Routing(None, ())), guard,
        ConsultBilling(pool, BillingSettings()), {m.id: m for m in MERCHANTS}))
    install_click_web(app, sms)
    install_click_page(app)
    install_cards(app, lambda _: pool, settings_for(stripe_port))
    install_topup_links(app)
    install_pages(app, {m.id: m.name for m in MERCHANTS})
    app[outbox_operator.OPERATOR_KEY] = outbox_operator.OutboxOperator(pool, OPERATOR_SHA256)
    return app


@pytest.fixture
async def served(clean: asyncpg.Pool, pg_url: str, tmp_path: Path, localstripe: int
                 ) -> AsyncIterator[Served]:
    await migrate_url(pg_url, [package_migrations("advisors", advisors.__file__),
                               record_store.MIGRATIONS,
                               package_migrations("billing", billing.__file__),
                               billing_records.MIGRATIONS,
                               package_migrations("ivr_platform", ivr_platform.__file__)])
    secret = tmp_path / "links.secret"
    secret.write_bytes(b"k" * 32)
    media = MediaSettings(guidance_dir=tmp_path / "guidance", recordings_dir=tmp_path / "rec",
                          limits=AudioLimits(max_bytes=100_000, max_seconds=10),
                          link_secret_file=secret)
    await RecordingStore(clean, tmp_path / "rec").add(   # to read back, with its link
        "acme", tone(tmp_path / "call.wav", 1.0, channels=1), retention=timedelta(days=1),
        edge_call_id="edge-contract-1")
    await ConsultationRecords(clean).save(answered())  # a record to read back
    await clean.execute("TRUNCATE ivr_flow_active, ivr_flow_versions")
    await FlowStore(clean).upload(  # a flow version to read back and activate
        "acme", (FLOWS_DIR / "order.toml").read_text(), "order.toml", "contract")
    await Phonebook(clean).put("acme", Entry(E164("819012345678"), "株式会社サンプル", "山田"))
    session = SigningSession(Signer([PEER_KEY]), {"/v1/": TOKEN, "/v1/guard/": OPERATOR,
                                                      OPERATOR_PREFIX: OPERATOR})
    a_callback = [("/v1/link/callbacks", body("edge-contract-1"))]  # to read back
    async with serving(make_app(clean, pg_url, media, localstripe), session,
                       a_callback) as served:
        yield served


async def test_the_callback_site_keeps_its_openapi_document(served: Served) -> None:
    await assert_keeps_its_document(served)


async def test_no_route_of_the_callback_site_answers_5xx_to_arbitrary_input(
        served: Served) -> None:
    await assert_no_5xx(served)


async def test_both_runs_cover_the_pages_and_their_routes(served: Served) -> None:
    """The pages the site serves to browsers and the routes behind them are in the
    document both runs read (the event stream aside: a valid request stays open)."""
    paths = set(document(served.app)["paths"])
    assert {"/advisor", "/advisor/signin/{token}", "/v1/advisor/presence",
            "/v1/advisor/signout", "/v1/advisors/{advisor_id}/signin-links",
            "/m/{merchant}/advisors", "/v1/m/{merchant}/phone-codes",
            "/v1/m/{merchant}/phone-verifications", "/v1/m/{merchant}/calls",
            "/v1/m/{merchant}/calls/{callback_id}", "/v1/consultations", "/card/{token}",
            "/topup/{token}", "/v1/billing/card-setup/{token}/confirm", "/operator",
            "/operator/signin/{token}", "/v1/operator/board", "/v1/operator/signout",
            "/v1/operator/advisors/{advisor_id}/presence"} <= paths
