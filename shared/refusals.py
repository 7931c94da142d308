"""Stable reason codes for refusing to call a number back, and the verdict value type.

The codes appear unchanged in the database (``callback_requests.reason``,
``guard_refusals.reason``, ``edge_calls.detail``), the logs, the metrics
(``cbgw_guard_refusals_total{reason=...}``) and the APIs of both sites. Never
rename one; add. Pure: no I/O imports (call flows import this module).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Refusal(enum.StrEnum):
    # --- destination policy (policy.py) ----------------------------------------------------
    DESTINATION_WITHHELD = "destination_withheld"        # anonymous, empty, 184
    DESTINATION_MALFORMED = "destination_malformed"      # not digits after normalisation
    DESTINATION_INVALID = "destination_invalid"          # digits, but no valid number
    DESTINATION_FOREIGN = "destination_foreign"          # country not allowed
    DESTINATION_PREMIUM = "destination_premium"          # 0990, premium rate
    DESTINATION_UAN = "destination_uan"                  # 0570 navi dial
    DESTINATION_TOLL_FREE = "destination_toll_free"      # 0120, 0800
    DESTINATION_M2M = "destination_m2m"                  # 020 (M2M, pager)
    DESTINATION_SERVICE = "destination_service"          # 0170, 0180 and other 0AB0 services
    DESTINATION_VOIP = "destination_voip"                # 050 unless enabled
    DESTINATION_TYPE = "destination_type_not_allowed"    # any other type not enabled
    DESTINATION_PREFIX = "destination_prefix_denied"     # an operator deny prefix
    NUMBER_BLOCKED = "number_blocked"                    # on the block list
    # --- velocity and harassment (velocity.py, brake.py) -----------------------------------
    VELOCITY_CONCURRENT = "velocity_concurrent"
    VELOCITY_GAP = "velocity_gap"
    VELOCITY_HOURLY = "velocity_hourly"
    VELOCITY_DAILY = "velocity_daily"
    NUMBER_LOCKED = "number_locked"                      # unconfirmed call-backs: 24 h lock
    BRAKE_NEW_NUMBERS = "brake_new_numbers"              # global anomaly brake
    # --- spend and capacity (caps.py) ------------------------------------------------------
    CAP_TRUNK_CHANNELS = "cap_trunk_channels"
    CAP_TRUNK_CPS = "cap_trunk_cps"
    CAP_TRUNK_SPEND = "cap_trunk_spend_daily"
    CAP_GLOBAL_CHANNELS = "cap_global_channels"
    CAP_GLOBAL_CPS = "cap_global_cps"
    CAP_SPEND_DAILY = "cap_spend_daily"                  # the global daily spend cap
    CAP_MERCHANT_CHANNELS = "cap_merchant_channels"
    CAP_MERCHANT_CPS = "cap_merchant_cps"
    CAP_MERCHANT_SPEND = "cap_merchant_spend_daily"
    # --- business hours (ivr_platform.hours; the edge and the callback worker) -------------
    OUTSIDE_HOURS = "outside_hours"                      # the merchant's line is closed

    @property
    def is_cap(self) -> bool:
        return self.value.startswith("cap_")


@dataclass(frozen=True, slots=True)
class Verdict:
    """A refusal with a human-readable detail (the code is what programs look at)."""

    reason: Refusal
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else str(self.reason)
