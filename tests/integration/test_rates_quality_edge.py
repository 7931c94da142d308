"""The edge's decision with a merchant's carrier quality floor: ASR and call lengths from
the CDRs the edge holds (real rows on PostgreSQL); a demoted cheapest carrier is priced
last, so the decision is the one for the carrier the callback site dials first."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from edge_server.decide import RatesDecider
from edge_server.flow_messages import AnnounceMode, Decided, RequestDecision
from edge_server.store import edge_migrations
from routing_rates import importer, store
from routing_rates.carriers import DEMO_CARRIERS, load_carriers
from routing_rates.profile import load_profile
from routing_rates.quality import QualityBoard
from routing_rates.service import RatingService
from shared.config import CarrierQuality
from shared.db import create_pool, migrate_url
from shared.money import FxTable
from shared.phone import E164

pytestmark = pytest.mark.integration
FX = FxTable.from_mapping("JPY", {"USD": "150"})
MOBILE = E164("819012345678")
DATA = Path(__file__).resolve().parents[2] / "routing_rates" / "data"
FLOOR = CarrierQuality(min_asr=Decimal("0.5"), max_pdd_s=Decimal(4), min_calls=10)


@pytest.fixture(scope="module")
async def rates(pg_url: str, tmp_path_factory: pytest.TempPathFactory,
                ) -> AsyncIterator[RatingService]:
    await migrate_url(pg_url, edge_migrations(with_rates=True))
    pool = await create_pool(pg_url, min_size=1, max_size=4)
    decks = tmp_path_factory.mktemp("decks")
    async with pool.acquire() as conn:
        await store.upsert_tariffs(conn, load_carriers(DEMO_CARRIERS))
        await importer.import_deck(conn, "ntt-freedial", DATA / "ntt-freedial.csv",
                                   effective=datetime(2024, 1, 1, tzinfo=UTC))
        # carrier-b 20.52 JPY/min beats toll-free (30 JPY/min); carrier-a 37.5 does not
        for carrier, rate in (("carrier-a", "0.2500"), ("carrier-b", "0.1368")):
            deck = decks / f"{carrier}.csv"
            deck.write_text("prefix,destination,rate,connect,initial,increment\n"
                            f"8190,JP mobile,{rate},0,60,60\n81,JP,0.0385,0,60,60\n")
            await importer.import_deck(conn, carrier, deck, load_profile("generic"),
                                       effective=datetime(2024, 1, 1, tzinfo=UTC))
        await _cdrs(conn, "carrier-b", calls=20, answered=4)
        await _cdrs(conn, "carrier-a", calls=20, answered=18)
    service = await RatingService.start(pool, fx=FX, listen=False)
    service.quality_board = await QualityBoard(pool, site="edge").start()
    yield service
    await service.close()
    await pool.close()


async def _cdrs(conn: asyncpg.Connection, carrier: str, calls: int, answered: int) -> None:
    """The customer legs as the edge stores the callback site's cdr link events."""
    t0 = datetime.now(UTC) - timedelta(hours=2)
    for i in range(calls):
        up = i < answered
        await conn.execute(
            """INSERT INTO cdrs (merchant_id, call_id, callback_id, edge_call_id, leg,
                   destination, carrier, started_at, answered_at, ended_at, duration_s,
                   billed_s, hangup_cause, disposition)
               VALUES ('acme', $1, 'cb', 'e', 'customer', $2, $3, $4, $5, $6, $7, 60, 16,
                       $8)""",
            f"{carrier}-{i}", str(MOBILE), carrier, t0, t0 + timedelta(seconds=8) if up
            else None, t0 + timedelta(seconds=98), Decimal(90) if up else Decimal(0),
            "answered" if up else "no_answer")


async def test_the_edge_figures_have_asr_and_call_length_but_no_pdd(
        rates: RatingService) -> None:
    assert rates.quality_board is not None
    b = rates.quality_board.board[("carrier-b", "mobile")]
    assert (b.calls, b.asr, b.acd_s, b.pdd_s) == (20, Decimal("0.2"), Decimal(90), None)


async def test_a_demoted_carrier_changes_the_edges_decision(rates: RatingService) -> None:
    at = datetime.now(UTC)
    decider = RatesDecider(rates, {}, quality={"acme": FLOOR})
    free = RequestDecision(MOBILE, "free", AnnounceMode.EARLY_MEDIA)
    assert await decider.decide(free, at) == Decided(True, "callback-cheaper")
    acme = RequestDecision(MOBILE, "acme", AnnounceMode.EARLY_MEDIA)
    assert await decider.decide(acme, at) == Decided(False, "direct-cheaper")
    decision = rates.decide(MOBILE, at, quality=FLOOR)
    assert decision.route is not None and decision.route.carrier_id == "carrier-a"
    assert decision.explain["alternatives"][1]["demoted"] == "ASR 0.200 < 0.5 over 20 calls to 8190"
