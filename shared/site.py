"""What both sites' servers are made of, apart from their own call logic.

Configuration: :class:`SiteCommon` parses the sections every site has
(``[database] [http] [tls] [ari] [signing] [peer] [rates] [operator] [[merchants]]``);
each server adds its own sections on top.

Composition: the building blocks of both composition roots (``app.py``):
a database connection retried at start-up, the signature verifier from the
trust list, the link client with its per-kind route policy, the rating
service, and :func:`background`, which ties a task's life to a ``cleanup_ctx``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from shared import ari, metrics
from shared.capacity import CapacitySettings
from shared.config import (
    AriSettings,
    DatabaseSettings,
    HttpSettings,
    Merchant,
    Section,
    SigningSettings,
    Source,
    TlsSettings,
    parse_merchants,
)
from shared.db import Warming, create_pool, resolve_url
from shared.link import LinkClient
from shared.link_policy import PeerSettings
from shared.money import FxTable
from shared.outbox_operator import OperatorSettings
from shared.pki import client_context, server_context
from shared.signing import Signer, SigningKey, Verifier, load_public_key
from shared.waits import cancel_and_wait

if TYPE_CHECKING:
    from routing_rates import RatingService
    from routing_rates.call_lengths import Policy

DB_START_TIMEOUT_S = 60.0

#: The cyclic collector's thresholds once a server is up. CPython's young generation is
#: collected every 700 net container allocations: a few requests' worth on a busy
#: server, each collection re-walking what those requests still hold across their
#: awaits (futures, coroutines, parsed bodies), and every tenth promoting it further.
#: Every 20,000 it is 1/28 as often; the garbage it holds meanwhile is a few MB.
GC_THRESHOLDS = (20_000, 20, 20)


@dataclass(frozen=True, slots=True)
class RatesSettings:
    """``[rates]``: whether routing_rates prices routes and decisions, and its FX table."""

    enabled: bool
    fx_base: str
    fx_rates: Mapping[str, str]
    announce_s: Decimal          # answer mode: announcement length billed on the edge leg
    learn_min_calls: int         # a merchant's class is learned from this many calls on
    learn_prior_calls: int       # the configured distribution weighs as this many calls
    learn_refresh_s: Decimal     # a merchant's new counts are loaded at most this often
    distribution_lead_s: int     # the callback site: a distributed deck's least lead time

    @classmethod
    def parse(cls, s: Section) -> RatesSettings:
        fx = s.section("fx_rates")
        return cls(enabled=s.bool("enabled", False), fx_base=s.str("fx_base", "JPY"),
                   fx_rates={k: str(fx.decimal(k)) for k in fx.keys()},
                   announce_s=s.decimal("announce_s", "5", min=Decimal(0)),
                   learn_min_calls=s.int("learn_min_calls", 50, min=1),
                   learn_prior_calls=s.int("learn_prior_calls", 200, min=0),
                   learn_refresh_s=s.decimal("learn_refresh_s", "60", min=Decimal(0)),
                   distribution_lead_s=s.int("distribution_lead_s", 60, min=0))

    def learning(self) -> Policy:
        """How ``routing_rates.call_lengths`` learns the merchants' call lengths."""
        from routing_rates.call_lengths import Policy

        return Policy(self.learn_min_calls, self.learn_prior_calls,
                      float(self.learn_refresh_s))

    def fx(self) -> FxTable:
        return FxTable.from_mapping(self.fx_base, self.fx_rates)


#: each site's peer: the certificate identity ``[peer] identity`` pins by default
_PEER_OF = {"edge": "callback", "callback": "edge"}


@dataclass(frozen=True, slots=True)
class SiteCommon:
    """The sections both sites have. Servers keep these as fields of their settings."""

    path: Path
    database: DatabaseSettings
    http: HttpSettings
    tls: TlsSettings | None            # None: plain HTTP (development only)
    require_client_cert: bool
    ari: AriSettings
    signing: SigningSettings
    peer: PeerSettings
    merchants: tuple[Merchant, ...]
    rates: RatesSettings
    operator: OperatorSettings
    capacity: CapacitySettings | None  # None: no [capacity], the Asterisks are not sized

    @classmethod
    def parse(cls, top: Section, path: Path, *, app: str, default_database: str,
              default_port: int, require_client_cert: bool) -> SiteCommon:
        http = top.section("http")
        merchants = parse_merchants(top)
        if not merchants:
            raise top.error("merchants", "at least one [[merchants]] entry is needed")
        return cls(
            path=path,
            database=DatabaseSettings.parse(top.section("database"), default_database),
            http=HttpSettings.parse(http, default_port),
            tls=TlsSettings.parse(top.section("tls")) if top.has("tls") else None,
            require_client_cert=http.bool("require_client_cert", require_client_cert),
            ari=AriSettings.parse(top.section("ari"), app),
            signing=SigningSettings.parse(top.section("signing")),
            peer=PeerSettings.parse(top.section("peer"), default_identity=_PEER_OF.get(app)),
            merchants=merchants,
            rates=RatesSettings.parse(top.section("rates")),
            operator=OperatorSettings.parse(top.section("operator")),
            capacity=CapacitySettings.parse(top))

    def fields(self) -> dict[str, Any]:
        """As keyword arguments for a server's settings class."""
        return {name: getattr(self, name) for name in self.__slots__}

    def file_problems(self) -> list[tuple[str, str]]:
        """What ``serve`` will open, loaded now: ``(key, problem)`` for each file that fails.

        The TLS CA, certificate and key (and that the key is the certificate's), our
        signing keys and the peer's trusted public keys; with ``[capacity]``, the
        Asterisks' limits (:mod:`shared.capacity`). ``check`` and ``serve`` refuse a
        config with any (:meth:`shared.config.Source.refuse`), before anything starts.
        """
        problems = []
        if self.tls is not None:
            problems += _tls_problems(self.tls)
        for i, path in enumerate(self.signing.keys):
            problems += _load_problems(f"signing.keys[{i}]", path, "an Ed25519 private key",
                                       SigningKey.load)
        for key_id, path in self.signing.trusted.items():
            problems += _load_problems(f"signing.trusted.{key_id}", path,
                                       "an Ed25519 public key", load_public_key)
        if self.capacity is not None:
            problems += self.capacity.problems()
        return problems + self._call_length_problems()

    def _call_length_problems(self) -> list[tuple[str, str]]:
        """Each merchant's ``[merchants.call_lengths]``, its file loaded, names resolved."""
        if not self.rates.enabled:
            return []
        from routing_rates.call_lengths import Policy, from_merchants
        from routing_rates.duration import DistributionError

        problems = []
        for i, merchant in enumerate(self.merchants):
            try:
                from_merchants([merchant], Policy())
            except (DistributionError, OSError) as exc:
                problems.append((f"merchants[{i}].call_lengths", str(exc)))
        return problems

    def check_files(self, source: Source) -> None:
        source.refuse(self.file_problems())


def _load_problems(key: str, path: Path, what: str, loader: Callable[[Path], object]
                   ) -> list[tuple[str, str]]:
    """``[(key, problem)]`` if ``loader`` cannot load ``path`` as ``what``, else ``[]``."""
    try:
        loader(path)
    except FileNotFoundError:
        return [(key, f"{path}: no such file")]
    except OSError as exc:
        return [(key, f"{path}: cannot read ({exc.strerror})")]
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0].removeprefix(f"{path}: ")
        return [(key, f"{path}: not {what}" + ("" if reason == f"not {what}" else
                                                f" ({reason})"))]
    return []


def _tls_problems(tls: TlsSettings) -> list[tuple[str, str]]:
    problems = [
        *_load_problems("tls.ca", tls.ca, "PEM CA certificates",
                        lambda p: x509.load_pem_x509_certificates(p.read_bytes())),
        *_load_problems("tls.cert", tls.cert, "a PEM certificate",
                        lambda p: x509.load_pem_x509_certificate(p.read_bytes())),
        *_load_problems("tls.key", tls.key, "a PEM private key (unencrypted)",
                        lambda p: serialization.load_pem_private_key(p.read_bytes(), None))]
    if not problems:
        try:
            server_context(tls.cert, tls.key, tls.ca)
        except ssl.SSLError as exc:
            problems.append(("tls.key", f"{tls.key} is not the key of tls.cert {tls.cert} "
                                        f"({exc.reason or exc})"))
    return problems


# --- composition ------------------------------------------------------------------------


async def connect_database(db: DatabaseSettings, log: logging.Logger,
                           timeout_s: float = DB_START_TIMEOUT_S, *,
                           warm: Warming | None = None) -> tuple[str, asyncpg.Pool]:
    """The database URL and a pool, retrying with backoff while the server is not up;
    ``warm`` runs on each new pooled connection (:func:`shared.db.create_pool`)."""
    url = await asyncio.to_thread(resolve_url, db.url, db.name)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    delay = 0.5
    while True:
        try:
            pool = await create_pool(url, min_size=db.min_connections,
                                     max_size=db.max_connections,
                                     on_acquire=metrics.common().db_pool_acquire_wait.observe,
                                     warm=warm)
            return url, pool
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if loop.time() > deadline:
                raise RuntimeError(f"database unreachable for {timeout_s:.0f} s: {exc}") from exc
            log.warning("database not reachable (%s); retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def verifier_for(signing: SigningSettings) -> Verifier:
    """Verifies the peer's messages against our trust list (revoke = remove a key)."""
    return Verifier({key_id: load_public_key(path) for key_id, path in signing.trusted.items()})


def link_client(signing: SigningSettings, tls: TlsSettings | None, peer: PeerSettings
                ) -> LinkClient:
    """Signs with every key of ours and delivers by the ``[peer]`` policy, over mutual TLS."""
    signer = Signer([SigningKey.load(path) for path in signing.keys])
    ssl_ctx = client_context(tls.ca, tls.cert, tls.key) if tls else None
    return LinkClient(peer.routes, signer, ssl_ctx, policy=peer.policy,
                      peer_identity=peer.identity if tls else None)


@asynccontextmanager
async def background(coro: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """Run ``coro`` as a task for the duration of the ``async with`` block."""
    task = asyncio.create_task(coro, name=name)
    try:
        yield
    finally:
        await cancel_and_wait(task)     # the task's cancellation taken, the caller's passed on


async def start_rating_service(pool: asyncpg.Pool, rates: RatesSettings,
                               log: logging.Logger, merchants: Sequence[Merchant] = (),
                               ) -> RatingService | None:
    """``routing_rates.RatingService`` when ``[rates] enabled``; None (logged) otherwise.

    Each merchant's ``[merchants.call_lengths]`` and ``[rates] learn_*`` set the call
    lengths its decisions assume (``routing_rates.call_lengths``).

    A site without rates still works: the edge applies each merchant's default,
    the callback site its static routes. So a failure here is logged, not fatal.
    """
    if not rates.enabled:
        log.info("routing_rates disabled in [rates]")
        return None
    try:
        from routing_rates import RatingService
        from routing_rates.call_lengths import from_merchants

        lengths = from_merchants(merchants, rates.learning())
        return await RatingService.start(pool, fx=rates.fx(), lengths=lengths)
    except Exception as exc:
        log.error("routing_rates unavailable (%s: %s)", type(exc).__name__, exc)
        return None


async def log_asterisk_reachability(client: ari.AriClient, url: str, log: logging.Logger,
                                    meanwhile: str) -> None:
    """Say at start-up whether Asterisk answers; the ARI client keeps retrying anyway."""
    try:
        async with asyncio.timeout(2.0):    # not wait_for: it can drop a cancellation
            info = await client.asterisk_info()
        log.info("Asterisk %s reachable at %s", info.get("system", {}).get("version", "?"), url)
    except (ari.AriError, TimeoutError) as exc:
        log.warning("Asterisk ARI at %s is not reachable yet (%s); the server runs and keeps "
                    "retrying; %s", url, exc, meanwhile)


def ari_client(a: AriSettings, events_allowed: Collection[str]) -> ari.AriClient:
    """The site's ARI client; Asterisk sends its application only ``events_allowed``."""
    return ari.AriClient(base_url=a.url, username=a.username, password=a.password, app=a.app,
                         events_allowed=events_allowed)


def settle_heap() -> None:
    """Freeze what the process holds now and collect less often (:data:`GC_THRESHOLDS`).

    For a server's long-lived start-up state: the rate decks' indexes, the routing
    tables, the pools and the imported modules. ``gc.freeze`` moves them out of the
    collector's generations, so the full collections a server still runs do not rescan
    millions of rate entries. On the callback site's batch intake this cut the servers'
    CPU per request by about 5 % (``git show 7d988d0:bench/README.md``, session 8); at
    the edge it keeps a decision's p99 under 1 ms (``bench/rates_decide.py``: 4-6 ms
    without it, the full collections landing on the decisions). A process-wide setting:
    for a server's own process (``serve``) or a benchmark's, not for tests that run an
    app inside the test process."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def settle_heap_on_startup(app: web.Application) -> None:
    """:func:`settle_heap` once ``app`` has started (after the ``cleanup_ctx`` start-ups,
    which aiohttp runs first)."""

    async def settle(_: web.Application) -> None:
        settle_heap()

    app.on_startup.append(settle)
