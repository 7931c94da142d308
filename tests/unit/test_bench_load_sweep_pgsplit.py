"""The capacity sweep's split of PostgreSQL's CPU by process and its server counters
(``bench._stack_load.postgres_group``, ``bench.load_sweep.ServerCounts``, ``split_line``)."""

from __future__ import annotations

from bench._stack_load import postgres_group
from bench.load_sweep import BGWRITER_COUNTERS, ServerCounts, split_line

SITES = {"cbgw_bench_sweep_edge": "edge backends",
         "cbgw_bench_sweep_callback": "callback backends"}


def test_a_process_is_grouped_by_its_title() -> None:
    assert postgres_group("postgres: postgres cbgw_bench_sweep_edge [local] idle ",
                          SITES) == "edge backends"
    assert postgres_group("postgres: postgres cbgw_bench_sweep_callback 127.0.0.1(5432) "
                          "UPDATE", SITES) == "callback backends"
    assert postgres_group("postgres: postgres cbgw_bench_billing [local] idle",
                          SITES) == "database cbgw_bench_billing"
    assert postgres_group("postgres: walwriter ", SITES) == "walwriter"
    assert postgres_group("postgres: autovacuum worker cbgw_bench_sweep_callback",
                          SITES) == "autovacuum workers"
    assert postgres_group("postgres: background writer ", SITES) == "background writer"
    assert postgres_group("postgres: logical replication launcher ",
                          SITES) == "logical replication launcher"
    assert postgres_group("/usr/bin/python -m bench", SITES) is None


def counts(timed: int, hit: int, read: int, vacuums: int) -> ServerCounts:
    return ServerCounts({name: timed if name == "checkpoints_timed" else 0
                         for name in BGWRITER_COUNTERS},
                        {"edge": (hit, read), "callback": (2 * hit, 0)},
                        {"callback callback_requests vacuum": vacuums})


def test_the_server_counts_a_step_grew_and_their_line() -> None:
    grown = counts(3, 10_000, 5, 2) - counts(2, 8_000, 5, 2)
    assert grown.bgwriter["checkpoints_timed"] == 1
    assert grown.blocks == {"edge": (2_000, 0), "callback": (4_000, 0)}
    assert grown.vacuums == {}          # none ran over the step
    line = grown.line(called_back=100)
    assert "checkpoints timed 1" in line
    assert "edge 20 hit / 0.00 read, callback 40 hit / 0.00 read" in line
    assert "autovacuum: none" in line


def test_the_split_line_names_each_group_and_the_kernel_part() -> None:
    line = split_line({"edge backends": 1.0, "callback backends": 3.0, "walwriter": 0.2,
                       "bench probes": 0.1, "exited": 0.5},
                      {"edge backends": 0.25, "walwriter": 0.0}, called_back=100,
                      counted=4.1)
    assert line.startswith("PostgreSQL CPU s by process: edge backends 1.00 (kernel 0.25)  "
                           "callback backends 3.00  bench probes 0.10  walwriter 0.20  "
                           "exited 0.50; all 4.80 (48.0 ms a call-back")
    assert "less the bench's probes 40.0 ms a call-back" in line
