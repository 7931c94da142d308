"""``python -m callback_server backup`` on a real PostgreSQL: a dump of the site's database
(pg_dump's custom format, named in Japan time) that pg_restore restores into a new
database with its migrations current and the ledger, its balances and its append-only
triggers as they were; the
oldest dumps beyond ``--keep`` pruned; a dump that fails leaves no file and the earlier
ones untouched, and says why."""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from billing.ledger import Balance, Ledger
from callback_server.__main__ import main as callback_main
from shared.backup import DUMP, backup, pg_tool
from shared.db import create_pool, migrate_url
from tests.conftest import drop_database, fresh_database
from tests.integration import billing_db

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
pool, clean = billing_db.fixtures()


def config(pki: Path, tmp_path: Path) -> Path:
    path = tmp_path / "callback.toml"
    path.write_text((REPO / "deploy/callback.example.toml").read_text()
                    .replace("../var/pki", str(pki)))
    return path


async def cli(*argv: str) -> int:
    status: int = await asyncio.to_thread(callback_main, list(argv))
    return status


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def rows(db: asyncpg.Pool, table: str) -> list[tuple[object, ...]]:
    return [tuple(r) for r in await db.fetch(f"SELECT * FROM {table} ORDER BY 1")]


async def test_a_dump_restores_the_ledger_as_it_was(
        clean: asyncpg.Pool, pg_url: str, pg_server_url: str, pki_dir: Path,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    ledger = Ledger(clean)
    await ledger.deposit("acme", "c-1", 3000, "佐藤", "振込 ref 1")
    await ledger.adjust("acme", "c-1", -500, "佐藤", "二重入力の訂正")
    monkeypatch.setenv("CALLBACK__DATABASE__URL", pg_url)
    dumps = tmp_path / "dumps"
    assert await cli("backup", "--config", str(config(pki_dir, tmp_path)),
                     "--dir", str(dumps)) == 0
    taken = json.loads(capsys.readouterr().out)
    path = Path(taken["file"])
    found = DUMP.fullmatch(path.name)
    assert path.parent == dumps and found is not None, path
    assert found["site"] == "callback" and found["at"].endswith("+0900")
    assert taken["bytes"] > 0 and taken["entries"] > 50
    assert mode(path) == 0o600          # the customers' numbers and money: the owner's only
    assert taken["removed"] == [] and names(dumps) == [".callback-" + found["database"]
                                                       + ".lock", path.name]

    name = "restored_from_dump"
    restored_url = await fresh_database(pg_server_url, name)
    try:
        restored = await asyncio.to_thread(subprocess.run, [
            str(pg_tool("pg_restore")), "--no-owner", "--exit-on-error",
            f"--dbname={restored_url}", str(path)], capture_output=True, text=True,
            check=False)
        assert restored.returncode == 0, restored.stderr
        # its migrations came with it: the schema is current, nothing is applied again
        assert await migrate_url(restored_url, list(billing_db.SETS)) == []
        copy = await create_pool(restored_url, min_size=1, max_size=2)
        try:
            for table in ("billing_accounts", "billing_transactions", "billing_entries"):
                assert await rows(copy, table) == await rows(clean, table), table
            assert await Ledger(copy).balance("acme", "c-1") == Balance(2500, 0)
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await copy.execute("UPDATE billing_entries SET amount_yen = amount_yen + 1")
        finally:
            await copy.close()
    finally:
        await drop_database(pg_server_url, name)


async def test_the_oldest_dumps_past_keep_are_removed(clean: asyncpg.Pool, pg_url: str,
                                                      tmp_path: Path) -> None:
    start = datetime(2026, 12, 7, 19, 0, tzinfo=UTC)          # 04:00 in Tokyo
    (tmp_path / "callback-other-20261201T040000+0900.dump").write_bytes(b"another db's")
    (tmp_path / "callback-cbgw-20261201T040000+0900.dump.partial").write_bytes(b"cut")
    taken = [await asyncio.to_thread(backup, pg_url, tmp_path, site="callback",
                                     database="cbgw", keep=2, now=start + timedelta(days=d))
             for d in range(3)]
    assert [t.path.name for t in taken] == [
        "callback-cbgw-20261208T040000+0900.dump", "callback-cbgw-20261209T040000+0900.dump",
        "callback-cbgw-20261210T040000+0900.dump"]
    assert taken[0].removed == ("callback-cbgw-20261201T040000+0900.dump.partial",)
    assert taken[2].removed == ("callback-cbgw-20261208T040000+0900.dump",)
    assert names(tmp_path) == [
        ".callback-cbgw.lock", "callback-cbgw-20261209T040000+0900.dump",
        "callback-cbgw-20261210T040000+0900.dump", "callback-other-20261201T040000+0900.dump"]


async def test_a_failed_dump_leaves_nothing_and_says_why(
        pg_url: str, pki_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    earlier = dumps / "callback-cbgw_callback-20261201T040000+0900.dump"
    earlier.write_bytes(b"kept")
    dbname = "no_such_database_here"
    missing = urlunsplit(urlsplit(pg_url)._replace(path="/" + dbname))
    monkeypatch.setenv("CALLBACK__DATABASE__URL", missing)
    cfg = str(config(pki_dir, tmp_path))
    assert await cli("backup", "--config", cfg, "--dir", str(dumps), "--keep", "1") == 1
    err = capsys.readouterr().err
    assert "backup: pg_dump failed" in err and "no_such_database_here" in err, err
    assert names(dumps) == [".callback-" + dbname + ".lock", earlier.name]
    assert earlier.read_bytes() == b"kept"
    assert await cli("backup", "--config", cfg, "--dir", str(dumps), "--keep", "0") == 1
    assert "backup: --keep must be at least 1, not 0" in capsys.readouterr().err
