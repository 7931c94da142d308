"""``python -m advisors`` on a real PostgreSQL: the directory, presence and settings by
command line, with the same rules as the API and errors naming the option."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import asyncpg
import pytest

from advisors.cli import main
from tests.integration import advisors_db

pytestmark = pytest.mark.integration
pool, clean = advisors_db.fixtures()


async def test_advisors_groups_customers_settings_presence_and_events(
        pg_url: str, clean: asyncpg.Pool, capsys: pytest.CaptureFixture[str]) -> None:
    async def run(*args: str) -> Any:
        code = await asyncio.to_thread(main, ["--database-url", pg_url, "--merchant", "acme",
                                              *args])
        out = capsys.readouterr()
        assert code == 0, out.err
        return json.loads(out.out)

    added = await run("advisor", "add", "--name", "星野", "--code", "0123", "--phone",
                      "090-1111-2222", "--price", "300", "--prompt", "advisors/hoshino")
    aid = added["id"]
    assert added["contact"] == {"kind": "pstn", "number": "+819011112222"}
    group = await run("group", "add", "--name", "タロット", "--member", str(aid))
    assert group["price_per_minute_yen"] is None          # its dearest member's
    assert (await run("group", "set", str(group["id"]), "--price", "150"))[
        "price_per_minute_yen"] == 150
    changed = await run("advisor", "set", str(aid), "--sip", "hoshino", "--max-concurrent",
                        "2")
    assert changed["contact"] == {"kind": "sip", "user": "hoshino"}
    assert changed["groups"] == [group["id"]]
    assert [a["code"] for a in (await run("advisor", "list"))["items"]] == ["0123"]
    customer = await run("customer", "add", "--account", "u-1", "--number", "08012345678",
                         "--number", "+81312345678")
    assert customer["numbers"] == ["+81312345678", "+818012345678"]
    assert (await run("settings", "set", "--after-call", "manual", "--lines", "4",
                      "--click-to-call-first", "advisor", "--lines-busy", "queue",
                      "--queue-announce-s", "20")) == {
        "after_call": "manual", "wrap_up_s": 30, "ring_timeout_s": 20,
        "misses_before_break": 3, "lines": 4, "click_to_call_first": "advisor",
        "lines_busy": "queue", "queue_announce_s": 20}
    assert (await run("advisor", "presence", str(aid), "online"))["state"] == "standby"
    assert (await run("advisor", "presence", str(aid), "break", "--reason", "昼"))[
        "reason"] == "昼"
    events = (await run("events"))["items"]
    assert [(e["event"], e["after"]) for e in events] == [("online", "standby"),
                                                          ("break", "break")]



async def test_an_advisor_retired_by_command_line(
        pg_url: str, clean: asyncpg.Pool, capsys: pytest.CaptureFixture[str]) -> None:
    async def run(*args: str, status: int = 0) -> Any:
        code = await asyncio.to_thread(main, ["--database-url", pg_url, "--merchant", "acme",
                                              *args])
        out = capsys.readouterr()
        assert code == status, out.err
        return json.loads(out.out) if status == 0 else out.err

    aid = (await run("advisor", "add", "--name", "星野", "--code", "0123", "--phone",
                     "090-1111-2222", "--price", "300"))["id"]
    group = await run("group", "add", "--name", "タロット", "--member", str(aid))
    await run("advisor", "presence", str(aid), "online")
    retired = await run("advisor", "retire", str(aid))
    assert retired["retired_at"] is not None and retired["groups"] == []
    assert retired["presence"]["state"] == "offline"
    assert (await run("advisor", "list"))["items"] == []
    assert (await run("group", "list"))["items"] == [{**group, "members": []}]
    assert [e["event"] for e in (await run("events"))["items"]] == ["online", "retired"]
    assert (await run("advisor", "presence", str(aid), "online", status=2)).startswith(
        f"error: advisor {aid} is retired")
    again = await run("advisor", "add", "--name", "星野 二代目", "--code", "0123", "--phone",
                      "090-1111-2222", "--price", "300")
    assert again["id"] != aid


@pytest.mark.parametrize(("args", "message"), [
    (["advisor", "add", "--name", "x", "--code", "12", "--phone", "09011112222",
      "--price", "1"], "error: --code: expected 4 digits"),
    (["advisor", "add", "--name", "x", "--code", "1234", "--phone", "12",
      "--price", "1"], "error: --phone: "),
    (["advisor", "add", "--name", "x", "--code", "1234", "--phone", "09011112222"],
     "error: --price: required"),
    (["advisor", "add", "--name", "x", "--code", "1234", "--sip", "a b", "--price", "1"],
     "error: --sip: expected 1..64"),
    (["advisor", "set", "99", "--price", "5"], "error: no advisor 99"),
    (["advisor", "retire", "99"], "error: no advisor 99"),
    (["customer", "add", "--account", "a", "--number", "abc"], "error: --number: "),
    (["settings", "set", "--lines", "0"], "error: --lines: expected an integer 1..100000"),
    (["group", "add", "--name", "g", "--member", "42"], "error: --member: an id that is "
                                                        "not one of this merchant's"),
    (["group", "add", "--name", "g", "--price", "-1"], "error: --price: expected an "
                                                       "integer 0..100000"),
])
def test_bad_input_is_one_line_naming_the_option(pg_url: str, args: list[str],
                                                 message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "advisors", "--database-url", pg_url,
                           "--merchant", "acme", *args], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr


def test_an_unreachable_database_is_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "advisors", "--database-url",
                           "postgresql://nobody@127.0.0.1:9/none", "--merchant", "acme",
                           "advisor", "list"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 1 and done.stderr.startswith("error: database (")
    assert done.stderr.count("\n") == 1, done.stderr
