"""``python -m callback_server.notify_cli``: a merchant's call notifications and phonebook,
as the API has them (:mod:`ivr_platform.notify_http`).

    python -m callback_server.notify_cli --config FILE --merchant acme deliveries [--state parked]
    python -m callback_server.notify_cli --config FILE --merchant acme requeue 42 ops-slack
    python -m callback_server.notify_cli --config FILE --merchant acme phonebook list
    python -m callback_server.notify_cli --config FILE --merchant acme phonebook put 09012345678 \\
        --company 株式会社サンプル --name 山田太郎
    python -m callback_server.notify_cli --config FILE --merchant acme phonebook delete 09012345678

Output is JSON; exit status 0 ok, 2 bad input, not found or config, 1 database
unreachable or failing (:func:`shared.api_cli.run_command`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from callback_server.cli_db import load_settings, site_pool
from callback_server.config import CallbackSettings
from ivr_platform.notify_http import STATES
from ivr_platform.notify_outbox import deliveries, requeue
from ivr_platform.phonebook import Entry, Phonebook
from shared.api_cli import run_command
from shared.http import ApiError, InvalidField
from shared.phone import InvalidNumber, normalise


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m callback_server.notify_cli",
                                description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, required=True, help="the callback site's config")
    p.add_argument("--merchant", required=True, help="the merchant id")
    verbs = p.add_subparsers(dest="verb", required=True)
    listed = verbs.add_parser("deliveries", help="newest first, with their attempts")
    listed.add_argument("--state", choices=STATES)
    listed.add_argument("--limit", type=int, default=100)
    again = verbs.add_parser("requeue", help="send a parked delivery again")
    again.add_argument("notification_id", type=int)
    again.add_argument("channel")
    book = verbs.add_parser("phonebook").add_subparsers(dest="action", required=True)
    book.add_parser("list")
    put = book.add_parser("put")
    put.add_argument("number")
    put.add_argument("--company", default="")
    put.add_argument("--name", default="")
    book.add_parser("delete").add_argument("number")
    return p


async def run(args: argparse.Namespace, settings: CallbackSettings) -> Any:
    merchant = args.merchant
    async with site_pool(settings, "notify-cli") as pool:
        if args.verb == "deliveries":
            return await deliveries(pool, merchant, state=args.state, limit=args.limit)
        if args.verb == "requeue":
            if not await requeue(pool, merchant, args.notification_id, args.channel):
                raise ApiError(404, "not-found", f"no parked delivery of notification "
                                                 f"{args.notification_id} to {args.channel!r}")
            return {"notification_id": args.notification_id, "channel": args.channel,
                    "state": "pending"}
        phonebook = Phonebook(pool)
        if args.action == "list":
            return [e.to_json() for e in await phonebook.list(merchant, limit=10_000)]
        try:
            number = normalise(args.number)
        except InvalidNumber as exc:
            raise InvalidField("number", str(exc)) from None
        if args.action == "delete":
            if not await phonebook.delete(merchant, number):
                raise ApiError(404, "not-found", f"no phonebook entry for {number}")
            return {"number": str(number), "deleted": True}
        entry = Entry(number, args.company, args.name)
        try:
            created = await phonebook.put(merchant, entry)
        except ValueError as exc:
            raise InvalidField("name", str(exc)) from None
        return {**entry.to_json(), "created": created}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = load_settings(args.config, args.merchant)
    if settings is None:
        return 2
    return run_command(run(args, settings), {"number": "NUMBER", "name": "--name"})


if __name__ == "__main__":
    sys.exit(main())
