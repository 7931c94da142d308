"""Edge settings: the shared sections plus ``[edge]``, ``[edge.timings]`` and ``[rates]``.

Read from one TOML file with ``EDGE__SECTION__KEY`` environment overrides
(``shared.config``). See ``deploy/edge.example.toml`` for every key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from edge_server.flow_messages import AnnounceMode, FlowTimings, MerchantSettings
from shared.config import (
    AriSettings,
    ConfigError,
    DatabaseSettings,
    HttpSettings,
    LinkRoute,
    Merchant,
    Section,
    SigningSettings,
    TlsSettings,
    load,
    parse_merchants,
    root,
)
from shared.phone import E164

ENV_PREFIX = "EDGE"
DEFAULT_DATABASE = "cbgw_edge"
DEFAULT_PORT = 8443


@dataclass(frozen=True, slots=True)
class EdgeBehaviour:
    direct_context: str          # dialplan context holding each merchant's operator extension
    callback_when_unrated: bool  # no routing data for a caller: call back (true) or keep direct
    per_merchant_unrated: Mapping[str, bool]
    sweep_after_s: int           # held requests older than this are released (crash recovery)
    sweep_every_s: float
    timings: FlowTimings

    @classmethod
    def parse(cls, s: Section) -> EdgeBehaviour:
        t = s.section("timings")
        defaults = FlowTimings()

        def seconds(key: str, default: float) -> float:
            return float(t.decimal(key, str(default), min=Decimal("0.001")))

        try:
            timings = FlowTimings(
                decide_s=seconds("decide_s", defaults.decide_s),
                store_s=seconds("store_s", defaults.store_s),
                early_media_guard_s=seconds("early_media_guard_s", defaults.early_media_guard_s),
                answer_guard_s=seconds("answer_guard_s", defaults.answer_guard_s),
                refusal_guard_s=seconds("refusal_guard_s", defaults.refusal_guard_s),
                late_store_s=seconds("late_store_s", defaults.late_store_s))
        except ValueError as exc:
            raise t.error(str(exc).split()[0], str(exc)) from None
        overrides = s.section("unrated_callback")
        return cls(
            direct_context=s.str("direct_context", "direct", pattern=r"[A-Za-z0-9_-]+"),
            callback_when_unrated=s.bool("callback_when_unrated", True),
            per_merchant_unrated={k: overrides.bool(k) for k in overrides.data},
            sweep_after_s=s.int("sweep_after_s", 60, min=10),
            sweep_every_s=float(s.decimal("sweep_every_s", "15", min=Decimal(1))),
            timings=timings)


@dataclass(frozen=True, slots=True)
class RatesSettings:
    enabled: bool
    fx_base: str
    fx_rates: Mapping[str, str]
    announce_s: Decimal

    @classmethod
    def parse(cls, s: Section) -> RatesSettings:
        fx = s.section("fx_rates")
        return cls(enabled=s.bool("enabled", False), fx_base=s.str("fx_base", "JPY"),
                   fx_rates={k: str(fx.decimal(k)) for k in fx.data},
                   announce_s=s.decimal("announce_s", "5", min=Decimal(0)))


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    path: Path
    database: DatabaseSettings
    http: HttpSettings
    tls: TlsSettings | None            # None: plain HTTP (development only)
    require_client_cert: bool
    ari: AriSettings
    signing: SigningSettings
    peer_routes: tuple[LinkRoute, ...]
    merchants: tuple[Merchant, ...]
    edge: EdgeBehaviour
    rates: RatesSettings

    @classmethod
    def load(cls, path: Path, environ: Mapping[str, str] | None = None) -> EdgeSettings:
        source = load(path, ENV_PREFIX, environ)
        top = root(source)
        http = top.section("http")
        tls = TlsSettings.parse(top.section("tls")) if top.has("tls") else None
        routes = tuple(LinkRoute.parse(r) for r in top.section("peer").sections("routes"))
        if not routes:
            raise top.error("peer.routes", "at least one route to the callback site is needed")
        merchants = parse_merchants(top)
        if not merchants:
            raise top.error("merchants", "at least one [[merchants]] entry is needed")
        settings = cls(
            path=path, database=DatabaseSettings.parse(top.section("database"), DEFAULT_DATABASE),
            http=HttpSettings.parse(http, DEFAULT_PORT), tls=tls,
            require_client_cert=http.bool("require_client_cert", False),
            ari=AriSettings.parse(top.section("ari"), "edge"),
            signing=SigningSettings.parse(top.section("signing")),
            peer_routes=routes, merchants=merchants,
            edge=EdgeBehaviour.parse(top.section("edge")),
            rates=RatesSettings.parse(top.section("rates")))
        unknown = set(settings.edge.per_merchant_unrated) - {m.id for m in merchants}
        if unknown:
            raise ConfigError(f"{path}: edge.unrated_callback: unknown merchant(s) "
                              f"{', '.join(sorted(unknown))}")
        return settings

    def merchant_settings(self) -> dict[E164, MerchantSettings]:
        """Dialled number → what the flow needs about its merchant."""
        table: dict[E164, MerchantSettings] = {}
        for m in self.merchants:
            settings = MerchantSettings(
                id=m.id, announce_mode=AnnounceMode(m.announce_mode.value),
                callback_when_unrated=self.edge.per_merchant_unrated.get(
                    m.id, self.edge.callback_when_unrated),
                operator_extension=m.operator)
            for number in m.numbers:
                table[number] = settings
        return table
