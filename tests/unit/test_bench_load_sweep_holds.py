"""The sweep's line of who held a server's database pool over a step
(:func:`bench.load_sweep.hold_lines`), from two scrapes' counters."""

from __future__ import annotations

from bench.load_sweep import Samples, hold_lines


def scrape(holds: dict[str, float], held: dict[str, tuple[float, float]]) -> Samples:
    out: Samples = {}
    for holder, n in holds.items():
        out[("cbgw_db_pool_holds_total", (("holder", holder),))] = n
        total, releasing = held[holder]
        out[("cbgw_db_pool_held_seconds_total", (("holder", holder), ("part", "all")))] = total
        out[("cbgw_db_pool_held_seconds_total",
             (("holder", holder), ("part", "releasing")))] = releasing
    return out


def test_each_holder_its_connections_held_holds_a_second_and_mean_hold() -> None:
    before = scrape({"job": 100, "claim": 10, "idle": 5},
                    {"job": (1.0, 0.1), "claim": (0.5, 0.0), "idle": (0.1, 0.0)})
    after = scrape({"job": 500, "claim": 30, "idle": 5},
                   {"job": (21.0, 4.1), "claim": (1.5, 0.5), "idle": (0.1, 0.0)})
    line = hold_lines(before, after, 10.0)
    # the most held first; a holder that gave nothing back over the step is left out
    assert line == ("job 2.00 held, 40.0/s, mean 50.0 ms (release 10.0 ms); "
                    "claim 0.10 held, 2.0/s, mean 50.0 ms (release 25.0 ms)")


def test_no_holds_say_none() -> None:
    assert hold_lines({}, {}, 10.0) == "none"
