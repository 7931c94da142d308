"""A tiny in-process metrics registry rendered in the Prometheus text format.

Counters with labels, and a decision-time summary (count, sum, and the
p50/p99 of a bounded window of recent observations). ``GET /metrics`` serves
:meth:`Metrics.render`. One registry per process (per composition root); when
several processes serve one port, each publishes :meth:`Metrics.snapshot` and
the one answering renders its own counters plus the others' snapshots
(:mod:`callback_server.guard.metrics_share`).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from typing import Any

_HELP = {
    "cbgw_guard_refusals_total": "Call-back requests or legs refused by the guard, by reason.",
    "cbgw_guard_alerts_total": "Guard alerts raised, by kind.",
    "cbgw_guard_alert_deliveries_total": "Alert deliveries, by channel and result.",
    "cbgw_guard_accepted_total": "Call-back requests the guard let through.",
    "cbgw_guard_locks_total": "Numbers locked or block-listed after unconfirmed call-backs.",
    "cbgw_guard_cap_trips_total": "Caps reached (latched or not), by scope and kind.",
}
Labels = tuple[tuple[str, str], ...]


def _labels(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    def __init__(self, window: int = 10_000) -> None:
        self.counters: dict[str, dict[Labels, int]] = defaultdict(dict)
        self._decisions: deque[float] = deque(maxlen=window)
        self._decision_count = 0
        self._decision_sum = 0.0

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        series = self.counters[name]
        key = _labels(labels)
        series[key] = series.get(key, 0) + amount

    def value(self, name: str, **labels: str) -> int:
        return self.counters.get(name, {}).get(_labels(labels), 0)

    def total(self, name: str) -> int:
        return sum(self.counters.get(name, {}).values())

    def observe_decision(self, seconds: float) -> None:
        self._decisions.append(seconds)
        self._decision_count += 1
        self._decision_sum += seconds

    def decision_quantile(self, q: float) -> float | None:
        if not self._decisions:
            return None
        ordered = sorted(self._decisions)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def snapshot(self) -> dict[str, Any]:
        """The counters and the decisions' count and sum, as JSON for the other processes
        (the quantiles' window stays here)."""
        return {"counters": [[name, [list(pair) for pair in labels], value]
                             for name, series in self.counters.items()
                             for labels, value in series.items()],
                "decision_count": self._decision_count, "decision_sum": self._decision_sum}

    def render(self, others: Sequence[Mapping[str, Any]] = ()) -> str:
        """Prometheus text of this process's counters plus those of ``others`` (their
        :meth:`snapshot`), summed per name and labels. The decision quantiles are this
        process's recent decisions; the decisions' sum and count are everyone's."""
        counters: dict[str, dict[Labels, int]] = defaultdict(dict)
        decision_count, decision_sum = self._decision_count, self._decision_sum
        for name, series in self.counters.items():
            counters[name].update(series)
        for other in others:
            for name, labels, value in other.get("counters", ()):
                key = tuple((str(k), str(v)) for k, v in labels)
                counters[name][key] = counters[name].get(key, 0) + int(value)
            decision_count += int(other.get("decision_count", 0))
            decision_sum += float(other.get("decision_sum", 0.0))
        lines: list[str] = []
        for name in sorted(counters):
            lines += [f"# HELP {name} {_HELP.get(name, name)}", f"# TYPE {name} counter"]
            for labels, value in sorted(counters[name].items()):
                lines.append(f"{name}{_fmt(labels)} {value}")
        name = "cbgw_guard_decision_seconds"
        lines += [f"# HELP {name} Time the guard took to decide on a call-back request.",
                  f"# TYPE {name} summary"]
        for q in (0.5, 0.99):
            quantile = self.decision_quantile(q)
            if quantile is not None:
                lines.append(f'{name}{{quantile="{q}"}} {quantile:.6f}')
        lines += [f"{name}_sum {decision_sum:.6f}", f"{name}_count {decision_count}"]
        return "\n".join(lines) + "\n"


def _fmt(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"
