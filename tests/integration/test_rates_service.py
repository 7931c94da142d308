"""RatingService reloads, CDR rating with deck history, and the CLI end to end."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from routing_rates import importer, store
from routing_rates.carriers import DEMO_CARRIERS, load_carriers
from routing_rates.cdr import CdrRater, DeckHistory, read_cdrs
from routing_rates.cli import main
from routing_rates.profile import load_profile
from shared.db import create_pool, migrate
from shared.money import FxTable, Money
from shared.phone import E164

pytestmark = pytest.mark.integration
HEADER = "prefix,destination,rate,connect,initial,increment\n"
FX = FxTable.from_mapping("JPY", {"USD": "150"})
MOBILE = E164("819012345678")
DATA = Path(__file__).resolve().parents[2] / "routing_rates" / "data"


@pytest.fixture(scope="module")
async def conn(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(pg_url)
    await migrate(connection, [store.migrations()])
    await store.upsert_tariffs(connection, load_carriers(DEMO_CARRIERS))
    await importer.import_deck(connection, "ntt-freedial", DATA / "ntt-freedial.csv",
                               effective=datetime(2024, 1, 1, tzinfo=UTC))
    yield connection
    await connection.close()


def _deck(tmp_path: Path, name: str, rate: str) -> Path:
    path = tmp_path / name
    path.write_text(HEADER + f"8190,JP mobile,{rate},0,60,60\n81,JP,0.0385,0,60,60\n")
    return path


async def _until(predicate: object, limit_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_service_reloads_on_notify_and_on_future_date(conn: asyncpg.Connection,
                                                            pg_url: str,
                                                            tmp_path: Path) -> None:
    generic = load_profile("generic")
    await importer.import_deck(conn, "carrier-a", _deck(tmp_path, "a1.csv", "0.1398"), generic,
                               effective=datetime.now(UTC) - timedelta(days=30))
    pool = await create_pool(pg_url, min_size=1, max_size=3)
    rates = await store_service(pool)
    try:
        at = datetime.now(UTC)
        assert rates.cost("carrier-a", MOBILE, at, 61) == Money.of("0.2796", "USD")
        old_snapshot = rates.snapshot
        await importer.import_deck(conn, "carrier-a", _deck(tmp_path, "a2.csv", "0.1000"),
                                   generic)
        await _until(lambda: rates.snapshot is not old_snapshot)
        assert rates.cost("carrier-a", MOBILE, datetime.now(UTC), 61).amount == Decimal("0.2")
        # a future-dated deck comes into force on its date, no NOTIFY needed then
        soon = datetime.now(UTC) + timedelta(seconds=1.5)
        await importer.import_deck(conn, "carrier-a", _deck(tmp_path, "a3.csv", "0.0500"),
                                   generic, effective=soon)
        await asyncio.sleep(0.3)
        assert rates.snapshot.next_change == soon
        assert rates.rank(MOBILE, datetime.now(UTC))[0].rate.amount == Decimal("0.1000")
        await _until(lambda: rates.rank(MOBILE, datetime.now(UTC))[0].rate.amount
                     == Decimal("0.0500"))
    finally:
        await rates.close()
        await pool.close()


async def store_service(pool: asyncpg.Pool) -> object:
    from routing_rates.service import RatingService

    return await RatingService.start(pool, fx=FX)


async def test_cdrs_are_rated_with_the_deck_in_force_at_call_time(
        conn: asyncpg.Connection, tmp_path: Path) -> None:
    generic = load_profile("generic")
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    await importer.import_deck(conn, "carrier-b", _deck(tmp_path, "b1.csv", "0.2000"), generic,
                               effective=t0)
    await importer.import_deck(conn, "carrier-b", _deck(tmp_path, "b2.csv", "0.1000"), generic,
                               effective=t0 + timedelta(days=10))
    cdrs_file = tmp_path / "cdrs.jsonl"
    lines = []
    for i, day in enumerate((1, 12)):
        started = t0 + timedelta(days=day)
        lines.append(json.dumps({
            "kind": "cdr", "call_id": f"c{i}", "callback_id": f"cb{i}", "merchant_id": "acme",
            "leg": "customer", "destination": "+819012345678", "carrier": "carrier-b",
            "started_at": started.isoformat(), "answered_at": started.isoformat(),
            "ended_at": started.isoformat(), "duration_s": "61.2", "billed_s": 120,
            "hangup_cause": 16, "disposition": "answered"}))
    # a SIP advisor's leg (through the edge trunk, no number to price): not rated
    lines.append(json.dumps({
        "kind": "cdr", "call_id": "c-sip", "callback_id": "cb0", "merchant_id": "acme",
        "leg": "advisor", "destination": "alice", "destination_kind": "sip",
        "carrier": "edge-trunk", "started_at": t0.isoformat(), "answered_at": t0.isoformat(),
        "ended_at": t0.isoformat(), "duration_s": "30", "billed_s": 30, "hangup_cause": 16,
        "disposition": "answered"}))
    cdrs_file.write_text("\n".join(lines) + "\n")
    history = DeckHistory(await store.history(conn))
    cdrs = list(read_cdrs(cdrs_file))
    assert [c.call_id for c in cdrs] == ["c0", "c1"]
    rows = await store.rows_by_deck(conn, sorted(history.decks_for(cdrs)))
    carriers = {c.id: c for c in await store.load_tariffs(conn)}
    rated = CdrRater(carriers, history, rows.__getitem__, FX).rate_all(cdrs)
    assert [r.cost.amount for r in rated] == [Decimal("0.4"), Decimal("0.2")]
    assert all(r.billed_s == 120 for r in rated)
    # the toll-free counterfactual: 62 s from a mobile = 4 x 10 JPY
    assert [r.direct_cost for r in rated] == [Money.of("40", "JPY")] * 2
    assert [r.cost_base for r in rated] == [Decimal("60.0"), Decimal("30.0")]
    assert await store.save_ratings(conn, rated) == 2


def test_cli_end_to_end(pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                        ) -> None:
    db = ["--database-url", pg_url]
    assert main([*db, "demo-setup"]) == 0
    assert main([*db, "--json", "decide", "090-1234-5678", "--duration", "300"]) == 0
    out = capsys.readouterr().out
    decision = json.loads(out[out.index("{"):])
    assert decision["callback"] is True
    assert decision["explain"]["direct"]["terms"] == "10 JPY/20 s, 20/20"
    assert main([*db, "quote", "+819012345678", "--distribution", "short"]) == 0
    assert "carrier-b" in capsys.readouterr().out
    # bad deck via the CLI: exit 2, file and line on stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("prefix,destination,rate_usd_per_min,origination_prefixes\n81,JP,x,\n")
    assert main([*db, "import", "carrier-a", str(bad), "--no-progress"]) == 2
    assert f"{bad}:2: column rate: not a number" in capsys.readouterr().err
    cdrs = tmp_path / "cdrs.csv"
    now = datetime.now(UTC)
    cdrs.write_text(
        "call_id,leg,merchant_id,destination,carrier,started_at,answered_at,duration_s\n"
        f"x1,customer,acme,+819012345678,carrier-b,{now.isoformat()},{now.isoformat()},300\n"
        f"x1,inbound,acme,+819012345678,,{now.isoformat()},,0\n")
    assert main([*db, "rate-cdrs", str(cdrs)]) == 0
    assert "rated 2 of 2 legs" in capsys.readouterr().out
    png = tmp_path / "savings.png"
    assert main([*db, "report", "--merchant", "acme", "--png", str(png)]) == 0
    assert "saving" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad_cdrs = tmp_path / "bad.jsonl"
    bad_cdrs.write_text('{"kind": "cdr", "call_id": "a"}\nnot json\n')
    assert main([*db, "rate-cdrs", str(bad_cdrs)]) == 2
    err = capsys.readouterr().err
    assert f"{bad_cdrs}:1:" in err and f"{bad_cdrs}:2:" in err


async def test_the_call_back_routing_follows_reloaded_decks_and_carriers(
        conn: asyncpg.Connection, pg_url: str, tmp_path: Path) -> None:
    """The callback site's route choice keeps a ranking per matched rows: a new deck and a
    carrier disabled (each reloaded on its NOTIFY) change the answer for numbers ranked
    before."""
    from callback_server.routing import Routing
    from routing_rates.service import RatingService

    generic = load_profile("generic")
    for tariff, rate in (("carrier-b", "0.1000"), ("carrier-c", "0.1200")):
        # whatever the tests before left in force (the CLI's demo decks) is replaced
        await importer.import_deck(conn, tariff, _deck(tmp_path, f"{tariff}.csv", rate),
                                   generic, allow_shrink=True)
    carrier_c = next(c for c in load_carriers(DEMO_CARRIERS) if c.id == "carrier-c")
    pool = await create_pool(pg_url, min_size=1, max_size=3)
    rates = await RatingService.start(pool, fx=FX)
    routing = Routing(rates, ())

    async def order(number: E164) -> list[str]:
        routes = await routing.routes(number, datetime.now(UTC))
        return [r.carrier_id for r in routes if r.carrier_id in ("carrier-b", "carrier-c")]

    async def reloaded(change: Awaitable[object]) -> None:
        before = rates.snapshot
        await change
        # a reload indexes the CLI test's Plivo deck too: seconds on a crowded machine
        await _until(lambda: rates.snapshot is not before, limit_s=60.0)

    other = E164("819087654321")
    try:
        assert await order(MOBILE) == await order(other) == ["carrier-b", "carrier-c"]
        await reloaded(importer.import_deck(conn, "carrier-c",
                                            _deck(tmp_path, "rc2.csv", "0.0800"), generic))
        assert await order(MOBILE) == await order(other) == ["carrier-c", "carrier-b"]
        await reloaded(store.upsert_tariffs(conn, [replace(carrier_c, enabled=False)]))
        assert await order(MOBILE) == await order(other) == ["carrier-b"]
    finally:
        await store.upsert_tariffs(conn, [carrier_c])
        await rates.close()
        await pool.close()


async def test_close_ends_the_listener_when_a_reload_wake_up_comes_with_it(
        conn: asyncpg.Connection, pg_url: str) -> None:
    """A NOTIFY's wake-up and close()'s cancellation in one event-loop turn: the listener
    still ends (asyncio.wait_for on 3.11 returned the wake-up and dropped the
    cancellation: close() waited for ever, as the reload test's ``finally`` once did after
    re-enabling a carrier); and close() passes on its caller's own cancellation."""
    from routing_rates.service import RatingService

    pool = await create_pool(pg_url, min_size=1, max_size=3)
    try:
        rates = await RatingService.start(pool, fx=FX)
        await asyncio.sleep(0.1)            # the listener waits for a wake-up
        rates._wake.set()                   # what a NOTIFY does, then at once:
        closing = asyncio.create_task(rates.close())
        done, _ = await asyncio.wait({closing}, timeout=10)
        if closing not in done:
            closing.cancel()
            done, _ = await asyncio.wait({closing}, timeout=10)
            assert closing in done and closing.cancelled(), "close() ignored its cancel"
            raise AssertionError("close() did not end within 10 s")
        await closing
    finally:
        await pool.close()
