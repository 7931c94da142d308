"""A deck that would remove most of the rows in force: warned on a dry run, refused
without --allow-shrink (real PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from routing_rates import importer, store
from routing_rates.carriers import Carrier
from routing_rates.cli import main
from shared.db import migrate

pytestmark = pytest.mark.integration
HEADER = "prefix,destination,rate,connect,initial,increment\n"


def _deck(path: Path, prefixes: range) -> Path:
    path.write_text(HEADER + "".join(f"{p},X,0.1,0,60,60\n" for p in prefixes))
    return path


@pytest.fixture(scope="module")
async def conn(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(pg_url)
    await migrate(connection, [store.migrations()])
    await store.upsert_tariffs(connection, [
        Carrier(c, c, profile="generic", dial_string=f"PJSIP/{{digits}}@{c}")
        for c in ("shrink", "shrink-cli")])
    yield connection
    await connection.close()


async def _decks(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM rates_decks"))


async def test_deck_removing_most_rows_needs_allow_shrink(conn: asyncpg.Connection,
                                                          tmp_path: Path) -> None:
    old = await importer.import_deck(conn, "shrink", _deck(tmp_path / "v1.csv", range(10, 20)))
    assert old.deck is not None and old.shrink is None
    # 5 of 10 rows removed (50 %): no question asked
    half = await importer.import_deck(conn, "shrink", _deck(tmp_path / "v2.csv", range(15, 25)),
                                      dry_run=True)
    assert half.diff is not None and half.diff.removed == 5 and half.shrink is None
    # 6 of 10 removed: the dry run says so, with counts
    small = _deck(tmp_path / "v3.csv", range(16, 20))
    dry = await importer.import_deck(conn, "shrink", small, dry_run=True)
    assert dry.shrink == importer.Shrink("shrink", old.deck.id, 6, 10)
    assert dry.shrink.describe() == f"removes 6 of the 10 rows (60 %) of deck {old.deck.id}, " \
        "in force for shrink"
    before = await _decks(conn)
    with pytest.raises(importer.DeckShrinks, match="to import it anyway pass --allow-shrink"):
        await importer.import_deck(conn, "shrink", small)
    with pytest.raises(importer.DeckShrinks):
        await importer.import_deck(conn, "shrink", small, stage=True)
    assert await _decks(conn) == before
    allowed = await importer.import_deck(conn, "shrink", small, allow_shrink=True)
    assert allowed.deck is not None and allowed.shrink == dry.shrink
    in_force = await store.decks_in_force(conn, allowed.deck.effective_from or
                                          allowed.deck.imported_at)
    assert in_force["shrink"].id == allowed.deck.id


def test_cli_warns_on_dry_run_and_refuses_without_flag(
        pg_url: str, conn: asyncpg.Connection, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # a site without an edge: each version in force at once, not after the link's lead
    db = ["--database-url", pg_url]
    full = _deck(tmp_path / "full.csv", range(100, 200))
    assert main([*db, "import", "shrink-cli", str(full), "--no-progress",
                 "--no-distribute"]) == 0
    assert "WARNING" not in capsys.readouterr().err
    cut = _deck(tmp_path / "cut.csv", range(100, 130))
    assert main([*db, "import", "shrink-cli", str(cut), "--dry-run", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "-70 removed" in out
    assert "WARNING: this deck removes 70 of the 100 rows (70 %) of deck " in err
    assert err.rstrip().endswith("in force for shrink-cli; importing it needs --allow-shrink")
    assert main([*db, "import", "shrink-cli", str(cut), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"error: {cut}: this deck removes 70 of the 100 rows (70 %)" in err
    assert "nothing imported" in err and "--allow-shrink" in err
    assert main([*db, "import", "shrink-cli", str(cut), "--no-progress",
                 "--allow-shrink", "--no-distribute"]) == 0
    out, err = capsys.readouterr()
    assert "WARNING: this deck removes 70 of the 100 rows" in err
    assert "deck" in out and "30 rows" in out
