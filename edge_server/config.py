"""Edge settings: the sections every site has (:class:`shared.site.SiteCommon`) plus
``[edge]`` and ``[edge.timings]``.

Read from one TOML file with ``EDGE__SECTION__KEY`` environment overrides
(``shared.config``). See ``deploy/edge.example.toml`` for every key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

from edge_server.flow_messages import AnnounceMode, FlowTimings, MerchantSettings
from edge_server.link_share import DEFAULT_RESERVE
from edge_server.presence_flow import PresenceLine, PresenceTimings, Wanted
from edge_server.sip_push import SipEndpointSettings
from shared.capacity import CapacitySettings
from shared.config import (
    AriSettings,
    ConfigError,
    DatabaseSettings,
    HttpSettings,
    Merchant,
    Section,
    SigningSettings,
    TlsSettings,
    cannot_write,
    load,
    root,
)
from shared.destination import Policy, PolicySettings
from shared.link_policy import PeerSettings
from shared.outbox_operator import OperatorSettings
from shared.phone import E164
from shared.site import RatesSettings, SiteCommon

ENV_PREFIX = "EDGE"
DEFAULT_DATABASE = "cbgw_edge"
DEFAULT_PORT = 8443


@dataclass(frozen=True, slots=True)
class HoursPrompts:
    """``[edge.hours]``: where the closed messages are rendered ahead
    (:mod:`edge_server.hours_prompts`). Unset: the fixed ``sound:cbgw/closed`` plays."""

    prompts_dir: Path | None           # written by the edge: inside its Asterisk's root
    asterisk_prompts_dir: Path | None  # the same directory as Asterisk sees it

    @classmethod
    def parse(cls, s: Section) -> HoursPrompts:
        if not s.has("prompts_dir"):
            if s.has("asterisk_prompts_dir"):
                raise s.error("asterisk_prompts_dir", "needs prompts_dir")
            return cls(None, None)
        written = s.path_value("prompts_dir")
        seen = s.str("asterisk_prompts_dir", str(written))
        if not seen.startswith("/"):
            raise s.error("asterisk_prompts_dir", "expected an absolute path")
        return cls(written, Path(seen))

    def problems(self) -> list[tuple[str, str]]:
        """``check``: ``serve`` creates ``prompts_dir`` and writes there."""
        why = None if self.prompts_dir is None else cannot_write(self.prompts_dir)
        return [] if why is None else [("edge.hours.prompts_dir", why)]


@dataclass(frozen=True, slots=True)
class EdgeBehaviour:
    direct_context: str          # dialplan context holding each merchant's operator extension
    callback_when_unrated: bool  # no routing data for a caller: call back (true) or keep direct
    per_merchant_unrated: Mapping[str, bool]
    sweep_after_s: int           # held requests older than this are released (crash recovery)
    sweep_every_s: float
    #: pool connections the link's messages never take: kept for the inbound calls'
    #: request store and release (:mod:`edge_server.link_share`)
    store_reserve_connections: int
    timings: FlowTimings
    destinations: PolicySettings   # [edge.destinations]: who may be offered a call-back
    hours: HoursPrompts            # [edge.hours]: the closed messages rendered ahead
    presence: PresenceTimings      # an advisor's call to a presence number
    sip_endpoints: SipEndpointSettings = SipEndpointSettings()  # advisors' softphones

    @classmethod
    def parse(cls, s: Section, max_connections: int) -> EdgeBehaviour:
        """``max_connections``: ``[database] max_connections``, the pool the link's
        messages share with the inbound calls."""
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
            presence = PresenceTimings(
                ask_s=seconds("presence_s", PresenceTimings().ask_s),
                announce_guard_s=timings.early_media_guard_s)
        except ValueError as exc:
            raise t.error(str(exc).split()[0], str(exc)) from None
        overrides = s.section("unrated_callback")
        reserve = s.int("store_reserve_connections", DEFAULT_RESERVE, min=1)
        if reserve >= max_connections:
            raise s.error("store_reserve_connections",
                          f"{reserve} must be below [database] max_connections "
                          f"({max_connections}): the link's messages need at least one")
        return cls(
            direct_context=s.str("direct_context", "direct", pattern=r"[A-Za-z0-9_-]+"),
            callback_when_unrated=s.bool("callback_when_unrated", True),
            per_merchant_unrated={k: overrides.bool(k) for k in overrides.keys()},
            sweep_after_s=s.int("sweep_after_s", 60, min=10),
            sweep_every_s=float(s.decimal("sweep_every_s", "15", min=Decimal(1))),
            store_reserve_connections=reserve,
            timings=timings,
            destinations=PolicySettings.parse(s.section("destinations")),
            hours=HoursPrompts.parse(s.section("hours")),
            presence=presence,
            sip_endpoints=_sip_endpoints(s.section("sip_endpoints")))


def _sip_endpoints(s: Section) -> SipEndpointSettings:
    defaults = SipEndpointSettings()
    return SipEndpointSettings(
        realm=s.str("realm", defaults.realm, pattern=r"[A-Za-z0-9._-]{1,64}"),
        qualify_s=s.int("qualify_s", defaults.qualify_s, min=0, max=3600))


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    path: Path
    database: DatabaseSettings
    http: HttpSettings
    tls: TlsSettings | None            # None: plain HTTP (development only)
    require_client_cert: bool          # off: call centers read /v1/* without client certs
    ari: AriSettings
    signing: SigningSettings
    peer: PeerSettings
    merchants: tuple[Merchant, ...]
    rates: RatesSettings
    operator: OperatorSettings
    edge: EdgeBehaviour
    capacity: CapacitySettings | None = None

    @classmethod
    def load(cls, path: Path, environ: Mapping[str, str] | None = None, *,
             check_files: bool = False) -> EdgeSettings:
        """The settings; with ``check_files``, also every file ``serve`` will open loads."""
        source = load(path, ENV_PREFIX, environ)
        top = root(source)
        common = SiteCommon.parse(top, path, app="edge", default_database=DEFAULT_DATABASE,
                                  default_port=DEFAULT_PORT, require_client_cert=False)
        settings = cls(**common.fields(), edge=EdgeBehaviour.parse(
            top.section("edge"), common.database.max_connections))
        source.check_unknown()
        if check_files:
            source.refuse(common.file_problems() + settings.edge.hours.problems())
        unknown = set(settings.edge.per_merchant_unrated) - {m.id for m in settings.merchants}
        if unknown:
            raise ConfigError(f"{path}: edge.unrated_callback: unknown merchant(s) "
                              f"{', '.join(sorted(unknown))}")
        return settings

    @classmethod
    def load_checked(cls, path: Path) -> EdgeSettings:
        """For ``check`` and ``serve``: :meth:`load` with the files checked."""
        return cls.load(path, check_files=True)

    def link_connections(self) -> int:
        """The pool connections the link's messages may hold at once."""
        return self.database.max_connections - self.edge.store_reserve_connections

    def merchant_settings(self) -> dict[E164, MerchantSettings]:
        """Dialled number → what the flow needs about its merchant (and the number's hours)."""
        table: dict[E164, MerchantSettings] = {}
        policy = Policy(self.edge.destinations)
        for m in self.merchants:
            settings = MerchantSettings(
                id=m.id, announce_mode=AnnounceMode(m.announce_mode.value),
                callback_when_unrated=self.edge.per_merchant_unrated.get(
                    m.id, self.edge.callback_when_unrated),
                operator_extension=m.operator,
                language=m.language,
                destinations=policy)
            for number in m.numbers:
                table[number] = settings if m.hours is None else \
                    replace(settings, hours=m.hours.for_number(number))
        return table

    def presence_lines(self) -> dict[E164, PresenceLine]:
        """Presence number → whose it is and what it does (``[[merchants]]``
        ``presence_online_number``, ``presence_offline_number``)."""
        return {number: PresenceLine(m.id, wanted, m.language)
                for m in self.merchants
                for number, wanted in ((m.presence_online_number, Wanted.ONLINE),
                                       (m.presence_offline_number, Wanted.OFFLINE))
                if number is not None}
