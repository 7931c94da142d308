"""shared.backup's parts that need no database: a dump's name in Japan time, the URL's
password kept off pg_dump's command line, a missing tool named, a second backup of a
database refused while one runs. The dumps themselves: tests/integration/test_backup.py."""

from __future__ import annotations

import fcntl
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.backup import DUMP, BackupError, backup, dump_name, pg_tool, without_password


def test_a_dump_is_named_by_site_database_and_japan_time() -> None:
    name = dump_name("callback", "cbgw_callback", datetime(2026, 12, 7, 19, 0, 5, tzinfo=UTC))
    assert name == "callback-cbgw_callback-20261208T040005+0900.dump"
    found = DUMP.fullmatch(name)
    assert found is not None and (found["site"], found["database"]) == ("callback",
                                                                        "cbgw_callback")


@pytest.mark.parametrize(("url", "bare", "password"), [
    ("postgresql://cbgw:p%40ss%3Aw@db.example:5433/cb?sslmode=require",
     "postgresql://cbgw@db.example:5433/cb?sslmode=require", "p@ss:w"),
    ("postgresql://cbgw:secret@[2001:db8::5]/cb", "postgresql://cbgw@[2001:db8::5]/cb",
     "secret"),
    ("postgresql://postgres:@/cb?host=/tmp/pgdata", "postgresql://postgres@/cb?host=/tmp/pgdata",
     ""),
    ("postgresql://cbgw@db.example/cb", "postgresql://cbgw@db.example/cb", None),
])
def test_the_password_leaves_the_url(url: str, bare: str, password: str | None) -> None:
    assert without_password(url) == (bare, password)


def test_a_missing_tool_is_named_with_where_it_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match=f"pg_dump not found in {tmp_path}"):
        pg_tool("pg_dump", tmp_path)


def test_a_second_backup_of_a_database_is_refused_while_one_runs(tmp_path: Path) -> None:
    with (tmp_path / ".callback-cbgw.lock").open("a") as running:
        fcntl.flock(running, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BackupError, match="another backup of this database is running"):
            backup("postgresql://cbgw@127.0.0.1:9/cbgw", tmp_path, site="callback",
                   database="cbgw")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".callback-cbgw.lock"]
