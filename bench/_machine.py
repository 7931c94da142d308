"""How fast this machine is right now, to read a run's figures against.

This VM's speed varies by a factor of two to three from day to day (other guests
share its host), and every figure in ``bench/README.md`` moves with it. Each
benchmark prints this calibration first: a fixed piece of pure-Python work, timed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any

#: The calibration's time on this VM's fast days (2026-11-22 to 2026-12-01).
FAST_DAY_S = 0.5


#: The calibration: module-level code (global lookups), exactly what the session notes
#: timed as ``time python3 -c ...`` since 2026-11-22.
_LOOP = "s = 0\nfor i in range(10_000_000):\n    s += i\n"


def calibration_s() -> float:
    """Seconds for a pure-Python loop of 10M additions at module level (best of two)."""
    code = compile(_LOOP, "<calibration>", "exec")
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        exec(code, {})
        best = min(best, time.perf_counter() - started)
    return best


def speed_line() -> str:
    took = calibration_s()
    return (f"machine speed: a 10M-addition Python loop took {took:.2f} s "
            f"(fast days: ≈ {FAST_DAY_S} s, so this machine runs at about "
            f"{min(1.0, FAST_DAY_S / took):.0%} of that)")


def p50_p99(samples: list[float]) -> tuple[float, float]:
    """The median and the 99th percentile (nearest rank, rounded down) of ``samples``."""
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


def rounds_main(argv: list[str] | None, *, prog: str, doc: str | None, default: int,
                run: Callable[[int], Coroutine[Any, Any, int]]) -> int:
    """A timed-rounds bench's command line: ``--rounds`` (at least 100), the speed line,
    then ``run(rounds)`` on a new event loop; its exit status."""
    parser = argparse.ArgumentParser(prog=prog, description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=default, help="timed calls of each kind")
    args = parser.parse_args(argv)
    if args.rounds < 100:
        parser.error("--rounds: at least 100")
    print(speed_line(), flush=True)
    return asyncio.run(run(args.rounds))
