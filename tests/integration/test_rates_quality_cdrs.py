"""Carrier quality from real CDR rows and leg progress on PostgreSQL; the callback site's
ranking with a merchant's quality floor and maximum cost per minute; the rates API
showing why."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

import callback_server
import shared
from callback_server.dialer_messages import PersistAttempt, RecordCdr
from callback_server.leg_progress import LegProgress
from callback_server.routing import Routing
from callback_server.schemas import IntakeRequest
from callback_server.store import CallbackStore
from routing_rates import importer, store
from routing_rates.carriers import DEMO_CARRIERS, load_carriers
from routing_rates.cli import main
from routing_rates.http import routes
from routing_rates.profile import load_profile
from routing_rates.quality import QualityBoard
from routing_rates.service import RatingService
from shared import ari
from shared.config import AnnounceMode, CarrierQuality, Merchant
from shared.db import create_pool, migrate_url, package_migrations
from shared.money import FxTable, Money
from shared.openapi import add_operations
from shared.phone import E164

pytestmark = pytest.mark.integration
FX = FxTable.from_mapping("JPY", {"USD": "150"})
MOBILE = E164("819012345678")
DATA = Path(__file__).resolve().parents[2] / "routing_rates" / "data"
FLOOR = CarrierQuality(min_asr=Decimal("0.5"), max_pdd_s=Decimal(4), min_calls=10)
MERCHANT = Merchant(
    id="acme", name="ACME", numbers=(E164("81120123456"),),
    callback_caller_id=E164("81120123456"), announce_mode=AnnounceMode.EARLY_MEDIA,
    inbound_tariff="ntt-freedial", pre_callback_delay_s=Decimal("0"), max_attempts=3,
    retry_backoff_s=(30, 120, 600), ring_timeout_s=30, ivr_flow="order", operator="operator",
    api_token_sha256=None, max_cost_per_minute=Money.of("21", "JPY"), carrier_quality=FLOOR)


@pytest.fixture(scope="module")
async def pool(pg_url: str, tmp_path_factory: pytest.TempPathFactory,
               ) -> AsyncIterator[asyncpg.Pool]:
    await migrate_url(pg_url, [package_migrations("link", shared.__file__),
                               store.migrations(),
                               package_migrations("callback", callback_server.__file__)])
    p = await create_pool(pg_url, min_size=2, max_size=6)
    decks = tmp_path_factory.mktemp("decks")
    generic = load_profile("generic")
    async with p.acquire() as conn:
        await store.upsert_tariffs(conn, load_carriers(DEMO_CARRIERS))
        await importer.import_deck(conn, "ntt-freedial", DATA / "ntt-freedial.csv",
                                   effective=datetime(2024, 1, 1, tzinfo=UTC))
        for carrier, rate in (("carrier-a", "0.1398"), ("carrier-b", "0.1368"),
                              ("carrier-c", "0.1500")):
            deck = decks / f"{carrier}.csv"
            deck.write_text("prefix,destination,rate,connect,initial,increment\n"
                            f"8190,JP mobile,{rate},0,60,60\n81,JP,0.0385,0,60,60\n")
            await importer.import_deck(conn, carrier, deck, generic,
                                       effective=datetime(2024, 1, 1, tzinfo=UTC))
    await CallbackStore(p, owner="setup").sync_merchants([MERCHANT])
    yield p
    await p.close()


async def _legs(pool: asyncpg.Pool, n: int, carrier: str, calls: int, answered: int,
                pdd_s: float) -> None:
    """``calls`` customer legs on ``carrier``, through the store and the leg progress
    recorder as the site writes them: ringing ``pdd_s`` after the originate."""
    cb = CallbackStore(pool, owner=f"w-{carrier}")
    now = datetime.now(UTC)
    await cb.intake(f"00000000-0000-4000-8000-{n:012d}",
                    IntakeRequest(edge_call_id=f"e-{carrier}", merchant_id="acme",
                                  caller=MOBILE, dialed="+81120123456", received_at=now,
                                  hungup_at=now, announce_mode="early_media"), MERCHANT)
    (job,) = await cb.claim(1)
    progress = LegProgress(pool)
    for i in range(calls):
        cid = f"{carrier}-{i}"
        await cb.persist_leg(PersistAttempt(job.callback_id, 1, i + 1, cid, "customer",
                                            carrier, f"PJSIP/x@{carrier}"), "acme")
        t0 = now - timedelta(hours=1, seconds=-i)
        ring = t0 + timedelta(seconds=pdd_s)
        progress.observe(ari.ChannelStateChange(ari.Channel(cid, state="Ringing"), ring))
        progress.observe(ari.ChannelStateChange(ari.Channel(cid, state="Up"),
                                                ring + timedelta(seconds=5)))  # not first
        up = i < answered
        await cb.record_cdr(RecordCdr(
            cid, job.callback_id, "customer", str(MOBILE), carrier, t0,
            ring + timedelta(seconds=5) if up else None, t0 + timedelta(seconds=90),
            Decimal(60) if up else Decimal(0), 16, "answered" if up else "no_answer"),
            edge_call_id=f"e-{carrier}", merchant_id="acme", billed_s=60,
            carrier_cost=None, direct_cost=None)
    assert await progress.flush() == calls
    assert await progress.flush() == 0


@pytest.fixture(scope="module")
async def rates(pool: asyncpg.Pool) -> AsyncIterator[RatingService]:
    await _legs(pool, 1, "carrier-b", calls=20, answered=5, pdd_s=6)      # cheapest, poor
    await _legs(pool, 2, "carrier-a", calls=20, answered=16, pdd_s=2)
    await _legs(pool, 3, "carrier-c", calls=5, answered=0, pdd_s=9)       # too few calls
    service = await RatingService.start(pool, fx=FX, listen=False)
    service.quality_board = await QualityBoard(pool).start()
    yield service
    await service.close()


async def test_quality_is_computed_from_the_cdrs_and_leg_progress(
        rates: RatingService) -> None:
    assert rates.quality_board is not None
    board = rates.quality_board.board
    b = board[("carrier-b", "mobile")]
    assert (b.calls, b.answered, b.asr, b.acd_s, b.pdd_s) == (
        20, 5, Decimal("0.25"), Decimal(60), Decimal(6))
    a = board[("carrier-a", "mobile")]
    assert (a.calls, a.answered, a.pdd_s) == (20, 16, Decimal(2))
    assert board[("carrier-c", "mobile")].calls == 5
    # and per range of the destinations (every leg here is to one 090 number)
    assert board[("carrier-b", "8190")] == board[("carrier-b", "8190123")] == b


async def test_the_callback_ranking_demotes_and_caps(rates: RatingService,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    routing = Routing(rates, ())
    at = datetime.now(UTC)
    assert [r.carrier_id for r in await routing.routes(MOBILE, at)] == [
        "carrier-b", "carrier-a", "carrier-c"]
    with caplog.at_level(logging.WARNING, "callback.routing"):
        ranked = await routing.routes(MOBILE, at, quality=FLOOR)
    assert [r.carrier_id for r in ranked] == ["carrier-a", "carrier-c", "carrier-b"]
    assert ("carrier carrier-b demoted for +819012345678: ASR 0.250 < 0.5, PDD 6.00 s > "
            "4 s over 20 calls to 8190") in caplog.messages
    # 21 JPY/min: carrier-c (22.5) is never dialled, carrier-b (demoted) still last
    capped = await routing.routes(MOBILE, at, MERCHANT.max_cost_per_minute, FLOOR)
    assert [r.carrier_id for r in capped] == ["carrier-a", "carrier-b"]
    assert await routing.routes(MOBILE, at, Money.of("20", "JPY"), FLOOR) == ()


async def test_the_ranking_is_one_debug_line_and_none_at_info(
        rates: RatingService, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "callback.routing"):
        await Routing(rates, ()).routes(MOBILE, datetime.now(UTC))
    assert [r for r in caplog.records if r.name == "callback.routing"] == []
    with caplog.at_level(logging.DEBUG, "callback.routing"):
        await Routing(rates, ()).routes(MOBILE, datetime.now(UTC))
    lines = [r.getMessage() for r in caplog.records if r.name == "callback.routing"
             and r.getMessage().startswith("routes for")]
    assert len(lines) == 1, lines
    assert re.fullmatch(r"routes for \+819012345678: carrier-b \S+ JPY, carrier-a \S+ JPY, "
                        r"carrier-c \S+ JPY", lines[0]), lines[0]


async def test_the_rates_api_shows_the_reasons(rates: RatingService,
                                               aiohttp_client: Any) -> None:
    app = web.Application()
    add_operations(app, routes(rates, {"acme": MERCHANT}))
    client: TestClient[Any, Any] = await aiohttp_client(app)
    resp = await client.get("/v1/rates/quote", params={"number": "09012345678",
                                                       "merchant": "acme"})
    body = await resp.json()
    assert resp.status == 200
    assert [r["carrier"] for r in body["routes"]] == ["carrier-a", "carrier-b"]
    assert body["routes"][1]["demoted"] == ("ASR 0.250 < 0.5, PDD 6.00 s > 4 s over "
                                            "20 calls to 8190")
    assert body["routes"][1]["quality"]["asr"] == "0.250"
    assert body["routes"][1]["quality"]["destination"] == "8190"
    assert body["dropped"] == [{"carrier": "carrier-c", "reason": "above-max-rate",
                                "detail": "22.5000 > 21.0000 JPY/min"}]
    resp = await client.get("/v1/rates/decide", params={"number": "09012345678",
                                                        "merchant": "acme",
                                                        "duration": "600"})
    body = await resp.json()
    assert body["carrier"] == "carrier-a" and body["callback"] is True
    assert body["explain"]["alternatives"][1]["demoted"].startswith("ASR 0.250")
    resp = await client.get("/v1/rates/quote", params={"number": "09012345678",
                                                       "merchant": "nobody"})
    assert resp.status == 400
    assert (await resp.json())["error"]["id"] == "rates-parameter-invalid"


async def test_the_cli_shows_the_demotion_and_the_cap(rates: RatingService, pg_url: str,
                                                      tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      ) -> None:
    config = tmp_path / "callback.toml"
    config.write_text('[[merchants]]\nid = "acme"\nname = "ACME"\nnumbers = ["0120123456"]\n'
                      'max_cost_per_minute = 21\n[merchants.carrier_quality]\n'
                      'min_asr = 0.5\nmax_pdd_s = 4\nmin_calls = 10\n')
    db = ["--database-url", pg_url, "--fx", "USD=150"]
    args = [*db, "quote", "09012345678", "--merchant", "acme", "--config", str(config)]
    assert await asyncio.to_thread(main, args) == 0
    out = capsys.readouterr().out
    assert "carrier-a" in out.splitlines()[1]
    assert ("    demoted: ASR 0.250 < 0.5, PDD 6.00 s > 4 s over 20 calls to 8190") in out
    assert "dropped carrier-c: above-max-rate 22.5000 > 21.0000 JPY/min" in out
    args = [*db, "decide", "09012345678", "--merchant", "acme", "--config", str(config),
            "--duration", "600"]
    assert await asyncio.to_thread(main, args) == 0
    out = capsys.readouterr().out
    assert "callback: carrier-a" in out
    assert "    demoted: ASR 0.250 < 0.5" in out
