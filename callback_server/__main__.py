"""``python -m callback_server``: run the callback site, or make its keys.

    python -m callback_server serve --config deploy/callback.example.toml
    python -m callback_server keys init --dir var/pki [--site callback] [--san host]
    python -m callback_server keys rotate --dir var/pki
    python -m callback_server check --config FILE        # parse the config and exit
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from callback_server.config import CallbackSettings
from shared.config import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m callback_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the callback server")
    serve.add_argument("--config", type=Path, required=True)
    serve.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    check = sub.add_parser("check", help="validate the config file")
    check.add_argument("--config", type=Path, required=True)
    keys = sub.add_parser("keys", help="TLS certificates and signing keys (shared.pki)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    init = keys_sub.add_parser("init", help="make the CA, the site certificate and signing key")
    init.add_argument("--dir", type=Path, required=True)
    init.add_argument("--site", action="append", help="default: callback")
    init.add_argument("--san", action="append", help="DNS name or IP in the certificate")
    rotate = keys_sub.add_parser("rotate", help="add the next signing key")
    rotate.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)

    if args.command == "keys":
        from shared import pki

        if args.keys_command == "rotate":
            return pki.main(["rotate", "--dir", str(args.dir), "--site", "callback"])
        pki_args = ["init", "--dir", str(args.dir)]
        for site in args.site or ["callback"]:
            pki_args += ["--site", site]
        for san in args.san or []:
            pki_args += ["--san", san]
        return pki.main(pki_args)

    try:
        settings = CallbackSettings.load(args.config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(f"{args.config}: ok ({len(settings.merchants)} merchants)")
        return 0
    return serve_forever(settings, args.log_level)


def serve_forever(settings: CallbackSettings, log_level: str) -> int:
    from aiohttp import web

    from callback_server.app import create_app
    from shared.pki import server_context

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tls = settings.tls
    ssl_ctx = server_context(tls.cert, tls.key, tls.ca,
                             require_client_cert=settings.require_client_cert) if tls else None
    if ssl_ctx is None:
        logging.getLogger("callback.app").warning("no [tls] section: serving plain HTTP")
    web.run_app(create_app(settings), host=settings.http.host, port=settings.http.port,
                ssl_context=ssl_ctx, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
