"""``python -m callback_server.guard``: the guard's operator actions, straight on the database.

    python -m callback_server.guard --config FILE status
    python -m callback_server.guard --config FILE refusals [--reason R] [--limit N]
    python -m callback_server.guard --config FILE lists show block|allow
    python -m callback_server.guard --config FILE lists add block|allow +819012345678 \\
        --reason "fraud report 2026-11-22" [--by NAME] [--expires 2026-12-01T00:00:00Z]
    python -m callback_server.guard --config FILE lists remove block|allow +819012345678
    python -m callback_server.guard --config FILE unlock 09012345678
    python -m callback_server.guard --config FILE caps reset --by NAME \\
        [--scope global|trunk:<carrier>|merchant:<id>] [--kind channels|cps|spend_daily]

A number is read as the configs and ``routing_rates`` read one
(:func:`shared.phone.normalise`): national ``09012345678``, E.164 ``+819012345678``
or its digits ``819012345678``. A bad argument is a usage error (exit status 2)
before the database is opened; a database error is one line (exit status 1).

Output is JSON. The database is the one the callback site uses (``[database]``,
``DATABASE_URL``). The same operations exist over HTTP (``/v1/guard/...``).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import re
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from callback_server.config import CallbackSettings
from callback_server.guard import store as sql
from callback_server.guard.caps import KINDS
from callback_server.guard.service import Guard
from shared.api_cli import load_config
from shared.db import create_pool, resolve_url
from shared.phone import InvalidNumber, normalise
from shared.timeutil import parse_timestamp

NUMBER_HELP = "national (09012345678), E.164 (+819012345678) or its digits"


def _number(text: str) -> str:
    try:
        return str(normalise(text))
    except InvalidNumber as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _expires(text: str) -> datetime:
    try:
        return parse_timestamp(text, "--expires")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--expires: ")) from None


def _limit(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,4}", text) or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError(f"expected 1 to 1000, got {text!r}")
    return int(text)


def _scope(text: str) -> str:
    if not re.fullmatch(r"global|(trunk|merchant):[a-z0-9][a-z0-9-]*", text):
        raise argparse.ArgumentTypeError("expected global, trunk:<carrier> or merchant:<id>, "
                                         f"got {text!r}")
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m callback_server.guard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="trips, usage, spend today, brake, locked numbers")
    ref = sub.add_parser("refusals", help="recent refusals, newest first")
    ref.add_argument("--reason")
    ref.add_argument("--limit", type=_limit, default=50, help="1 to 1000 (default 50)")
    lists = sub.add_parser("lists", help="block and allow lists")
    lists_sub = lists.add_subparsers(dest="action", required=True)
    show = lists_sub.add_parser("show")
    show.add_argument("list", choices=("block", "allow"))
    add = lists_sub.add_parser("add")
    add.add_argument("list", choices=("block", "allow"))
    add.add_argument("number", type=_number, help=NUMBER_HELP)
    add.add_argument("--reason", default="")
    add.add_argument("--by", default=getpass.getuser())
    add.add_argument("--expires", type=_expires, help="ISO 8601 time the entry ends, with "
                                                      "its zone (2026-12-01T00:00:00Z)")
    remove = lists_sub.add_parser("remove")
    remove.add_argument("list", choices=("block", "allow"))
    remove.add_argument("number", type=_number, help=NUMBER_HELP)
    unlock = sub.add_parser("unlock", help="lift a number's lock")
    unlock.add_argument("number", type=_number, help=NUMBER_HELP)
    caps = sub.add_parser("caps", help="reset tripped caps (operator action)")
    caps_sub = caps.add_subparsers(dest="action", required=True)
    reset = caps_sub.add_parser("reset")
    reset.add_argument("--by", default=getpass.getuser())
    reset.add_argument("--scope", type=_scope,
                       help="global, trunk:<carrier> or merchant:<id> (default: all)")
    reset.add_argument("--kind", choices=KINDS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = load_config(CallbackSettings.load, args.config)
    if settings is None:
        return 2
    try:
        result = asyncio.run(run(settings, args))
    except (OSError, asyncpg.InterfaceError) as exc:
        print(f"error: the database is unreachable ({type(exc).__name__}: {exc})",
              file=sys.stderr)
        return 1
    except asyncpg.PostgresError as exc:
        print(f"error: the database refused ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=lambda v: v.isoformat()
                     if isinstance(v, datetime) else str(v)))
    return 0 if result.get("ok", True) else 1


async def run(settings: CallbackSettings, args: argparse.Namespace) -> dict[str, Any]:
    db = settings.database
    url = await asyncio.to_thread(resolve_url, db.url, db.name)
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        guard = Guard(pool, settings.guard)
        return await _dispatch(guard, args)
    finally:
        await pool.close()


async def _dispatch(guard: Guard, args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "status":
        return await guard.status()
    if args.command == "caps":
        return {"reset": await guard.reset_caps(args.scope, args.kind, args.by)}
    async with guard.pool.acquire() as conn:
        if args.command == "refusals":
            return {"refusals": await sql.refusals(conn, since=None, reason=args.reason,
                                                   limit=args.limit)}
        if args.command == "unlock":
            return {"ok": await sql.unlock(conn, args.number)}
        if args.action == "show":
            return {"entries": await sql.entries(conn, args.list)}
        if args.action == "remove":
            return {"ok": await sql.remove_entry(conn, args.number, args.list)}
        await sql.add_entry(conn, number=args.number, list_name=args.list, reason=args.reason,
                            source="operator", by=args.by, now=guard.clock(),
                            expires_at=args.expires)
        return {"ok": True, "number": args.number, "list": args.list}


if __name__ == "__main__":
    sys.exit(main())
