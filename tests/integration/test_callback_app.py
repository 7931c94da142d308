"""The composition root: the server starts and serves with Asterisk unreachable."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from callback_server.app import WORKER_KEY, create_app, create_intake_app
from callback_server.config import CallbackSettings
from callback_server.guard import caps
from callback_server.guard import store as guard_store
from callback_server.guard.caps import CapLimits
from callback_server.http import STORE_KEY
from callback_server.schemas import IntakeRequest
from shared.phone import E164
from tests import prom

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def settings(pki: Path, db_url: str, tmp_path: Path) -> CallbackSettings:
    text = (REPO / "deploy/callback.example.toml").read_text().replace("../var/pki", str(pki))
    path = tmp_path / "callback.toml"
    path.write_text(text)
    return CallbackSettings.load(path, environ={
        "CALLBACK__DATABASE__URL": db_url,
        "CALLBACK__ARI__URL": "http://127.0.0.1:9",        # nothing listens: unreachable
        "CALLBACK__RATES__ENABLED": "false",
        "CALLBACK__PEER__ROUTES": '[{name = "internet", url = "http://127.0.0.1:9"}]',
    })


async def test_starts_and_says_so_when_asterisk_is_unreachable(
        pki_dir: Path, pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    app = create_app(settings(pki_dir, pg_url, tmp_path))
    async with TestClient(TestServer(app)) as client:
        client: TestClient[Any, Any]
        resp = await client.get("/healthz")
        body = await resp.json()
        assert resp.status == 200 and body["database"] == "ok"
        assert body["ari"] == "connecting"
        assert app[WORKER_KEY].calls == {}
    assert any("not reachable" in r.getMessage() for r in caplog.records)


async def test_metrics_read_the_call_back_queue_by_merchant_and_state(
        pki_dir: Path, pg_url: str, tmp_path: Path) -> None:
    """An intake process (no dialer: its jobs stay queued) reads them on a scrape of ``GET
    /metrics``: one due for 30 s, one scheduled for later."""
    s = settings(pki_dir, pg_url, tmp_path)
    app = create_intake_app(s)
    async with TestClient(TestServer(app)) as client:
        client: TestClient[Any, Any]
        store, now = app[STORE_KEY], datetime.now(UTC)
        for edge_call_id, caller in (("due-1", "819011112222"), ("later-1", "819033334444")):
            request = IntakeRequest(edge_call_id, "acme", E164(caller), None, now, now, None)
            await store.intake(str(uuid.uuid4()), request, s.merchants[0])
        await store.pool.execute(
            "UPDATE callback_requests SET next_attempt_at = now() + CASE edge_call_id "
            "WHEN 'due-1' THEN interval '-30 seconds' ELSE interval '1 hour' END")
        text = await (await client.get("/metrics")).text()
        # the processes share their metrics through a directory now, not a table
        assert await store.pool.fetchval("SELECT to_regclass('process_metrics')") is None
    assert prom.scraped(text, "cbgw_metrics_reading_up", reading="callback_queue") == 1
    assert {state: prom.scraped(text, "cbgw_callback_queue_jobs", merchant="acme",
                                state=state) for state in ("due", "scheduled", "dialing")} \
        == {"due": 1, "scheduled": 1, "dialing": 0}
    waited = prom.scraped(text, "cbgw_callback_queue_oldest_due_seconds", merchant="acme")
    assert 30 <= waited < 90


async def test_metrics_show_a_tripped_cap_until_it_is_reset(
        pki_dir: Path, pg_url: str, tmp_path: Path) -> None:
    """``cbgw_guard_caps_tripped{scope, kind}`` is 1 while a cap is latched, whichever
    process tripped it (the alert rule CbgwGuardCapTripped reads it), and gone once an
    operator resets it; the trips counter at 0 meanwhile (another process tripped it)."""
    app = create_intake_app(settings(pki_dir, pg_url, tmp_path))
    async with TestClient(TestServer(app)) as client:
        client: TestClient[Any, Any]
        pool, now = app[STORE_KEY].pool, datetime.now(UTC)
        verdict = caps.reached("trunk:carrier-b", "spend_daily",
                               CapLimits(spend_daily=Decimal("100")),
                               caps.Usage(channels=0, cps=0, spend=Decimal("120")))
        assert verdict is not None
        async with pool.acquire() as conn:
            assert await guard_store.trip(conn, "trunk:carrier-b", "spend_daily", verdict, now)
        tripped = await (await client.get("/metrics")).text()
        async with pool.acquire() as conn:
            assert await guard_store.reset_caps(conn, "trunk:carrier-b", None, "noc", now,
                                                now.date()) == 1
        reset = await (await client.get("/metrics")).text()
    assert prom.scraped(tripped, "cbgw_metrics_reading_up", reading="guard") == 1
    assert prom.scraped(tripped, "cbgw_guard_caps_tripped", scope="trunk:carrier-b",
                        kind="spend_daily") == 1
    assert prom.scraped_total(reset, "cbgw_guard_caps_tripped") == 0
    assert prom.scraped(reset, "cbgw_metrics_reading_up", reading="guard") == 1


def test_example_config_loads(pki_dir: Path, tmp_path: Path) -> None:
    s = settings(pki_dir, "postgresql://x@127.0.0.1/x", tmp_path)
    assert s.merchants[0].id == "acme" and "order" in s.flows
    assert [r.carrier_id for r in s.callback.static_routes] == ["carrier-a", "carrier-b"]
    assert s.ari.app == "callback"


async def test_the_site_serves_the_advisors_api_on_its_own_migrations(
        pki_dir: Path, pg_url: str, tmp_path: Path) -> None:
    """The composition root applies the advisors migration set and mounts its routes: an
    advisor added with the example merchant's token (sha256 of "test") is listed. Its SIP
    contact is the merchant's operator extension (the edge's operator phone); another SIP
    user, of which the edge has told of no endpoint, is refused."""
    app = create_app(settings(pki_dir, pg_url, tmp_path), with_ari=False)
    auth = {"Authorization": "Bearer test"}
    async with TestClient(TestServer(app)) as client:
        client: TestClient[Any, Any]
        resp = await client.post("/v1/advisors", headers=auth, json={
            "display_name": "星野", "code": "7001", "price_per_minute_yen": 250,
            "contact": {"kind": "sip", "user": "hoshino"}})
        refused = await resp.json()
        assert resp.status == 400 and refused["error"]["field"] == "contact.user", refused
        resp = await client.post("/v1/advisors", headers=auth, json={
            "display_name": "星野", "code": "7001", "price_per_minute_yen": 250,
            "contact": {"kind": "sip", "user": "operator"}})
        assert resp.status == 201, await resp.text()
        listed = await (await client.get("/v1/advisors", headers=auth)).json()
        assert [a["code"] for a in listed["items"]] == ["7001"]
        assert (await client.put(f"/v1/advisors/{listed['items'][0]['id']}/presence",
                                 json={"presence": "online"}, headers=auth)).status == 200
        text = await (await client.get("/metrics")).text()
    assert prom.scraped(text, "cbgw_advisors", merchant="acme", state="standby") == 1
    assert prom.scraped(text, "cbgw_advisors", merchant="acme", state="offline") == 0
    assert prom.scraped(text, "cbgw_advisor_consultations", merchant="acme") == 0
