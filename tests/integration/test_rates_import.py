"""Deck import against a real PostgreSQL (embedded, or DATABASE_URL)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from routing_rates import importer, store
from routing_rates.carriers import DEMO_CARRIERS, Carrier, load_carriers
from routing_rates.cli import main
from routing_rates.deckfile import FIELD_LIMIT
from routing_rates.index import RateIndex
from routing_rates.profile import load_profile, parse_profile
from shared.db import migrate

pytestmark = pytest.mark.integration
PLIVO = Path(__file__).resolve().parents[2] / "shared/data/rate-decks" \
    / "plivo-voice-outbound-2026-04-01.csv"
if not PLIVO.exists():
    PLIVO = Path("/work/shared/data/rate-decks/plivo-voice-outbound-2026-04-01.csv")
HEADER = "prefix,destination,rate,connect,initial,increment\n"


@pytest.fixture(scope="module")
async def conn(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(pg_url)
    await migrate(connection, [store.migrations()])
    await store.upsert_tariffs(connection, load_carriers(DEMO_CARRIERS) + [
        Carrier("gen", "generic test carrier", profile="generic",
                dial_string="PJSIP/{digits}@gen"),
        Carrier("layouts", "decks staged with other profiles",
                dial_string="PJSIP/{digits}@layouts")])
    yield connection
    await connection.close()


async def _counts(conn: asyncpg.Connection) -> tuple[int, int, int]:
    return (await conn.fetchval("SELECT count(*) FROM rates_decks"),
            await conn.fetchval("SELECT count(*) FROM rates_rows"),
            await conn.fetchval("SELECT count(*) FROM pg_tables WHERE tablename LIKE "
                                "'rates_rows_d%'"))


async def test_real_plivo_deck_imports_and_prices_jp_mobile(conn: asyncpg.Connection) -> None:
    result = await importer.import_deck(conn, "carrier-a", PLIVO)
    assert result.rows == 72554 and result.duplicates == 0
    # no deck row for the 060 mobile range: priced at the country's fixed-line row
    assert result.gaps == (importer.TypeGap("8160", "mobile", "81"),)
    assert result.deck is not None and result.deck.state == "scheduled"
    deck = (await store.decks_in_force(conn, datetime.now(UTC)))["carrier-a"]
    assert deck.id == result.deck.id
    rows = await store.load_rows(conn, deck)
    assert len(rows) == 72554
    assert sum(1 for r in rows if r.origins) == 8416
    index = RateIndex({"carrier-a": rows})
    mobile = index.match_one("carrier-a", "819012345678")
    assert mobile is not None
    assert mobile.terms.rate == Decimal("0.1398")
    assert (mobile.terms.initial_s, mobile.terms.increment_s) == (60, 60)
    assert mobile.destination == "Japan - Mobile"
    fixed = index.match_one("carrier-a", "81312345678")
    assert fixed is not None and fixed.terms.rate == Decimal("0.0385")
    ip = index.match_one("carrier-a", "815012345678")
    assert ip is not None and ip.terms.rate == Decimal("0.1110")
    # origin-limited rows: UAE from Morocco costs more than from elsewhere
    uae = index.match_one("carrier-a", "97150123456", origin="212600000000")
    assert uae is not None and uae.origins and uae.terms.rate > Decimal("1")


async def test_bad_deck_changes_nothing_and_names_every_line(conn: asyncpg.Connection,
                                                             tmp_path: Path) -> None:
    before = await _counts(conn)
    deck = tmp_path / "bad.csv"
    deck.write_text(HEADER + "81,JP,0.1,0,60,60\n82,X,abc,0,60,60\n8x3,Y,0.1,0,60,60\n"
                    "84,Z,-1,0,60,60\n81,JP again,0.2,0,60,60\n")
    with pytest.raises(importer.DeckImportError) as err:
        await importer.import_deck(conn, "gen", deck)
    found = [(p.line, p.column) for p in err.value.problems]
    # the same prefix with other terms is reported with the other errors, not after them
    assert found == [(3, "rate"), (4, "prefix"), (5, "rate"), (6, "rate")]
    assert "bad.csv:3: column rate: not a number" in str(err.value)
    assert "bad.csv:6: column rate: prefix 81 already on line 2 with different terms" \
        in str(err.value)
    assert await _counts(conn) == before


async def test_error_report_prints_the_first_50_and_counts_all(conn: asyncpg.Connection,
                                                                tmp_path: Path) -> None:
    deck = tmp_path / "many.csv"
    bad = "".join(f"{100 + i},X,abc,0,60,60\n" for i in range(70))
    deck.write_text(HEADER + "81,JP,0.1,0,60,60\n" + bad + "81,JP,0.2,0,60,60\n")
    with pytest.raises(importer.DeckImportError) as err:
        await importer.import_deck(conn, "gen", deck)
    assert err.value.count == 71
    text = str(err.value)
    assert text.startswith(f"{deck}: 71 problem(s), nothing imported:\n")
    assert text.count("column rate: not a number") == 50
    assert text.endswith("\n... and 21 more")
    assert err.value.problems[-1].line == 73 and "already on line 2" in \
        err.value.problems[-1].reason


async def test_same_prefix_twice_with_different_rates(conn: asyncpg.Connection,
                                                      tmp_path: Path) -> None:
    before = await _counts(conn)
    deck = tmp_path / "dupes.csv"
    deck.write_text(HEADER + "81,JP,0.1,0,60,60\n44,UK,0.2,0,60,60\n81,JP,0.15,0,60,60\n")
    with pytest.raises(importer.DeckImportError) as err:
        await importer.import_deck(conn, "gen", deck)
    [problem] = err.value.problems
    assert (problem.line, problem.column) == (4, "rate")
    assert "already on line 2" in problem.reason
    assert await _counts(conn) == before
    # identical repeats are dropped, not refused
    deck.write_text(HEADER + "81,JP,0.1,0,60,60\n44,UK,0.2,0,60,60\n81,JP,0.10,0,60,60\n")
    result = await importer.import_deck(conn, "gen", deck, stage=True)
    assert (result.rows, result.duplicates) == (2, 1)


async def test_dry_run_diff_largest_moves_first(conn: asyncpg.Connection,
                                                tmp_path: Path) -> None:
    old = tmp_path / "old.csv"
    old.write_text(HEADER + "81,JP,0.0385,0,60,60\n8190,JP mobile,0.1398,0,60,60\n"
                   "44,UK,0.0100,0,60,60\n1,US,0.0050,0,6,6\n")
    await importer.import_deck(conn, "gen", old)
    new = tmp_path / "new.csv"
    new.write_text(HEADER + "81,JP,0.0400,0,60,60\n8190,JP mobile,0.1000,0,60,60\n"
                   "1,US,0.0050,0,1,1\n33,FR,0.0200,0,60,60\n")
    before = await _counts(conn)
    result = await importer.import_deck(conn, "gen", new, dry_run=True)
    assert result.deck is None and result.diff is not None
    diff = result.diff
    assert (diff.added, diff.removed, diff.up, diff.down, diff.other_changes) == (1, 1, 1, 1, 1)
    assert [m.prefix for m in diff.moves] == ["8190", "81"]
    assert diff.moves[0].delta == Decimal("-0.0398")
    assert [m.prefix for m in diff.added_sample] == ["33"]
    assert [m.prefix for m in diff.removed_sample] == ["44"]
    assert await _counts(conn) == before


async def test_versions_history_and_future_activation(conn: asyncpg.Connection,
                                                      tmp_path: Path) -> None:
    now = datetime.now(UTC)
    v1 = tmp_path / "v1.csv"
    v1.write_text(HEADER + "81,JP,0.0300,0,60,60\n")
    v2 = tmp_path / "v2.csv"
    v2.write_text(HEADER + "81,JP,0.0200,0,60,60\n")
    first = await importer.import_deck(conn, "carrier-c", v1, load_profile("generic"),
                                       effective=now - timedelta(days=10))
    future = await importer.import_deck(conn, "carrier-c", v2, load_profile("generic"),
                                        effective=now + timedelta(days=5))
    assert first.deck and future.deck
    in_force = await store.decks_in_force(conn, now)
    assert in_force["carrier-c"].id == first.deck.id
    later = await store.decks_in_force(conn, now + timedelta(days=6))
    assert later["carrier-c"].id == future.deck.id
    assert await store.next_change(conn, now) == future.deck.effective_from
    history = await store.history(conn)
    assert [d for _, d in history["carrier-c"]][-2:] == [first.deck.id, future.deck.id]
    # a staged deck is never in force until activated
    staged = await importer.import_deck(conn, "carrier-c", v2, load_profile("generic"),
                                        stage=True)
    assert staged.deck and staged.deck.state == "staged"
    assert (await store.decks_in_force(conn, now + timedelta(days=30)))["carrier-c"].id \
        == future.deck.id
    with pytest.raises(store.DeckStateError):
        await store.cancel(conn, first.deck.id)


async def test_unknown_tariff_and_encoding(conn: asyncpg.Connection, tmp_path: Path) -> None:
    deck = tmp_path / "x.csv"
    deck.write_text(HEADER)
    with pytest.raises(importer.ImportRefused, match="unknown carrier"):
        await importer.import_deck(conn, "nobody", deck)
    good = "".join(f"{p},X,0.1,0,60,60\n" for p in range(100, 9000)).encode()
    deck.write_bytes(HEADER.encode() + good + b"81,\xff\xfe,0.1,0,60,60\n")
    before = await _counts(conn)
    with pytest.raises(importer.ImportRefused) as err:
        await importer.import_deck(conn, "gen", deck)
    assert str(err.value) == f"{deck}:8902: not utf-8-sig text: invalid start byte " \
        "(byte b'\\xff')"
    assert await _counts(conn) == before


async def test_csv_error_is_an_import_error_with_file_and_line(conn: asyncpg.Connection,
                                                              tmp_path: Path) -> None:
    deck = tmp_path / "huge-field.csv"
    big, huge = "x" * 200_000, "y" * (FIELD_LIMIT + 1)
    deck.write_text(HEADER + f'81,"{big}",0.1,0,60,60\n82,"{huge}",0.1,0,60,60\n')
    before = await _counts(conn)
    with pytest.raises(importer.DeckImportError) as err:
        await importer.import_deck(conn, "gen", deck)
    assert [(p.line, p.column) for p in err.value.problems] == [(3, "*")]
    assert f"huge-field.csv:3: column *: not readable as CSV: field larger than field limit " \
        f"({FIELD_LIMIT})" in str(err.value)
    assert await _counts(conn) == before


async def test_prefix_list_deck_imports_one_row_per_prefix(conn: asyncpg.Connection,
                                                           tmp_path: Path) -> None:
    profile = parse_profile('prefix_list_separator = ","\n[columns]\n'
                            'destination = "Destination"\nprefix = "Codes"\nrate = "Rate"\n')
    deck = tmp_path / "lists.csv"
    deck.write_text('Destination,Codes,Rate\n"Japan Mobile","8170,8180,8190",0.1398\n'
                    'Japan,81,0.0385\n"Japan Mobile more","8190,8180,8185",0.1398\n')
    result = await importer.import_deck(conn, "layouts", deck, profile, stage=True)
    # the repeats of 8190 and 8180 on line 4 (same terms) are dropped, 8185 is kept
    assert (result.rows, result.duplicates) == (5, 2)
    assert result.deck is not None
    rows = await conn.fetch("SELECT prefix, destination, rate, line FROM rates_rows "
                            "WHERE deck_id = $1 ORDER BY prefix", result.deck.id)
    assert [tuple(r) for r in rows] == [
        ("81", "Japan", Decimal("0.0385"), 3), ("8170", "Japan Mobile", Decimal("0.1398"), 2),
        ("8180", "Japan Mobile", Decimal("0.1398"), 2),
        ("8185", "Japan Mobile more", Decimal("0.1398"), 4),
        ("8190", "Japan Mobile", Decimal("0.1398"), 2)]
    deck.write_text('Destination,Codes,Rate\n"Japan Mobile","8170,8180",0.1398\n'
                    '"Japan Mobile","8180",0.15\n')
    with pytest.raises(importer.DeckImportError, match="lists.csv:3: column rate: prefix "
                       "8180 already on line 2 with different terms"):
        await importer.import_deck(conn, "layouts", deck, profile)


async def test_profile_date_format_and_a_date_that_does_not_match(conn: asyncpg.Connection,
                                                                  tmp_path: Path) -> None:
    profile = parse_profile('delimiter = ";"\ndate_format = "%d.%m.%Y"\n'
                            'timezone = "Europe/Berlin"\n[columns]\nprefix = "Code"\n'
                            'rate = "Rate"\neffective = "Valid from"\n')
    deck = tmp_path / "eu-dates.csv"
    deck.write_text("Code;Rate;Valid from\n49;0.01;01.07.2026\n33;0.02;\n")
    result = await importer.import_deck(conn, "layouts", deck, profile, stage=True)
    assert result.deck is not None
    starts = await conn.fetch("SELECT prefix, valid_from FROM rates_rows WHERE deck_id = $1 "
                              "ORDER BY prefix", result.deck.id)
    assert [(r["prefix"], r["valid_from"]) for r in starts] == [
        ("33", None), ("49", datetime(2026, 6, 30, 22, 0, tzinfo=UTC))]
    deck.write_text("Code;Rate;Valid from\n49;0.01;2026-07-01\n")
    with pytest.raises(importer.DeckImportError) as err:
        await importer.import_deck(conn, "layouts", deck, profile)
    assert "eu-dates.csv:2: column effective: not a date in the format '%d.%m.%Y' " \
        "('2026-07-01')" in str(err.value)


async def test_the_cli_warns_of_each_range_priced_at_another_types_row(
        conn: asyncpg.Connection, pg_url: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    deck = tmp_path / "c.csv"
    deck.write_text(HEADER + "81,JP fixed,0.0744,0,60,60\n8150,JP IP,0.1,0,60,60\n"
                    "8170,JP mobile,0.1848,0,60,60\n8190,JP mobile,0.1848,0,60,60\n")
    args = ["--database-url", pg_url, "--json", "import", "gen", str(deck), "--no-progress",
            "--profile", "generic", "--dry-run"]
    assert await asyncio.to_thread(main, args) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        "WARNING: gen: no row for the mobile range 8160: priced at 81 (decisions use the "
        "deck's mobile rate)",
        "WARNING: gen: no row for the mobile range 8180: priced at 81 (decisions use the "
        "deck's mobile rate)"]
    assert json.loads(out)["gaps"] == [
        {"range": "8160", "number_type": "mobile", "priced_by": "81"},
        {"range": "8180", "number_type": "mobile", "priced_by": "81"}]
