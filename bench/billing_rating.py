"""Rating consultation records (billing.rating), against a Decimal baseline, in one run.

Rates N records (random talk times with the Japanese mobile average near 2 min 35 s, a
few long ones past the maximum, five merchants' terms) with :func:`billing.rating.rate`,
and the same records with a straightforward ``Decimal`` rater of the same rules (the
baseline: what the obvious implementation costs). Both must give the same totals and
taxes. Also times :func:`billing.rating.seconds_affordable` (a prepaid call's length).
Target: ≥ 100,000 records/s.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from billing.rating import Terms, rate, seconds_affordable

TARGET_PER_S = 100_000

TERMS_ARGS = ({"price_per_minute_yen": 330}, {"price_per_minute_yen": 200, "unit_s": 10,
                                               "grace_s": 30, "minimum_yen": 200},
              {"price_per_minute_yen": 100, "unit_s": 7}, {"price_per_minute_yen": 550,
                                                           "unit_s": 30, "max_talk_s": 1800},
              {"price_per_minute_yen": 0})


def decimal_rate(talk_s: int, t: Terms) -> tuple[int, int]:
    """The same rules in Decimal, the way one first writes them."""
    capped = min(Decimal(talk_s), Decimal(t.max_talk_s))
    chargeable = max(Decimal(0), capped - t.grace_s)
    unit = Decimal(t.unit_s)
    billed = (chargeable / unit).to_integral_value(ROUND_CEILING) * unit
    if billed == 0:
        return 0, 0
    total = (Decimal(t.price_per_minute_yen) * billed
             / 60).to_integral_value(ROUND_FLOOR)
    total = max(total, Decimal(t.minimum_yen))
    rate_ = Decimal(t.tax_percent) / 100
    tax = (total * rate_ / (1 + rate_)).to_integral_value(ROUND_FLOOR)
    return int(total), int(tax)


def _best_rate(records: list[tuple[int, Terms]], fn: Callable[[int, Terms], object],
               rounds: int) -> float:
    best = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        for talk, terms in records:
            fn(talk, terms)
        took = time.perf_counter() - started
        best = max(best, len(records) / took)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.billing_rating", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5, help="best of this many passes")
    args = parser.parse_args(argv)
    from bench._machine import speed_line

    print(speed_line(), flush=True)
    rng = random.Random(20261204)
    terms = [Terms(**kw) for kw in TERMS_ARGS]
    records: list[tuple[int, Terms]] = [
        (int(rng.expovariate(1 / 155)) if rng.random() < 0.98 else rng.randint(3600, 20000),
         rng.choice(terms)) for _ in range(args.records)]
    for talk, t in records[:20_000]:
        charge = rate(talk, t)
        assert (charge.total_yen, charge.tax_yen) == decimal_rate(talk, t), (talk, t)
    fast = _best_rate(records, rate, args.rounds)
    baseline = _best_rate(records, decimal_rate, args.rounds)
    balances = [(rng.randint(0, 50_000), rng.choice(terms)) for _ in range(args.records)]
    affordable = _best_rate(balances, seconds_affordable, args.rounds)
    print(f"{args.records:,} records, 5 merchants' terms, best of {args.rounds} passes; "
          f"the first 20,000 agree with the Decimal rater")
    print(f"  rate()                     {fast:>12,.0f} records/s   target ≥ {TARGET_PER_S:,}/s")
    print(f"  Decimal rater (baseline)   {baseline:>12,.0f} records/s   "
          f"({fast / baseline:.1f}× slower than rate())")
    print(f"  seconds_affordable()       {affordable:>12,.0f} balances/s")
    met = fast >= TARGET_PER_S
    print(f"target: ≥ {TARGET_PER_S:,} records/s: {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
