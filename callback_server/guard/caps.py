"""Spend and capacity caps, per trunk (carrier), per merchant and global (the site).
Pure decisions.

Checked for every leg dialled through a carrier (the customer's, an advisor's PSTN leg,
a transfer's: ``dialer_messages.capped``) just before its originate, in the one
statement that stores the leg (:meth:`Guard.leg_admission`). No lock is shared
by all legs: each capped scope has its own counters, split into up to
:data:`SHARDS` rows whose rooms add up to the cap, and a leg takes a slot with
one conditional ``UPDATE`` of a row no other leg holds (``guard_claim``,
migrations 0600, 0610; it waits for a held row only when no free one has room),
so two workers cannot both take the last channel, legs of different trunks never
wait for each other, and legs under the site's cap wait for each other only when
more than :data:`SHARDS` are being admitted at once. A scope without a cap
(unset, or 0 in the settings) has no counter and is neither read nor written:

* **channels**: admitted legs dialling, ringing or up (``guard_live``; a leg's
  slot is given back by a trigger in the transaction that ends the leg, also
  when reconcile settles it after a crash);
* **cps**: legs admitted in the last second (``guard_cps``, a sliding
  window);
* **spend_daily**: carrier cost of today's CDRs (``guard_spend``, in
  ``currency``; the day is taken in ``timezone``), minus what was spent when
  an operator last reset that cap; added in each CDR's transaction (one
  statement for the leg's scopes) to a shard row of each scope no other CDR
  holds (``guard_add_spend``, migrations 0985, 0986), so CDRs do not wait for
  each other; the spend is the sum of the shards.

A reached CPS cap *paces* the leg, as a production switch does (Twilio's queued CPS,
Kamailio's ratelimit): the leg waits, holding no transaction nor connection, until the
sliding second has room again (the guard's claim says when: the admission that must leave
the window, + 1 s), then is claimed again on the same route, for at most
``cps_max_wait_s`` in all (:func:`pace`); a burst is smoothed instead of being spilled to
a dearer carrier. Any other reached cap, a CPS cap past that bound, or a CPS cap that
latches, refuses the leg at once (the next route is tried, else the job waits
``retry_s`` without counting a round) and raises an alert. Cap kinds in ``latch``
(default: ``spend_daily``) *trip*: the trip is stored and every origination in that
scope is refused until an operator resets it (``POST /v1/guard/caps/reset``,
``python -m callback_server.guard caps reset``). Channel and CPS caps are throttles by
default; add them to ``latch`` to make them trip too (``cps_max_wait_s = 0``: CPS
refuses without waiting, without tripping).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from callback_server.guard.reasons import Refusal, Verdict

KINDS = ("channels", "cps", "spend_daily")
GLOBAL = "global"
#: counter rows per capped scope and kind (fewer when the cap is smaller)
SHARDS = 8
#: the shortest wait of a paced leg (its window frees as it is refused: claim again soon)
MIN_PACE_S = 0.005

_REASONS = {
    ("global", "channels"): Refusal.CAP_GLOBAL_CHANNELS,
    ("global", "cps"): Refusal.CAP_GLOBAL_CPS,
    ("global", "spend_daily"): Refusal.CAP_SPEND_DAILY,
    ("trunk", "channels"): Refusal.CAP_TRUNK_CHANNELS, ("trunk", "cps"): Refusal.CAP_TRUNK_CPS,
    ("trunk", "spend_daily"): Refusal.CAP_TRUNK_SPEND,
    ("merchant", "channels"): Refusal.CAP_MERCHANT_CHANNELS,
    ("merchant", "cps"): Refusal.CAP_MERCHANT_CPS,
    ("merchant", "spend_daily"): Refusal.CAP_MERCHANT_SPEND,
}


def trunk_scope(carrier_id: str) -> str:
    return f"trunk:{carrier_id}"


def merchant_scope(merchant_id: str) -> str:
    return f"merchant:{merchant_id}"


def scopes_of(carrier_id: str, merchant_id: str) -> tuple[str, ...]:
    """The scopes a customer leg counts in, in the order their counters are taken
    (sorted: two legs never wait for each other's rows in opposite orders)."""
    return (GLOBAL, merchant_scope(merchant_id), trunk_scope(carrier_id))


def reason_for(scope: str, kind: str) -> Refusal:
    return _REASONS[(scope.partition(":")[0], kind)]


@dataclass(frozen=True, slots=True)
class CapLimits:
    channels: int | None = None          # None: no cap
    cps: int | None = None
    spend_daily: Decimal | None = None


@dataclass(frozen=True, slots=True)
class CapSettings:
    currency: str = "USD"
    timezone: str = "Asia/Tokyo"
    global_limits: CapLimits = field(default_factory=lambda: CapLimits(
        channels=50, cps=2, spend_daily=Decimal("200")))
    trunk_default: CapLimits = field(default_factory=lambda: CapLimits(
        channels=30, cps=2, spend_daily=Decimal("100")))
    trunks: Mapping[str, CapLimits] = field(default_factory=dict)
    #: per merchant (all of its legs, on any trunk): none by default
    merchant_default: CapLimits = CapLimits()
    merchants: Mapping[str, CapLimits] = field(default_factory=dict)
    latch: frozenset[str] = frozenset({"spend_daily"})
    retry_s: int = 30
    #: the longest a leg waits in all for a CPS cap's window to free (0: no pacing)
    cps_max_wait_s: float = 3.0

    @property
    def paces(self) -> bool:
        """Whether a reached CPS cap paces legs rather than refusing them."""
        return self.cps_max_wait_s > 0 and "cps" not in self.latch

    def limits(self, scope: str) -> CapLimits:
        if scope == GLOBAL:
            return self.global_limits
        kind, _, key = scope.partition(":")
        if kind == "merchant":
            return self.merchants.get(key, self.merchant_default)
        return self.trunks.get(key, self.trunk_default)


@dataclass(frozen=True, slots=True)
class Usage:
    channels: int = 0
    cps: int = 0
    spend: Decimal = Decimal(0)


def check(scope: str, limits: CapLimits, usage: Usage, *, pace_cps: bool = False
          ) -> tuple[str, Verdict] | None:
    """The first cap reached in ``scope``: (kind, verdict), or None. With ``pace_cps`` a
    reached CPS cap is not one (the leg will wait for the window)."""
    for kind in ("spend_daily", "channels") if pace_cps else ("spend_daily", "channels", "cps"):
        verdict = reached(scope, kind, limits, usage)
        if verdict is not None:
            return kind, verdict
    return None


def reached(scope: str, kind: str, limits: CapLimits, usage: Usage) -> Verdict | None:
    """The verdict when ``usage`` is at or over the ``kind`` cap of ``scope``, else None."""
    if kind == "spend_daily":
        if limits.spend_daily is not None and usage.spend >= limits.spend_daily:
            return Verdict(reason_for(scope, kind),
                           f"{scope}: spent {usage.spend} of {limits.spend_daily}")
    elif kind == "channels":
        if limits.channels is not None and usage.channels >= limits.channels:
            return Verdict(reason_for(scope, kind),
                           f"{scope}: {usage.channels} of {limits.channels} channels")
    elif limits.cps is not None and usage.cps >= limits.cps:
        return Verdict(reason_for(scope, kind),
                       f"{scope}: {usage.cps} calls in the last second (cap {limits.cps})")
    return None


def pace(settings: CapSettings, kind: str, waited_s: float, free_in_s: float | None
         ) -> float | None:
    """How long a leg refused by a ``kind`` cap waits before it is claimed again, having
    waited ``waited_s`` already, when the window has room in ``free_in_s``; None: it is
    refused (not a pacing CPS cap, or the wait would pass ``cps_max_wait_s``)."""
    if kind != "cps" or not settings.paces or free_in_s is None:
        return None
    wait = max(free_in_s, MIN_PACE_S)
    return None if waited_s + wait > settings.cps_max_wait_s else wait


def crossed_spend(scope: str, limits: CapLimits, before: Decimal, after: Decimal
                  ) -> Verdict | None:
    """A CDR's cost took ``scope`` from below its spend cap to at or above it."""
    cap = limits.spend_daily
    if cap is None or not (before < cap <= after):
        return None
    return Verdict(reason_for(scope, "spend_daily"), f"{scope}: spent {after} of {cap}")
