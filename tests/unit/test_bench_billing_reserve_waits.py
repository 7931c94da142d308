"""What ``python -m bench billing_reserve`` prints beside each timed burst: how long the
bench's process and the database's backends waited for a CPU (their schedstat), and what
PostgreSQL did beside the timed bursts (WAL segments, checkpoints, autovacuum)."""

from __future__ import annotations

import os
import time

from bench.billing_reserve import _cpu_line, _cpu_ns, _CpuWaits, _server_work_line

MB16 = 16 * 1024 * 1024


def test_a_process_cpu_time_grows_while_it_runs_and_a_missing_one_reads_nothing() -> None:
    ran, waited = _cpu_ns(os.getpid())
    t = time.perf_counter()
    while time.perf_counter() - t < 0.02:   # 20 ms on a CPU
        pass
    ran2, waited2 = _cpu_ns(os.getpid())
    assert ran2 - ran >= 10_000_000
    assert waited2 >= waited
    assert _cpu_ns(2**22 + 1) == (0, 0)     # above the kernel's largest pid


def test_each_burst_gets_its_own_waits_and_its_start() -> None:
    waits = _CpuWaits()                     # no backends known: their figures are 0
    for _ in range(2):
        waits.before()
        t = time.perf_counter()
        while time.perf_counter() - t < 0.005:
            pass
        waits.after()
    assert len(waits.bursts) == 2 and len(waits.started) == 2
    assert all(own >= 0 and backends == 0 and ran == 0 and mine > 0
               for own, backends, ran, mine in waits.bursts)
    assert waits.started[0] <= waits.started[1] <= time.time()


def test_the_cpu_line_gives_each_burst_and_the_medians() -> None:
    line = _cpu_line([(0.0, 0.0, 10.0, 4.0), (1.0, 2.0, 12.0, 3.0), (0.0, 0.0, 9.0, 5.0)])
    assert "10.0 + 4.0, 12.0 + 3.0, 9.0 + 5.0" in line
    assert "backends 10.0, process 4.0, both 14.0" in line
    assert "no timed bursts" in _cpu_line([])


def test_the_server_line_counts_segment_switches_checkpoints_and_autovacuum() -> None:
    first = {"wal": 4 * MB16 - 1024, "checkpoint": 5, "autovacuums": 1, "autoanalyzes": 2}
    last = {"wal": 4 * MB16 + 1024, "checkpoint": 5, "autovacuums": 3, "autoanalyzes": 11}
    line = _server_work_line(first, last, 1)
    assert "2 kB of WAL" in line and "1 segment switches" in line
    assert "checkpoints: none" in line
    assert "autovacuum runs 2, autoanalyze runs 9" in line
    assert "before the first: 1" in line
    assert "checkpoints: one or more" in _server_work_line(first, {**last, "checkpoint": 6}, 0)
    assert "not readable" in _server_work_line(None, last, 0)
