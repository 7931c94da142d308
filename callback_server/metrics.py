"""The callback site's metrics (see :mod:`shared.metrics` for the registry and the
multiprocess mode, and docs/CONTRACTS.md for the list).

The guard's counters keep the names and labels they had when the guard rendered
them itself; ``cbgw_guard_decision_seconds`` is a histogram now (it was a summary
of one process's recent window, which cannot be summed across processes).
Every call-related metric has a ``merchant`` label (merchants are configured, so
its values are bounded; a merchant id that is not configured is ``unknown``).
"""

from __future__ import annotations

import functools

from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.metrics import LATENCY_BUCKETS, at_zero, registry

#: the guard decides in microseconds to a few milliseconds
DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 1.0)
#: a leg paced by a CPS cap waits up to [guard.caps] cps_max_wait_s (a few seconds)
PACE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
UNKNOWN_MERCHANT = "unknown"
#: where the guard delivers an alert (``callback_server.guard.alerts``)
ALERT_CHANNELS = ("database", "webhook", "email")


class CallbackMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.callbacks = Counter(
            "cbgw_callbacks",
            "Call-back rounds finished, by merchant, outcome (answered, retry, failed) and "
            "reason (dialer reason code).", ["merchant", "outcome", "reason"], registry=r)
        self.latency = Histogram(
            "cbgw_callback_latency_seconds",
            "From the caller's hang-up at the edge (hungup_at, else received_at) to the "
            "call-back's first originate, by merchant.", ["merchant"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.intake_shed = Counter(
            "cbgw_callback_intake_shed",
            "Call-back requests refused with 503 overloaded (+ Retry-After) because the "
            "database did not keep up; the edge sends them again.", registry=r)
        self.guard_refusals = Counter(
            "cbgw_guard_refusals",
            "Call-back requests or legs refused by the guard, by stage, reason and merchant.",
            ["stage", "reason", "merchant"], registry=r)
        self.guard_accepted = Counter(
            "cbgw_guard_accepted", "Call-back requests the guard let through.", registry=r)
        self.guard_alerts = Counter(
            "cbgw_guard_alerts", "Guard alerts raised, by kind and whether this process "
            "sent it (yes, elsewhere, repeat).", ["kind", "sent"], registry=r)
        self.guard_alert_deliveries = Counter(
            "cbgw_guard_alert_deliveries", "Alert deliveries, by channel and result.",
            ["channel", "result"], registry=r)
        at_zero(self.guard_alert_deliveries, ALERT_CHANNELS, ("ok", "failed"))
        self.guard_locks = Counter(
            "cbgw_guard_locks",
            "Numbers locked or block-listed after unconfirmed call-backs, by action.",
            ["action"], registry=r)
        self.guard_cap_trips = Counter(
            "cbgw_guard_cap_trips", "Caps latched, by scope and kind.", ["scope", "kind"],
            registry=r)
        self.guard_paced = Counter(
            "cbgw_guard_paced", "Legs a CPS cap paced: admitted after waiting for its "
            "sliding second to have room, by merchant.", ["merchant"], registry=r)
        self.guard_pace_wait = Histogram(
            "cbgw_guard_pace_wait_seconds", "How long each paced leg waited for a CPS "
            "cap's window before it was admitted, by merchant.", ["merchant"],
            buckets=PACE_BUCKETS, registry=r)
        self.guard_decision = Histogram(
            "cbgw_guard_decision_seconds",
            "Time the guard took to decide on a call-back request.",
            buckets=DECISION_BUCKETS, registry=r)


@functools.cache
def callback() -> CallbackMetrics:
    return CallbackMetrics(registry())
