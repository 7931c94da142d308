"""How fast this machine is right now, to read a run's figures against.

This VM's speed varies by a factor of two to three from day to day (other guests
share its host), and every figure in ``bench/README.md`` moves with it. Each
benchmark prints this calibration first: a fixed piece of pure-Python work, timed.
"""

from __future__ import annotations

import time

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
