"""``python -m callback_server.flows_cli``: a merchant's stored IVR flows, as the API has them.

    python -m callback_server.flows_cli --config FILE --merchant acme validate flows/x.toml
    python -m callback_server.flows_cli --config FILE --merchant acme upload flows/x.toml
    python -m callback_server.flows_cli --config FILE --merchant acme list
    python -m callback_server.flows_cli --config FILE --merchant acme show 3
    python -m callback_server.flows_cli --config FILE --merchant acme activate 3

The same checks as ``POST /v1/ivr/flows`` (:class:`~callback_server.flows_store.FlowStore`
with the site's own: the confirm gate, the prompts in the merchant's language); an
invalid flow is one ``error:`` line naming the file, the line and the node. ``--author``
(default ``cli:<user>``) is kept as who uploaded or activated. The site's config gives
the database; its migrations are applied and its merchants synced first, as ``serve``
does. Output is JSON; exit status 0 ok, 2 bad input or config, 1 database unreachable
or failing (:func:`shared.api_cli.run_command`).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from callback_server.cli_db import load_settings, site_pool
from callback_server.config import CallbackSettings
from callback_server.flows_store import FlowStore, valid_json, validate, versions_json
from callback_server.ivr_services import flow_preparer, site_speech
from shared.api_cli import run_command
from shared.http import ApiError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m callback_server.flows_cli",
                                description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, required=True, help="the callback site's config")
    p.add_argument("--merchant", required=True, help="the merchant id")
    p.add_argument("--author", default=f"cli:{getpass.getuser()}",
                   help="who uploads or activates (default cli:<user>)")
    verbs = p.add_subparsers(dest="verb", required=True)
    for verb in ("validate", "upload"):
        verbs.add_parser(verb).add_argument("file", type=Path, help="the flow, TOML")
    verbs.add_parser("list")
    for verb in ("show", "activate"):
        verbs.add_parser(verb).add_argument("version", type=int)
    return p


async def run(args: argparse.Namespace, settings: CallbackSettings) -> Any:
    merchant = settings.merchant(args.merchant).id
    if args.verb == "validate":      # no database needed
        flow = validate(settings.stored_flow_problems, merchant, _read(args.file),
                        str(args.file))
        return valid_json(flow)
    async with site_pool(settings, "flows-cli") as pool:
        speech = site_speech(settings.media) if args.verb == "activate" else None
        store = FlowStore(pool, settings.stored_flow_problems, flow_preparer(settings, speech))
        match args.verb:
            case "upload":
                version, created = await store.upload(merchant, _read(args.file),
                                                      str(args.file), args.author)
                return {**version.to_json(), "created": created}
            case "list":
                return versions_json(await store.list(merchant))
            case "show":
                found = await store.get(merchant, args.version)
                if found is None:
                    raise ApiError(404, "not-found", f"no flow version {args.version}")
                return found.to_json(with_source=True)
            case _:
                return (await store.activate(merchant, args.version, args.author)).to_json()


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid-flow", f"{path}: cannot read flow: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = load_settings(args.config, args.merchant)
    if settings is None:
        return 2
    return run_command(run(args, settings), {})


if __name__ == "__main__":
    sys.exit(main())
