"""The guard's metrics registry: Prometheus text, and other processes' counters added in."""

from __future__ import annotations

import json

from callback_server.guard.metrics import Metrics


def _registry(accepted: int, refused: dict[str, int], decisions: list[float]) -> Metrics:
    m = Metrics()
    m.inc("cbgw_guard_accepted_total", accepted)
    for reason, n in refused.items():
        m.inc("cbgw_guard_refusals_total", n, stage="intake", reason=reason)
    for d in decisions:
        m.observe_decision(d)
    return m


def _lines(text: str) -> set[str]:
    return {line for line in text.splitlines() if not line.startswith("#")}


def test_render_alone_is_this_processs_counters() -> None:
    m = _registry(3, {"velocity": 2}, [0.001, 0.003])
    assert _lines(m.render()) == {
        "cbgw_guard_accepted_total 3",
        'cbgw_guard_refusals_total{reason="velocity",stage="intake"} 2',
        'cbgw_guard_decision_seconds{quantile="0.5"} 0.003000',
        'cbgw_guard_decision_seconds{quantile="0.99"} 0.003000',
        "cbgw_guard_decision_seconds_sum 0.004000",
        "cbgw_guard_decision_seconds_count 2"}


def test_other_processes_snapshots_are_summed_per_name_and_labels() -> None:
    mine = _registry(3, {"velocity": 2}, [0.001])
    other = _registry(4, {"velocity": 1, "brake_new_numbers": 5}, [0.002, 0.002])
    third = Metrics()
    third.inc("cbgw_guard_locks_total")
    snapshots = [json.loads(json.dumps(o.snapshot())) for o in (other, third)]  # as stored
    text = mine.render(snapshots)
    assert {
        "cbgw_guard_accepted_total 7",
        'cbgw_guard_refusals_total{reason="velocity",stage="intake"} 3',
        'cbgw_guard_refusals_total{reason="brake_new_numbers",stage="intake"} 5',
        "cbgw_guard_locks_total 1",
        "cbgw_guard_decision_seconds_sum 0.005000",
        "cbgw_guard_decision_seconds_count 3",
        'cbgw_guard_decision_seconds{quantile="0.5"} 0.001000',  # this process's window
    } <= _lines(text)
    assert text.count("# TYPE cbgw_guard_refusals_total counter") == 1
    assert mine.value("cbgw_guard_accepted_total") == 3  # rendering changes nothing
