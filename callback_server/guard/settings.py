"""``[guard]`` settings with documented defaults (``deploy/callback.example.toml``)."""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field
from decimal import Decimal

from callback_server.guard.alerts import AlertSettings
from callback_server.guard.brake import BrakeSettings
from callback_server.guard.caps import KINDS, CapLimits, CapSettings
from callback_server.guard.velocity import Limits, VelocitySettings
from shared.config import Section
from shared.destination import PolicySettings
from shared.money import check_currency

_SHA256 = r"[0-9a-f]{64}"
#: the longest ``[guard.caps] cps_max_wait_s``
MAX_CPS_WAIT_S = 30


@dataclass(frozen=True, slots=True)
class GuardSettings:
    policy: PolicySettings = field(default_factory=PolicySettings)
    velocity: VelocitySettings = field(default_factory=VelocitySettings)
    brake: BrakeSettings = field(default_factory=BrakeSettings)
    caps: CapSettings = field(default_factory=CapSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    max_call_s: int = 3600
    require_confirm: bool = True
    operator_token_sha256: str | None = None

    @classmethod
    def parse(cls, s: Section) -> GuardSettings:
        return cls(policy=PolicySettings.parse(s.section("policy")),
                   velocity=_velocity(s.section("velocity")),
                   brake=_brake(s.section("brake")),
                   caps=_caps(s.section("caps")), alerts=_alerts(s.section("alerts")),
                   max_call_s=s.int("max_call_s", 3600, min=10, max=6 * 3600),
                   require_confirm=s.bool("require_confirm", True),
                   operator_token_sha256=(s.str("operator_token_sha256", pattern=_SHA256)
                                          if s.opt_str("operator_token_sha256") else None))


def _brake(s: Section) -> BrakeSettings:
    d = BrakeSettings()
    return BrakeSettings(threshold=s.int("threshold", d.threshold, min=0),
                         window_s=s.int("window_s", d.window_s, min=10),
                         enabled=s.bool("enabled", d.enabled))


def _limits(s: Section, default: Limits) -> Limits:
    return Limits(concurrent=s.int("concurrent", default.concurrent, min=1),
                  per_hour=s.int("per_hour", default.per_hour, min=1),
                  per_day=s.int("per_day", default.per_day, min=1),
                  min_gap_s=s.int("min_gap_s", default.min_gap_s, min=0))


def _velocity(s: Section) -> VelocitySettings:
    d = VelocitySettings()
    return VelocitySettings(
        known=_limits(s.section("known"), d.known),
        unknown=_limits(s.section("unknown"), d.unknown),
        lock_after=s.int("lock_after_unconfirmed", d.lock_after, min=1),
        lock_window_s=s.int("lock_window_s", d.lock_window_s, min=60),
        lock_s=s.int("lock_s", d.lock_s, min=60),
        block_after=s.int("block_after_unconfirmed", d.block_after, min=1),
        block_window_s=s.int("block_window_s", d.block_window_s, min=3600))


def _cap_limits(s: Section, default: CapLimits) -> CapLimits:
    def opt_int(key: str, value: int | None) -> int | None:
        v = s.int(key, value if value is not None else 0, min=0)
        return v or None

    spend: Decimal | None = default.spend_daily
    if s.has("spend_daily"):
        spend = s.decimal("spend_daily", min=Decimal(0)) or None
    return CapLimits(channels=opt_int("channels", default.channels),
                     cps=opt_int("cps", default.cps), spend_daily=spend)


def _caps(s: Section) -> CapSettings:
    d = CapSettings()
    tz = s.str("timezone", d.timezone)
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise s.error("timezone", f"unknown time zone {tz!r}") from None
    latch = s.str_list("latch", tuple(sorted(d.latch)))
    for kind in latch:
        if kind not in KINDS:
            raise s.error("latch", f"{kind!r}: expected some of {', '.join(KINDS)}")
    trunk_default = _cap_limits(s.section("trunk_default"), d.trunk_default)
    trunks = {t.str("carrier", pattern=r"[a-z0-9][a-z0-9-]*"): _cap_limits(t, trunk_default)
              for t in s.sections("trunks")}
    merchant_default = _cap_limits(s.section("merchant_default"), d.merchant_default)
    merchants = {m.str("merchant", pattern=r"[a-z0-9][a-z0-9-]{0,62}"):
                 _cap_limits(m, merchant_default)
                 for m in s.sections("merchants")}
    max_wait = s.decimal("cps_max_wait_s", str(d.cps_max_wait_s), min=Decimal(0))
    if max_wait > MAX_CPS_WAIT_S:
        raise s.error("cps_max_wait_s", f"{max_wait} is above {MAX_CPS_WAIT_S} (a paced "
                                        "leg waits holding its job's lease)")
    try:
        currency = check_currency(s.str("currency", d.currency))
    except ValueError as exc:
        raise s.error("currency", str(exc)) from None
    return CapSettings(currency=currency, timezone=tz,
                       global_limits=_cap_limits(s.section("global"), d.global_limits),
                       trunk_default=trunk_default, trunks=trunks,
                       merchant_default=merchant_default, merchants=merchants,
                       latch=frozenset(latch),
                       retry_s=s.int("retry_s", d.retry_s, min=1),
                       cps_max_wait_s=float(max_wait))


def _alerts(s: Section) -> AlertSettings:
    d = AlertSettings()
    return AlertSettings(
        webhook_url=s.opt_str("webhook_url"), webhook_token=s.opt_str("webhook_token"),
        smtp_host=s.opt_str("smtp_host"), smtp_port=s.int("smtp_port", d.smtp_port, min=1,
                                                          max=65535),
        smtp_starttls=s.bool("smtp_starttls", d.smtp_starttls),
        smtp_username=s.opt_str("smtp_username"), smtp_password=s.opt_str("smtp_password"),
        mail_from=s.str("mail_from", d.mail_from), mail_to=s.str_list("mail_to"),
        repeat_s=s.int("repeat_s", d.repeat_s, min=0))
