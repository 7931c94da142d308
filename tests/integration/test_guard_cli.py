"""``python -m callback_server.guard``: numbers in every form the configs and routing_rates
accept, and bad arguments as usage errors before the database is opened, never a traceback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from callback_server.guard.__main__ import main as guard_cli
from edge_server.testing import merchant
from tests.integration import callback_db

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
pool, clean = callback_db.fixtures([merchant("acme")])


@pytest.fixture
def config(pki_dir: Path, tmp_path: Path) -> Path:
    path = tmp_path / "callback.toml"
    path.write_text((REPO / "deploy/callback.example.toml").read_text()
                    .replace("../var/pki", str(pki_dir)))
    return path


async def test_the_guard_cli_takes_national_e164_and_plus_forms_alike(
        config: Path, pg_url: str, clean: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CALLBACK__DATABASE__URL", pg_url)

    async def run(*args: str) -> Any:
        assert await asyncio.to_thread(guard_cli, ["--config", str(config), *args]) == 0
        return json.loads(capsys.readouterr().out)

    forms = ("09055550101", "819055550101", "+819055550101", "090-5555-0101")
    for form in forms:
        added = await run("lists", "add", "block", form, "--by", "noc")
        assert added["number"] == "+819055550101"
        entries = (await run("lists", "show", "block"))["entries"]
        assert [e["number"] for e in entries] == ["+819055550101"]
        assert (await run("lists", "remove", "block", form))["ok"]
        assert (await run("lists", "show", "block"))["entries"] == []
    for form in forms:
        await clean.execute("""INSERT INTO guard_numbers (number, first_seen_at, locked_until)
                               VALUES ('+819055550101', now(), now() + interval '1 day')
                               ON CONFLICT (number) DO UPDATE SET locked_until
                               = excluded.locked_until""")
        assert (await run("unlock", form))["ok"]


@pytest.mark.parametrize(("args", "message"), [
    (["lists", "add", "block", "12ab"], "argument number: number must be digits"),
    (["lists", "add", "block", "0901"], "argument number: not a possible number: '0901'"),
    (["unlock", "+"], "argument number: "),
    (["lists", "add", "block", "09055550101", "--expires", "tomorrow"],
     "argument --expires: not an ISO 8601 timestamp: 'tomorrow'"),
    (["lists", "add", "block", "09055550101", "--expires", "2026-12-01T00:00:00"],
     "argument --expires: timestamp needs a time zone"),
    (["refusals", "--limit", "-1"], "argument --limit: expected 1 to 1000, got '-1'"),
    (["refusals", "--limit", "99999999999999999999"], "argument --limit: expected 1 to 1000"),
    (["caps", "reset", "--scope", "trunk"], "argument --scope: expected global, "
                                            "trunk:<carrier> or merchant:<id>, got 'trunk'"),
])
def test_a_bad_argument_is_a_usage_error_naming_it(config: Path, args: list[str], message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        guard_cli(["--config", str(config), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m callback_server.guard") and message in err, err


def test_bad_config_and_unreachable_database_are_one_line_without_traceback(
        config: Path, tmp_path: Path) -> None:
    def run(path: Path, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "callback_server.guard", "--config",
                               str(path), *args], cwd=REPO, capture_output=True, text=True,
                              timeout=120, env={"PATH": "/usr/bin:/bin", **(env or {})})

    missing = run(tmp_path / "gone.toml", "status")
    assert (missing.returncode, missing.stderr) == (
        2, f"config error: {tmp_path}/gone.toml: cannot read config: No such file or "
           "directory\n")
    down = run(config, "lists", "show", "block",
               env={"CALLBACK__DATABASE__URL": "postgresql://cbgw@127.0.0.1:9/nowhere"})
    assert down.returncode == 1
    assert down.stderr.startswith("error: the database is unreachable (")
    assert len(down.stderr.splitlines()) == 1 and "Traceback" not in down.stderr
