"""``python -m edge_server.sip_cli``: a merchant's advisors' SIP endpoints at the edge, as
``/v1/sip-endpoints`` has them.

    python -m edge_server.sip_cli --config FILE --merchant acme list
    python -m edge_server.sip_cli --config FILE --merchant acme set hoshino   # the password:
                                             # asked at a terminal, else one line on stdin
    python -m edge_server.sip_cli --config FILE --merchant acme delete hoshino

The password is never an argument (it would show in the process list) and never
printed. The same checks and store as the API (:mod:`edge_server.sip_endpoints`): the
running edge servers push the change to their Asterisks at once (NOTIFY). The edge's
config gives the database; its migrations are applied first, as ``serve`` does. Output
is JSON; exit status 0 ok, 2 bad input or config, 1 database unreachable or failing
(:func:`shared.api_cli.run_command`).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_server.config import EdgeSettings
from edge_server.sip_endpoints import SipEndpoints, check_password, check_user
from edge_server.store import edge_migrations
from shared.api_cli import load_config, run_command
from shared.db import create_pool, migrate, resolve_url
from shared.http import ApiError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edge_server.sip_cli",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--config", type=Path, required=True, help="the edge site's config")
    p.add_argument("--merchant", required=True, help="the merchant id")
    verbs = p.add_subparsers(dest="verb", required=True)
    verbs.add_parser("list")
    for verb in ("set", "delete"):
        verbs.add_parser(verb).add_argument("user", help="the SIP user (the endpoint is "
                                                         "<merchant>.<user>)")
    return p


def read_password() -> str:
    """Asked at a terminal (not echoed), else the first line of stdin."""
    if sys.stdin.isatty():
        return getpass.getpass("password: ")
    return sys.stdin.readline().rstrip("\r\n")


async def run(args: argparse.Namespace, settings: EdgeSettings, password: str | None
              ) -> Any:
    merchant = args.merchant
    url = await asyncio.to_thread(resolve_url, settings.database.url, settings.database.name)
    pool = await create_pool(url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn, edge_migrations(with_rates=settings.rates.enabled))
        store = SipEndpoints(pool)
        match args.verb:
            case "list":
                return {"items": [e.to_json() for e in await store.of_merchant(merchant)]}
            case "set":
                assert password is not None
                endpoint, created = await store.put(merchant, args.user, password,
                                                    settings.edge.sip_endpoints.realm)
                return {**endpoint.to_json(), "created": created}
            case _:
                if not await store.delete(merchant, args.user):
                    raise ApiError(404, "not-found", f"no SIP endpoint {args.user}")
                return {"user": args.user, "status": "deleted"}
    finally:
        await pool.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = load_config(EdgeSettings.load, args.config)
    if settings is None:
        return 2
    if args.merchant not in {m.id for m in settings.merchants}:
        print(f"error: --merchant: no merchant {args.merchant!r} in {args.config}",
              file=sys.stderr)
        return 2
    password = None
    try:
        if args.verb != "list":
            check_user(args.user)
        if args.verb == "set":
            password = check_password(read_password())
    except ApiError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return run_command(run(args, settings, password), {})


if __name__ == "__main__":
    sys.exit(main())
