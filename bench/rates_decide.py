"""One call-back-or-keep decision at the edge with a merchant's learned call lengths.

``RatingService.decide(number, at, merchant=M)`` as ``edge_server.decide.RatesDecider``
calls it, M's distribution learned from calls of 7,200 distinct talk seconds (1 s to
2 h: a 7,200-point histogram, smoothed with the default prior), over three carriers'
decks (60/60, 6/6 and 1/1 terms, 600 rows each with rates drawn at random, so about
1,800 distinct terms) and NTT Free Dial. Against the old path in the same run: the same
distribution whose expected cost sums over every point for every row
(``DurationModel.expected_cost_by_points``, what every decision did before the cache).
Both must give the same decisions. Target: p99 <= 1 ms per decision.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal

from routing_rates.call_lengths import Learned, MerchantLengths, Policy
from routing_rates.carriers import Carrier
from routing_rates.duration import DurationModel
from routing_rates.index import Row
from routing_rates.service import RatingService
from routing_rates.tariff import Terms
from shared.money import FxTable, Money
from shared.phone import E164

TARGET_P99_MS = 1.0
FX = FxTable.from_mapping("JPY", {"USD": "150"})
AT = datetime(2026, 12, 4, 3, tzinfo=UTC)
SHAPES = {"bench-a": (60, 60, 60), "bench-b": (60, 6, 6), "bench-c": (1, 1, 1)}


class PointByPoint(DurationModel):
    """The old path: E[cost] summed over every point, for every row, every time."""

    __slots__ = ()

    def expected_cost(self, terms: Terms) -> Money:
        return self.expected_cost_by_points(terms)


def service(rng: random.Random) -> RatingService:
    carriers = [Carrier(cid, cid, dial_string=f"PJSIP/{{digits}}@{cid}") for cid in SHAPES]
    carriers.append(Carrier("ntt-freedial", "NTT", kind="inbound", currency="JPY",
                            timezone="Asia/Tokyo"))
    rows: dict[str, list[Row]] = {}
    for cid, (unit, x, y) in SHAPES.items():
        rows[cid] = [Row(f"81{block}{i:03d}", "JP", Terms(
            Decimal(rng.randint(800, 2400)) / 10000 * unit / 60, unit, x, y, Decimal(0),
            Decimal(0), "USD", 4)) for block in (70, 80) for i in range(300)]
    rows["ntt-freedial"] = [
        Row("81", "fixed", Terms(Decimal("8.5"), 180, 180, 180, Decimal(0), Decimal(0),
                                 "JPY", 1)),
        *(Row(f"81{b}", "mobile", Terms(Decimal(10), 20, 20, 20, Decimal(0), Decimal(0),
                                         "JPY", 1)) for b in (70, 80, 90))]
    return RatingService.from_rows(carriers, rows, FX, lengths=MerchantLengths(
        policy=Policy(min_calls=50, prior_calls=200)))


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    ordered = sorted(samples_ns)
    return (ordered[len(ordered) // 2] / 1e6, ordered[int(len(ordered) * 0.99)] / 1e6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rates_decide", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--old", type=int, default=100, help="decisions on the old path")
    args = parser.parse_args(argv)
    from bench._machine import speed_line

    print(speed_line(), flush=True)
    rng = random.Random(20261204)
    rates = service(rng)
    histogram = tuple((s, rng.randint(1, 50) + (4000 // s)) for s in range(1, 7201))
    learned = {("m", "mobile"): Learned(sum(n for _, n in histogram), AT, histogram)}
    started = time.perf_counter()
    asyncio.run(rates.apply_learned(learned))
    warm_s = time.perf_counter() - started
    model = rates.call_length("m", E164("819012345678")).model
    old_model = PointByPoint(model.name, model.points)
    numbers = [E164(f"81{rng.choice((70, 80))}{rng.randint(0, 299):03d}{rng.randint(0, 99999):05d}")
               for _ in range(args.decisions)]

    def timed(count: int, **kwargs: object) -> tuple[list[int], list[bool]]:
        took, verdicts = [], []
        for number in numbers[:count]:
            t0 = time.perf_counter_ns()
            decision = rates.decide(number, AT, **kwargs)  # type: ignore[arg-type]
            took.append(time.perf_counter_ns() - t0)
            verdicts.append(decision.callback)
        return took, verdicts

    new_ns, new_verdicts = timed(args.decisions, merchant="m")
    old_ns, old_verdicts = timed(args.old, duration=old_model)
    assert old_verdicts == new_verdicts[:args.old], "the two paths decide differently"
    p50, p99 = percentiles(new_ns)
    old50, old99 = percentiles(old_ns)
    print(f"learned distribution: {len(model.points):,} points, mean {model.mean:.0f} s; "
          f"{len(rates.snapshot.terms):,} distinct terms; expected costs computed in "
          f"{warm_s:.2f} s before the swap")
    print(f"  decide, cached ({args.decisions:,})    p50 {p50:.3f} ms  p99 {p99:.3f} ms   "
          f"target p99 <= {TARGET_P99_MS} ms {'PASS' if p99 <= TARGET_P99_MS else 'MISS'}")
    print(f"  decide, point by point ({args.old:,})  p50 {old50:.3f} ms  p99 {old99:.3f} ms  "
          f"({old50 / p50:.0f}x the median); the same {args.old} decisions")
    return 0 if p99 <= TARGET_P99_MS else 1


if __name__ == "__main__":
    sys.exit(main())
