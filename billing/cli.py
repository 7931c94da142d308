"""``python -m billing``: bank transfers entered as deposits, balances and ledgers.

    python -m billing --merchant acme deposit --account member-42 --amount 5000 \\
        --date 2026-12-01 --payer "ﾔﾏﾀﾞ ﾀﾛｳ" --reference MUFG-20261201-0007 [--by sato]
    python -m billing --merchant acme transfers [--after ID] [--limit N]
    python -m billing --merchant acme adjust member-42 --delta -500 --reason "entered twice"
    python -m billing --merchant acme refund member-42 --amount 300 --reason "line dropped"
    python -m billing --merchant acme policy set --unit-s 10 --grace-s 30 --minimum-yen 100
    python -m billing --merchant acme policy show
    python -m billing --merchant acme policy set --group 7 --unit-s 30 --inherit grace_s
    python -m billing --merchant acme report [--date 2026-12-04] [--csv]
    python -m billing --merchant acme reservations [--older-than-s 3600]
    python -m billing --merchant acme settle 17 --talk-s 754 --reason "call crashed"
    python -m billing --merchant acme postpaid member-42
    python -m billing --merchant acme notices [--after ID] [--limit N]
    python -m billing --merchant acme close 17 --how paid-elsewhere --reason "bank transfer"
    python -m billing --merchant acme balance member-42
    python -m billing --merchant acme ledger member-42 [--after ID] [--limit N]

Output is JSON. A deposit, adjustment or refund goes through the API's parser
(:func:`billing.transfers.parse`, :func:`billing.ledger.parse_correction`) before the
database is opened, so the rules and messages are the API's; an error names
the option at fault. ``--by`` defaults to the login name. Database: ``--database-url``,
else ``DATABASE_URL``, else the embedded server (``cbgw_callback``, the callback site's);
the billing migrations are applied on connect. Exit status: 0 ok, 2 bad input or a
refusal (duplicate reference, no such account), 1 database unreachable or failing.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
from collections.abc import Sequence
from typing import Any

import asyncpg

import billing
from billing import policy, reports, standing, transfers
from billing.http import balance_json, live_json, movement_json
from billing.ledger import (
    Correction,
    Ledger,
    OperatorSettle,
    parse_correction,
    parse_operator_settle,
    settlement_json,
)
from shared.api_cli import Text, run_command
from shared.db import create_pool, migrate, package_migrations, resolve_url
from shared.http import InvalidField

#: API field -> the option that sets it
OPTIONS = {"account": "--account", "amount_yen": "--amount", "transferred_on": "--date",
           "payer_name": "--payer", "bank_reference": "--reference", "entered_by": "--by",
           "delta_yen": "--delta", "by": "--by", "reason": "--reason",
           "date": "--date", "talk_s": "--talk-s", "how": "--how", "group": "--group",
           "inherit": "--inherit",
           **{name: "--" + name.replace("_", "-") for name in policy.FIELDS}}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m billing", description=__doc__.split("\n")[0])
    p.add_argument("--database-url", help="PostgreSQL URL (default: DATABASE_URL, else "
                                          "embedded)")
    p.add_argument("--merchant", required=True, help="the merchant id")
    commands = p.add_subparsers(dest="command", required=True)
    deposit = commands.add_parser("deposit", help="enter a bank transfer as a deposit")
    deposit.add_argument("--account", required=True)
    deposit.add_argument("--amount", type=int, required=True, help="yen")
    deposit.add_argument("--date", required=True, help="YYYY-MM-DD the money arrived")
    deposit.add_argument("--payer", required=True, help="the payer as the bank shows it")
    deposit.add_argument("--reference", required=True, help="the bank's reference")
    deposit.add_argument("--by", default=getpass.getuser(), help="who enters it")
    adjust = commands.add_parser("adjust", help="correct an account's available balance")
    adjust.add_argument("--delta", type=int, required=True, help="yen, + or -")
    refund = commands.add_parser("refund", help="give charges back to the balance")
    refund.add_argument("--amount", type=int, required=True, help="yen")
    for correction in (adjust, refund):
        correction.add_argument("account")
        correction.add_argument("--reason", required=True)
        correction.add_argument("--by", default=getpass.getuser(), help="who corrects it")
    rules = commands.add_parser("policy", help="the billing policy in force, or change it")
    rules_sub = rules.add_subparsers(dest="action", required=True)
    show = rules_sub.add_parser("show")
    change = rules_sub.add_parser("set")
    for name in policy.FIELDS:
        change.add_argument("--" + name.replace("_", "-"), type=int, dest=name)
    change.add_argument("--by", default=getpass.getuser(), help="who changes it")
    change.add_argument("--inherit", action="append", default=[], metavar="FIELD",
                        help="with --group: give this field back to the merchant's policy")
    for action in (show, change):
        action.add_argument("--group", type=int, help="an advisor group's policy (its id)")
    live = commands.add_parser("reservations", help="reservations not settled, oldest first")
    live.add_argument("--older-than-s", type=int, default=0, dest="older_than_s")
    live.add_argument("--limit", type=int, default=100, help="1..1000 (100)")
    settle = commands.add_parser("settle", help="settle a reservation a call left live")
    settle.add_argument("reservation", type=int)
    settle.add_argument("--talk-s", type=int, required=True, dest="talk_s")
    settle.add_argument("--reason", required=True)
    settle.add_argument("--by", default=getpass.getuser(), help="who settles it")
    owed = commands.add_parser("postpaid", help="an account's card, unpaid charges, dunning")
    owed.add_argument("account")
    closing = commands.add_parser("close", help="close a postpaid charge in dunning")
    closing.add_argument("charge", type=int)
    closing.add_argument("--how", required=True, help=" or ".join(standing.CLOSURES))
    closing.add_argument("--reason", required=True)
    closing.add_argument("--by", default=getpass.getuser(), help="who closes it")
    told = commands.add_parser("notices", help="dunning notices, oldest first")
    report = commands.add_parser("report", help="a day in billing (Asia/Tokyo)")
    report.add_argument("--date", help="YYYY-MM-DD (default: today)")
    report.add_argument("--csv", action="store_true", help="CSV: a header row, the day's row")
    listed = commands.add_parser("transfers", help="bank transfers entered, oldest first")
    account = commands.add_parser("balance", help="an account's balance")
    account.add_argument("account")
    ledger = commands.add_parser("ledger", help="an account's movements, oldest first")
    ledger.add_argument("account")
    for paged in (listed, ledger, told):
        paged.add_argument("--after", type=int, default=0, help="only ids after this")
        paged.add_argument("--limit", type=int, default=100, help="1..1000 (100)")
    return p


Given = transfers.BankTransfer | Correction | OperatorSettle | standing.Closing | None


def _parsed(args: argparse.Namespace) -> Given:
    """The command's input, checked as the API checks it."""
    if args.command == "close":
        return standing.parse_close({"how": args.how, "by": args.by, "reason": args.reason})
    if args.command == "settle":
        return parse_operator_settle({"talk_s": args.talk_s, "by": args.by,
                                      "reason": args.reason})
    if args.command == "adjust":
        return parse_correction({"delta_yen": args.delta, "by": args.by,
                                 "reason": args.reason}, "adjustment")
    if args.command == "refund":
        return parse_correction({"amount_yen": args.amount, "by": args.by,
                                 "reason": args.reason}, "refund")
    if args.command != "deposit":
        return None
    return transfers.parse({"account": args.account, "amount_yen": args.amount,
                            "transferred_on": args.date, "payer_name": args.payer,
                            "bank_reference": args.reference, "entered_by": args.by},
                           transfers.tokyo_today())


async def run(args: argparse.Namespace, given: Given) -> Any:
    url = await asyncio.to_thread(resolve_url, args.database_url, "cbgw_callback")
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn, [package_migrations("billing", billing.__file__)])
        ledger, m = Ledger(pool), args.merchant
        match given:
            case transfers.BankTransfer():
                recorded = await transfers.record(pool, m, given)
                return {**recorded.to_json(), "balance": balance_json(
                    given.account, await ledger.balance(m, given.account))}
            case Correction():
                txn = await ledger.correct(m, args.account, given)
                return {"transaction_id": txn, "balance": balance_json(
                    args.account, await ledger.balance(m, args.account))}
            case OperatorSettle():
                return settlement_json(await ledger.settle(
                    m, args.reservation, given.talk_s, by=given.by, reason=given.reason))
            case standing.Closing():
                return (await standing.close(pool, m, args.charge, given.how, by=given.by,
                                             reason=given.reason)).to_json()
        return await _read(args, pool, ledger)
    finally:
        await pool.close()


async def _group_policy(args: argparse.Namespace, pool: asyncpg.Pool, merchant: policy.Policy,
                        wanted: dict[str, Any]) -> Any:
    """``policy show|set --group N``: the group's overrides (``--inherit`` gives a field
    back to the merchant's) and the policy in force for it."""
    if args.group < 1:
        raise InvalidField("group", "expected a positive group id")
    group = await policy.current_group(pool, args.merchant, args.group)
    if args.action == "set":
        for name in getattr(args, "inherit", []):
            if name not in policy.FIELDS:
                raise InvalidField("inherit", f"unknown field {name!r} (expected "
                                              f"{', '.join(policy.FIELDS)})")
            wanted[name] = None
        group = await policy.set_group_policy(pool, args.merchant, policy.group_changed(
            group, merchant, {**wanted, "by": args.by}))
    return group.to_json(merchant)


async def _read(args: argparse.Namespace, pool: asyncpg.Pool, ledger: Ledger) -> Any:
    """The commands that only read (and ``policy set``)."""
    m = args.merchant
    match args.command:
        case "reservations":
            return {"items": [live_json(x) for x in await ledger.live(
                m, older_than_s=args.older_than_s, limit=args.limit)]}
        case "report":
            day = transfers.parse_day(args.date, "date", default=transfers.tokyo_today())
            report = await reports.daily(pool, m, day)
            return Text(report.to_csv()) if args.csv else report.to_json()
        case "policy":
            now = await policy.current(pool, m)
            wanted = {n: getattr(args, n) for n in policy.FIELDS
                      if args.action == "set" and getattr(args, n) is not None}
            if args.group is not None:
                return await _group_policy(args, pool, now, wanted)
            if args.action == "set":
                now = await policy.set_policy(pool, m, policy.changed(
                    now, {**wanted, "by": args.by}))
            return now.to_json()
        case "transfers":
            return {"items": [r.to_json() for r in await transfers.listed(
                pool, m, after_id=args.after, limit=args.limit)]}
        case "postpaid":
            owed = await standing.standing(pool, m, args.account)
            return standing.standing_json(args.account, owed, await standing.charges(
                pool, m, args.account))
        case "notices":
            return {"items": await standing.notices(pool, m, after_id=args.after,
                                                     limit=args.limit)}
        case "balance":
            return balance_json(args.account, await ledger.balance(m, args.account))
    await ledger.balance(m, args.account)      # no such account: not found
    return {"account": args.account, "items": [movement_json(x) for x in
                                               await ledger.movements(
                                                   m, args.account, after_id=args.after,
                                                   limit=args.limit)]}


async def _parsed_then_run(args: argparse.Namespace) -> Any:
    """Parse the options inside the command, so a refusal is reported like the others."""
    return await run(args, _parsed(args))


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if getattr(args, "limit", 1) not in range(1, 1001) or getattr(args, "after", 0) < 0 \
            or getattr(args, "older_than_s", 0) < 0:
        p.error("--limit: expected 1..1000; --after, --older-than-s: expected 0 or more")
    return run_command(_parsed_then_run(args), OPTIONS)
