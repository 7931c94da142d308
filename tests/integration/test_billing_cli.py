"""``python -m billing`` on a real PostgreSQL: a bank transfer entered as a deposit, the
duplicate refused, balance, ledger and transfers listed; errors naming the option."""

from __future__ import annotations

import asyncio
import getpass
import json
import subprocess
import sys
from typing import Any

import asyncpg
import pytest

from billing.cli import main
from billing.ledger import Ledger, Reservation
from billing.postpaid import Postpaid
from billing.rating import Terms
from tests.integration import billing_db
from tests.integration.localstripe import client_for
from tests.integration.test_edge_app import free_port

pytestmark = pytest.mark.integration
pool, clean = billing_db.fixtures()
DEPOSIT = ["deposit", "--account", "member-42", "--amount", "5000", "--date", "2026-12-01",
           "--payer", "ﾔﾏﾀﾞ ﾀﾛｳ", "--reference", "MUFG-7"]


async def test_deposit_balance_ledger_and_transfers(
        pg_url: str, clean: asyncpg.Pool, capsys: pytest.CaptureFixture[str]) -> None:
    async def run(*args: str, code: int = 0) -> Any:
        got = await asyncio.to_thread(main, ["--database-url", pg_url, "--merchant", "acme",
                                             *args])
        out = capsys.readouterr()
        assert got == code, out.err
        return json.loads(out.out) if code == 0 else out.err

    entered = await run(*DEPOSIT)
    assert (entered["entered_by"], entered["balance"]["available_yen"]) == (
        getpass.getuser(), 5000)
    assert await run(*DEPOSIT, "--by", "sato", code=2) == (
        f"error: --reference: 'MUFG-7' was entered already (transfer {entered['id']})\n")
    assert (await run("balance", "member-42"))["total_yen"] == 5000
    [move] = (await run("ledger", "member-42"))["items"]
    assert (move["kind"], move["by"]) == ("deposit", getpass.getuser())
    assert [t["id"] for t in (await run("transfers"))["items"]] == [entered["id"]]
    assert (await run("transfers", "--after", str(entered["id"])))["items"] == []
    assert await run("balance", "nobody", code=2) == "error: no billing account 'nobody'\n"
    fixed = await run("adjust", "member-42", "--delta", "-500", "--reason", "entered twice",
                      "--by", "sato")
    assert fixed["balance"]["available_yen"] == 4500
    assert await run("refund", "member-42", "--amount", "1", "--reason", "x", code=2) == (
        "error: the account's charges come to 0 yen net of refunds; cannot refund 1 yen\n")
    assert (await run("ledger", "member-42", "--after", str(move["id"])))["items"][0][
        "reason"] == "entered twice"
    assert (await run("reservations"))["items"] == []
    held = await Ledger(clean).reserve("acme", "member-42", "call-1", Terms(300))
    assert isinstance(held, Reservation)
    [live] = (await run("reservations"))["items"]
    assert live["id"] == held.id
    settled = await run("settle", str(held.id), "--talk-s", "61", "--reason", "crash")
    assert (settled["total_yen"], settled["billed_s"]) == (600, 120)
    assert await run("settle", str(held.id), "--talk-s", "62", "--reason", "x", code=2) == (
        f"error: reservation {held.id} was settled for 61 s of talk\n")
    assert (await run("policy", "show"))["unit_s"] == 60
    rules = await run("policy", "set", "--unit-s", "10", "--minimum-yen", "100", "--by", "sato")
    assert (rules["unit_s"], rules["minimum_yen"], rules["changed_by"]) == (10, 100, "sato")
    assert await run("policy", "set", "--grace-s", "5000", code=2) == (
        "error: --grace-s: expected 0..3600, got 5000\n")
    group = await run("policy", "set", "--group", "7", "--unit-s", "30", "--grace-s", "20")
    assert (group["unit_s"], group["grace_s"], group["in_force"]["minimum_yen"]) == (30, 20, 100)
    group = await run("policy", "set", "--group", "7", "--inherit", "grace_s")
    assert (group["unit_s"], group["grace_s"], group["in_force"]["grace_s"]) == (30, None, 0)
    assert (await run("policy", "show", "--group", "7"))["in_force"]["unit_s"] == 30
    assert (await run("policy", "show"))["unit_s"] == 10
    assert await run("policy", "set", "--group", "7", "--inherit", "price", code=2) == (
        "error: --inherit: unknown field 'price' (expected unit_s, grace_s, minimum_yen, "
        "max_talk_s, tax_percent)\n")
    assert await run("policy", "set", "--group", "0", "--unit-s", "5", code=2) == (
        "error: --group: expected a positive group id\n")
    assert await run("policy", "set", "--group", "7", "--max-talk-s", "0", code=2) == (
        "error: --max-talk-s: expected 1..86400, got 0\n")


@pytest.mark.parametrize(("args", "message"), [
    ([*DEPOSIT, "--amount", "0"], "error: --amount: expected an integer 1..1000000000"),
    ([*DEPOSIT, "--amount", "x"], "usage: "),
    ([*DEPOSIT, "--date", "2026-13-01"], "error: --date: no such day 2026-13-01"),
    ([*DEPOSIT, "--date", "2999-01-01"], "error: --date: 2999-01-01 is in the future"),
    ([*DEPOSIT, "--payer", ""], "error: --payer: required string"),
    ([*DEPOSIT, "--by", "x" * 129], "error: --by: longer than 128 characters"),
    (["adjust", "m-1", "--delta", "0", "--reason", "r"],
     "error: --delta: expected a non-zero integer"),
    (["refund", "m-1", "--amount", "5", "--reason", ""], "error: --reason: required string"),
    (["transfers", "--limit", "0"], "usage: "),
    (["settle", "1", "--talk-s", "-1", "--reason", "r"], "error: --talk-s: expected an integer"),
    (["settle", "1", "--talk-s", "5", "--reason", ""], "error: --reason: required string"),
])
def test_bad_input_is_one_line_naming_the_option(pg_url: str, args: list[str],
                                                 message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "billing", "--database-url", pg_url,
                           "--merchant", "acme", *args], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(message), done.stderr
    assert message.startswith("usage") or done.stderr.count("\n") == 1, done.stderr


def test_an_unreachable_database_is_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "billing", "--database-url",
                           "postgresql://nobody@127.0.0.1:9/none", "--merchant", "acme",
                           "balance", "x"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 1 and done.stderr.startswith("error: database (")
    assert done.stderr.count("\n") == 1, done.stderr


async def test_postpaid_standing_notices_and_closing_a_charge(
        pg_url: str, clean: asyncpg.Pool, capsys: pytest.CaptureFixture[str]) -> None:
    async def run(*args: str, code: int = 0) -> Any:
        got = await asyncio.to_thread(main, ["--database-url", pg_url, "--merchant", "acme",
                                             *args])
        out = capsys.readouterr()
        assert got == code, out.err
        return json.loads(out.out) if code == 0 else out.err

    # no card on file: the charge fails without Stripe being asked
    failed = await Postpaid(clean, client_for(free_port())).charge(
        "acme", "member-7", "consult-1", 30, Terms(100), by="calls")
    assert failed is not None
    owed = await run("postpaid", "member-7")
    assert (owed["unpaid"], owed["in_dunning"], owed["charges"][0]["failure"]) == (
        1, True, "no-card-on-file")
    [notice] = (await run("notices"))["items"]
    assert (notice["kind"], notice["charge_id"]) == ("charge-failed", failed.id)
    assert (await run("notices", "--after", str(notice["id"])))["items"] == []
    assert await run("close", str(failed.id), "--how", "forgiven", "--reason", "x",
                     code=2) == "error: --how: expected one of paid-elsewhere, written-off\n"
    closed = await run("close", str(failed.id), "--how", "written-off", "--reason",
                       "goodwill", "--by", "sato")
    assert (closed["state"], closed["closed"]) == ("closed", "written-off")
    assert (await run("postpaid", "member-7"))["in_dunning"] is False
    assert await run("close", "999999", "--how", "written-off", "--reason", "x",
                     code=2) == "error: no postpaid charge 999999\n"
