"""The capacity sweep's commit and WAL counters (``bench.load_sweep.WalCounts``): a
step's growth between two readings, and the line it prints per call-back."""

from __future__ import annotations

from bench.load_sweep import WAL_COUNTERS, WalCounts


def reading(edge: int, callback: int, **wal: int) -> WalCounts:
    return WalCounts({"edge": edge, "callback": callback},
                     {name: wal.get(name, 0) for name in WAL_COUNTERS})


def test_a_step_counts_what_grew_between_its_readings() -> None:
    before = reading(100, 200, wal_records=1_000, wal_bytes=50_000, wal_write=40,
                     wal_sync=30, wal_buffers_full=1)
    after = reading(150, 300, wal_records=2_500, wal_bytes=200_000, wal_write=140,
                    wal_sync=110, wal_buffers_full=1)
    grown = after - before
    assert grown.commits == {"edge": 50, "callback": 100}
    assert grown.wal == {"wal_records": 1_500, "wal_fpi": 0, "wal_bytes": 150_000,
                         "wal_write": 100, "wal_sync": 80, "wal_buffers_full": 0}


def test_the_line_gives_each_count_per_call_back() -> None:
    grown = reading(50, 100, wal_records=1_500, wal_fpi=20, wal_bytes=150_000,
                    wal_write=100, wal_sync=80, wal_buffers_full=0)
    line = grown.line(called_back=10)
    assert "commits per call-back: edge 5.00, callback 10.00" in line
    assert ("records 150.00, full-page images 2.00, bytes 15,000, writes 10.00, "
            "syncs 8.00, buffers full 0.00") in line
    assert "bytes per commit 1,000" in line


def test_no_call_back_divides_by_one_not_zero() -> None:
    line = reading(3, 4, wal_bytes=700).line(called_back=0)
    assert "edge 3.00, callback 4.00" in line
