"""The command line both servers share: ``serve``, ``check`` and ``keys``.

    python -m <site>_server serve --config FILE [--log-level DEBUG] [--log-format json|text]
                                  [--role all|intake]
    python -m <site>_server check --config FILE        # what serve checks, then exit
    python -m <site>_server keys init --dir DIR [--site S] [--san HOST]
    python -m <site>_server keys rotate --dir DIR
    python -m <site>_server keys renew --dir DIR [--site S] [--within-days N] [--force]
    python -m <site>_server outbox dead --config FILE [--limit N]    # dead letters, JSON lines
    python -m <site>_server outbox requeue --config FILE MESSAGE_ID  # send one again
    python -m <site>_server backup --config FILE --dir DIR [--keep N] [--pg-bin DIR]
                                                     # pg_dump of the site's database

Each server passes its site name, how to load its settings and how to build
its aiohttp application; everything else is the same for both sites.

``check`` and ``serve`` load the settings the same way: the config (unknown
keys are errors), then every file ``serve`` will open (TLS certificates and
key, signing keys, trusted public keys) and, on the callback site, the IVR
flows and their prompts. A problem is one line per key (file, line, key, the
file's path) and exit status 2, before anything starts.

``serve`` runs the application on uvloop, with the ``[http]`` settings:
``reuse_port`` lets several processes serve one port, ``access_log`` (off
by default) logs a line per request, and ``metrics_dir`` (or the
``PROMETHEUS_MULTIPROC_DIR`` environment variable) is the site's prometheus_client
multiprocess directory: each process writes its metrics there, any process's ``GET
/metrics`` sums them all, and a process tidies it at start and marks itself dead at
exit (:mod:`shared.metrics`). A site whose intake may need more than
one core (the callback site) also has ``--role intake``: that process serves
only the intake, beside one full server (``--role all``) on the same port
(it needs ``reuse_port`` and a metrics directory); ``deploy/systemd/`` runs them so.
For profiling, ``CBGW_PROFILE=FILE`` runs the server under ``cProfile`` and writes
its statistics to FILE when it stops (``python -m pstats FILE``; ``{site}`` and ``{pid}``
in FILE are the site's name and the process id, for several servers), on the standard
asyncio event loop rather than uvloop, so that the profile (and ``py-spy``) sees the
coroutines' frames. Logs go to stderr as JSON lines (``--log-format json``, the default, or
``LOG_FORMAT``), or as text for reading live (``--log-format text``);
:mod:`shared.logs` has the fields.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from aiohttp import web

from shared import logs, metrics
from shared.access_log import AccessLogger
from shared.api_cli import load_config
from shared.backup import DEFAULT_KEEP
from shared.config import DatabaseSettings, HttpSettings, Merchant, TlsSettings

#: a file: run the server under cProfile (on asyncio's own loop) and write its stats there
PROFILE_ENV = "CBGW_PROFILE"


class SiteSettings(Protocol):
    @property
    def database(self) -> DatabaseSettings: ...

    @property
    def http(self) -> HttpSettings: ...

    @property
    def tls(self) -> TlsSettings | None: ...

    @property
    def require_client_cert(self) -> bool: ...

    @property
    def merchants(self) -> tuple[Merchant, ...]: ...


S = TypeVar("S", bound=SiteSettings)

#: ``serve --log-level`` (or ``LOG_LEVEL``), in any case
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class Site(Generic[S]):
    """What differs between the two servers' command lines."""

    name: str                                   # "edge" or "callback"
    load: Callable[[Path], S]                   # settings from a config file
    create_app: Callable[[S], web.Application]  # the composition root
    #: ``serve --role intake``: the HTTP intake alone, for extra processes beside the
    #: full server on the same port (``[http] reuse_port``); None: no such role
    create_intake_app: Callable[[S], web.Application] | None = None


def parser_for(site: str, *, roles: Sequence[str] = ("all",)) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {site}_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help=f"run the {site} server")
    serve.add_argument("--config", type=Path, required=True)
    serve.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS,
                       default=os.environ.get("LOG_LEVEL", "INFO"))
    serve.add_argument("--log-format", choices=logs.FORMATS,
                       default=os.environ.get("LOG_FORMAT", "json"),
                       help="json: one JSON object per line (default); text: for reading")
    serve.add_argument("--role", choices=list(roles), default="all",
                       help="all: the whole site (default); intake: only the HTTP intake, "
                            "as an extra process beside a full one (needs [http] reuse_port)")
    check = sub.add_parser("check", help="validate the config file and the files it names")
    check.add_argument("--config", type=Path, required=True)
    keys = sub.add_parser("keys", help="TLS certificates and signing keys (shared.pki)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    init = keys_sub.add_parser("init", help="make the CA, the site certificate and signing key")
    init.add_argument("--dir", type=Path, required=True)
    init.add_argument("--site", action="append", help=f"default: {site}")
    init.add_argument("--san", action="append", help="DNS name or IP in the certificate")
    rotate = keys_sub.add_parser("rotate", help="add the next signing key")
    rotate.add_argument("--dir", type=Path, required=True)
    renew = keys_sub.add_parser("renew", help="issue the site's certificate again before "
                                              "it expires (same key and names)")
    renew.add_argument("--dir", type=Path, required=True)
    renew.add_argument("--site", help=f"default: {site}")
    renew.add_argument("--within-days", type=int, help="renew when it expires within this "
                                                       "many days (default 60)")
    renew.add_argument("--force", action="store_true", help="renew whenever it expires")
    outbox = sub.add_parser("outbox", help="dead letters of the link's outbox "
                                           "(shared.outbox_operator)")
    outbox_sub = outbox.add_subparsers(dest="outbox_command", required=True)
    dead = outbox_sub.add_parser("dead", help="list the messages the peer refused for good")
    dead.add_argument("--config", type=Path, required=True)
    dead.add_argument("--limit", type=int, default=100)
    requeue = outbox_sub.add_parser("requeue", help="send a dead message again (same id)")
    requeue.add_argument("--config", type=Path, required=True)
    requeue.add_argument("message_id")
    dump = sub.add_parser("backup", help="dump the site's database (shared.backup): "
                                         "pg_dump's custom format, checked, the oldest pruned")
    dump.add_argument("--config", type=Path, required=True)
    dump.add_argument("--dir", type=Path, required=True, help="where the dumps are kept")
    dump.add_argument("--keep", type=int, default=DEFAULT_KEEP,
                      help="dumps of this site's database kept in DIR, the newest "
                           f"(default {DEFAULT_KEEP})")
    dump.add_argument("--pg-bin", type=Path,
                      help="the directory of pg_dump and pg_restore (default: the embedded "
                           "server's, else PATH's)")
    return parser


def main(site: Site[S], argv: Sequence[str] | None = None) -> int:
    roles = ("all", "intake") if site.create_intake_app is not None else ("all",)
    parser = parser_for(site.name, roles=roles)
    args = parser.parse_args(argv)
    if args.command == "serve" and args.log_format not in logs.FORMATS:   # from LOG_FORMAT
        parser.error(f"LOG_FORMAT {args.log_format!r}: one of {', '.join(logs.FORMATS)}")
    if args.command == "serve" and args.log_level not in LOG_LEVELS:     # from LOG_LEVEL
        parser.error(f"LOG_LEVEL {args.log_level!r}: one of {', '.join(LOG_LEVELS)}")
    if args.command == "keys":
        return _keys(site.name, args)
    settings = load_config(site.load, args.config)
    if settings is None:
        return 2
    if args.command == "check":
        print(f"{args.config}: ok ({len(settings.merchants)} merchants)")
        return 0
    if args.command == "outbox":
        import asyncio

        from shared.outbox_operator import cli

        return asyncio.run(cli(settings.database, args.outbox_command,
                               getattr(args, "message_id", None), getattr(args, "limit", 100)))
    if args.command == "backup":
        from shared.backup import cli as backup

        return backup(settings.database, site.name, args.dir, args.keep, args.pg_bin)
    if args.role == "intake" and not settings.http.reuse_port:
        print(f"config error: {args.config}: [http] reuse_port = true is needed for "
              "--role intake (it shares the port with the full server)", file=sys.stderr)
        return 2
    directory = metrics_directory(settings.http)
    if args.role == "intake" and directory is None:
        print(f"config error: {args.config}: [http] metrics_dir (or {metrics.ENV_DIR}) is "
              "needed for --role intake (GET /metrics sums the processes sharing the port)",
              file=sys.stderr)
        return 2
    if directory is not None:
        try:                # before any metric exists in this process
            metrics.use_directory(directory)
        except OSError as exc:
            print(f"config error: {args.config}: [http] metrics_dir (or {metrics.ENV_DIR}) "
                  f"{directory}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    return serve_forever(site, settings, args.log_level, role=args.role,
                         log_format=args.log_format)


def _keys(site: str, args: argparse.Namespace) -> int:
    from shared import pki

    if args.keys_command == "rotate":
        return pki.main(["rotate", "--dir", str(args.dir), "--site", site])
    if args.keys_command == "renew":
        return pki.main(["renew", "--dir", str(args.dir), "--site", args.site or site,
                         *(["--within-days", str(args.within_days)]
                           if args.within_days is not None else []),
                         *(["--force"] if args.force else [])])
    pki_args = ["init", "--dir", str(args.dir)]
    for name in args.site or [site]:
        pki_args += ["--site", name]
    for san in args.san or []:
        pki_args += ["--san", san]
    return pki.main(pki_args)


def serve_forever(site: Site[S], settings: S, log_level: str, *, role: str = "all",
                  log_format: str = "json") -> int:
    import uvloop

    from shared.link import serve_options
    from shared.pki import server_context
    from shared.site import settle_heap_on_startup

    logs.configure(log_level, log_format)
    tls = settings.tls
    ssl_ctx = server_context(tls.cert, tls.key, tls.ca,
                             require_client_cert=settings.require_client_cert) if tls else None
    if tls is not None:
        metrics.certificates_served(tls.cert, tls.ca)
    if ssl_ctx is None:
        logging.getLogger(f"{site.name}.app").warning("no [tls] section: serving plain HTTP")
    if role == "intake":
        assert site.create_intake_app is not None
        app = site.create_intake_app(settings)
    else:
        app = site.create_app(settings)
    settle_heap_on_startup(app)
    http = settings.http
    profile_to = os.environ.get(PROFILE_ENV)
    profiler = cProfile.Profile() if profile_to else None
    if profiler:
        profiler.enable()
    try:
        web.run_app(app, host=http.host, port=http.port, ssl_context=ssl_ctx, print=None,
                    reuse_port=http.reuse_port or None,
                    access_log=logging.getLogger("aiohttp.access") if http.access_log
                    else None,
                    loop=asyncio.new_event_loop() if profiler else uvloop.new_event_loop(),
                    **{**serve_options(),
                       "access_log_class": AccessLogger.behind(http.trusted_proxies)})
    finally:
        if profiler and profile_to:
            profiler.disable()
            profiler.dump_stats(profile_to.format(site=site.name, pid=os.getpid()))
    metrics.process_ended()
    return 0


def metrics_directory(http: HttpSettings) -> Path | None:
    """``[http] metrics_dir``, else ``PROMETHEUS_MULTIPROC_DIR``, else None (one process)."""
    env = os.environ.get(metrics.ENV_DIR)
    return http.metrics_dir or (Path(env) if env else None)
