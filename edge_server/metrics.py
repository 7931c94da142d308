"""The edge site's metrics (see :mod:`shared.metrics` for the registry and
docs/CONTRACTS.md for the list). Every call-related metric has a ``merchant`` label
(the merchant owning the dialled number; ``unknown`` for a number no merchant has)."""

from __future__ import annotations

import functools
from typing import TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edge_server.flow_messages import Outcome
from shared.metrics import WAIT_BUCKETS, registry

UNKNOWN_MERCHANT = "unknown"

M = TypeVar("M", Counter, Gauge, Histogram)

#: how an inbound call ended, in five classes (the ``outcome`` label; ``reason`` is the
#: :class:`Outcome` code itself)
OUTCOME_CLASS = {
    Outcome.RELEASED: "callback", Outcome.RELEASED_MID_ANNOUNCEMENT: "callback",
    Outcome.RELEASED_AFTER_GUARD: "callback", Outcome.RELEASED_EARLY_HANGUP: "callback",
    Outcome.RELEASED_BY_SWEEPER: "callback",
    Outcome.NOT_ALLOWED: "direct", Outcome.KEPT_DIRECT: "direct",
    Outcome.UNALLOCATED: "refused", Outcome.WITHHELD: "refused", Outcome.MALFORMED: "refused",
    Outcome.INVALID: "refused",
    Outcome.CLOSED: "closed",           # outside the number's business hours
    Outcome.ABANDONED: "abandoned",
    Outcome.STORE_FAILED: "failed",
    Outcome.STORE_TIMEOUT: "direct",    # the store was too slow: kept on the toll-free line
}


class EdgeMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.calls = Counter(
            "cbgw_edge_calls",
            "Inbound calls ended at the edge, by merchant, outcome (callback, direct, "
            "refused, closed, abandoned, failed) and reason (the edge_calls outcome code).",
            ["merchant", "outcome", "reason"], registry=r)
        self.decisions = Counter(
            "cbgw_edge_decisions",
            "Call back or keep: decisions by merchant, decision (callback, keep, unrated) "
            "and reason (routing_rates reason id; unavailable when rating failed).",
            ["merchant", "decision", "reason"], registry=r)
        self.no_deck = Counter(
            "cbgw_edge_decisions_no_deck",
            "Decisions made without a carrier (or inbound tariff) because the edge holds no "
            "deck version in force for it (none received from the callback site yet), by "
            "merchant and carrier.", ["merchant", "carrier"], registry=r)
        self.saving = Counter(
            "cbgw_edge_expected_saving_yen",
            "Expected saving of calling back instead of keeping the call (direct cost minus "
            "call-back cost), summed over decisions where it is positive, yen, by merchant "
            "and decision.", ["merchant", "decision"], registry=r)
        self.loss = Counter(
            "cbgw_edge_expected_loss_yen",
            "How much more a call-back would cost than keeping the call, summed over "
            "decisions where the saving is negative, yen, by merchant and decision (net "
            "saving: saving minus loss).", ["merchant", "decision"], registry=r)
        self.closed_calls = Counter(
            "cbgw_edge_closed_calls",
            "Inbound calls refused outside the number's business hours (they hear the "
            "closed message; nothing is queued), by merchant and why (outside_windows, "
            "closed_weekday, holiday, special_day).", ["merchant", "status"], registry=r)
        self.presence_calls = Counter(
            "cbgw_edge_presence_calls",
            "Advisors' calls to a presence number, by merchant and outcome (online, "
            "offline, in_call, not_registered, ambiguous, unavailable, caller_id_withheld, "
            "abandoned).", ["merchant", "outcome"], registry=r)
        self.link_db_wait = Histogram(
            "cbgw_edge_link_db_wait_seconds",
            "How long each link message (a report, a batch of them, a rate deck) and each "
            "statement of the outbox relay waited for the link's share of the database "
            "pool ([edge] store_reserve_connections are kept for the inbound calls), "
            "before the pool's own acquire.",
            registry=r, buckets=WAIT_BUCKETS)
        self.link_db_connections = Gauge(
            "cbgw_edge_link_db_connections",
            "Link messages holding a database connection of the link's share, per process.",
            registry=r, multiprocess_mode="liveall")


@functools.cache
def edge() -> EdgeMetrics:
    return EdgeMetrics(registry())


def child(metric: M, *labels: str) -> M:
    """``metric.labels(*labels)``, remembered: a call's counters are looked up once per
    label set (merchant, outcome, reason: a few hundred at most), not with the lock,
    the labels' checks and the tuple ``labels`` builds at every call."""
    return cast(M, _child(metric, labels))


@functools.lru_cache(maxsize=4096)
def _child(metric: Counter | Gauge | Histogram, labels: tuple[str, ...]
           ) -> Counter | Gauge | Histogram:
    return metric.labels(*labels)
