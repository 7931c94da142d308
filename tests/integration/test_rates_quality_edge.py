"""The edge's decision with a merchant's carrier quality floor: ASR and call lengths from
the CDRs the edge holds (real rows on PostgreSQL); a demoted cheapest carrier is priced
last, so the decision is the one for the carrier the callback site dials first."""

from __future__ import annotations

import os
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
from tests.conftest import drop_database, fresh_database

pytestmark = pytest.mark.integration
FX = FxTable.from_mapping("JPY", {"USD": "150"})
MOBILE = E164("819012345678")
DATA = Path(__file__).resolve().parents[2] / "routing_rates" / "data"
FLOOR = CarrierQuality(min_asr=Decimal("0.5"), max_pdd_s=Decimal(4), min_calls=10)


async def _edge(url: str, decks: Path, legs: dict[str, tuple[int, int]],
                ) -> RatingService:
    """An edge database with the decks and ``legs`` (carrier -> calls, answered), and its
    rating service with the quality board over them."""
    await migrate_url(url, edge_migrations(with_rates=True))
    pool = await create_pool(url, min_size=1, max_size=4)
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
        for carrier, (calls, answered) in legs.items():
            await _cdrs(conn, carrier, calls=calls, answered=answered)
    service = await RatingService.start(pool, fx=FX, listen=False)
    service.quality_board = await QualityBoard(pool, site="edge").start()
    return service


@pytest.fixture(scope="module")
async def rates(pg_url: str, tmp_path_factory: pytest.TempPathFactory,
                ) -> AsyncIterator[RatingService]:
    service = await _edge(pg_url, tmp_path_factory.mktemp("decks"),
                          {"carrier-b": (20, 4), "carrier-a": (20, 18)})
    yield service
    await service.close()
    assert service.quality_board is not None
    await service.quality_board.pool.close()


async def _cdrs(conn: asyncpg.Connection, carrier: str, calls: int, answered: int,
                first: int = 0) -> None:
    """The customer legs as the edge stores the callback site's cdr link events
    (call ids ``carrier-first`` on)."""
    t0 = datetime.now(UTC) - timedelta(hours=2)
    for i in range(first, first + calls):
        up = i - first < answered
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


async def test_a_carrier_whose_answer_ratio_falls_below_the_floor_moves_down(
        pg_server_url: str, tmp_path: Path) -> None:
    """carrier-b, the cheapest, answers 18 of 20 calls: first, and the edge calls back
    over it. 30 more legs go unanswered (18 of 50, ASR 0.36): at the board's next refresh
    it moves down the ranking with the reason, and the edge's decision, priced on
    carrier-a now, keeps the call."""
    name = f"t{os.getpid()}_quality_falls"
    url = await fresh_database(pg_server_url, name)
    rates = await _edge(url, tmp_path, {"carrier-b": (20, 18), "carrier-a": (20, 18)})
    board = rates.quality_board
    assert board is not None
    try:
        decider = RatesDecider(rates, {}, quality={"acme": FLOOR})
        acme = RequestDecision(MOBILE, "acme", AnnounceMode.EARLY_MEDIA)
        at = datetime.now(UTC)
        ranked = rates.rank(MOBILE, at, quality=FLOOR)
        assert [(q.carrier_id, q.demoted) for q in ranked] == [("carrier-b", ""),
                                                               ("carrier-a", "")]
        assert await decider.decide(acme, at) == Decided(True, "callback-cheaper")

        async with board.pool.acquire() as conn:
            await _cdrs(conn, "carrier-b", calls=30, answered=0, first=20)
        await board.refresh()
        ranked = rates.rank(MOBILE, at, quality=FLOOR)
        assert [(q.carrier_id, q.demoted) for q in ranked] == [
            ("carrier-a", ""), ("carrier-b", "ASR 0.360 < 0.5 over 50 calls to 8190")]
        assert await decider.decide(acme, at) == Decided(False, "direct-cheaper")
    finally:
        await rates.close()
        await board.pool.close()
        await drop_database(pg_server_url, name)
