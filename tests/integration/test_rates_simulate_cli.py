"""python -m routing_rates simulate: a call log against the decks in the database, with
its chart and its CSV."""

from __future__ import annotations

import asyncio
import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from routing_rates import importer, store
from routing_rates.carriers import DEMO_CARRIERS, load_carriers
from routing_rates.cli import main
from routing_rates.profile import load_profile
from shared.db import migrate

pytestmark = pytest.mark.integration
DATA = Path(__file__).resolve().parents[2] / "routing_rates" / "data"


async def test_simulate_prints_totals_and_writes_chart_and_csv(
        pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        await migrate(conn, [store.migrations()])
        await store.upsert_tariffs(conn, load_carriers(DEMO_CARRIERS))
        long_ago = datetime(2024, 1, 1, tzinfo=UTC)
        await importer.import_deck(conn, "ntt-freedial", DATA / "ntt-freedial.csv",
                                   effective=long_ago)
        (tmp_path / "a.csv").write_text("prefix,destination,rate,connect,initial,increment\n"
                                        "8190,JP mobile,0.1400,0,60,60\n")
        await importer.import_deck(conn, "carrier-a", tmp_path / "a.csv",
                                   load_profile("generic"), effective=long_ago)
    finally:
        await conn.close()
    calls = tmp_path / "calls.csv"
    calls.write_text("time,caller,talk_s\n"
                     "2026-12-01T09:00:00+09:00,09012345678,10\n"     # short: keeping is cheaper
                     "2026-12-01T10:00:00+09:00,09012345678,600\n"    # long: calling back
                     "2026-12-01T11:00:00+09:00,0312345678,300\n")   # fixed: no carrier route
    args = ["--database-url", pg_url, "--site", "edge", "--json", "--fx", "USD=150",
            "simulate", str(calls),
            "--png", str(tmp_path / "c.png"), "--csv", str(tmp_path / "c.csv")]
    assert await asyncio.to_thread(main, args) == 0
    out = json.loads(capsys.readouterr().out)
    # kept: 10 + 300 + 17 JPY; called back (21 JPY a minute, 60/60): 21 + 210, the fixed
    # line kept; the default call lengths call both mobile calls back: cheaper than keeping
    # both (no regret), but the short one alone would have cost 11 less kept (hindsight)
    assert out == {"calls": 3, "currency": "JPY", "keep": "327.0000", "callback": "248.0000",
                   "project": "248.0000", "regret": "0.0000", "regret_calls": 0,
                   "hindsight": "11.0000", "hindsight_calls": 1}
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.reader((tmp_path / "c.csv").read_text().splitlines()))
    assert rows[-1] == ["total", "", "3", "327.0000", "248.0000", "79.0000"]
    assert ["class", "fixed", "1", "17.0000", "17.0000", "0.0000"] in rows
