"""The what-if simulator over a million calls against the demo carriers' decks.

``routing_rates.simulate.simulate`` as ``python -m routing_rates simulate`` runs it: the
demo carriers and their decks (``demo-setup``: the Plivo deck as published, carrier B's
6/6 deck with its off-peak period, carrier C, NTT Free Dial) imported into the embedded
PostgreSQL (database ``cbgw_bench_rates_simulate``), a merchant with configured
log-normal call lengths per number class. The log: 50,000 Japanese callers (mobile
070/080/090, fixed lines of six areas, 050 IP phones), a week of calls (2026-11-19 to
the 26th, Labor Thanksgiving Day on Monday the 23rd; busier in Tokyo's daytime), talk
seconds log-normal with the merchant's parameters (4 % unanswered, 0 s). Baseline in the
same run: the first 100,000 calls of the same log (same code, a tenth of the calls), and
reading the log's CSV (the CLI's other cost). Targets: 1M calls simulated in <= 10 s and
>= 100,000 calls/s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np

from routing_rates import importer, store
from routing_rates.call_lengths import MerchantLengths
from routing_rates.carriers import DEMO_CARRIERS, load_carriers
from routing_rates.cli import DEMO_DECKS
from routing_rates.duration import DurationModel
from routing_rates.service import RatingService
from routing_rates.simulate import CallLog, read_calls, simulate
from shared.db import Pool, create_pool, migrate, resolve_url
from shared.money import DEFAULT_FX_BASE, DEFAULT_FX_RATES, FxTable
from shared.phone import E164

TARGET_S = 10.0
TARGET_RATE = 100_000
START = datetime(2026, 11, 19, tzinfo=UTC)       # Thursday; Monday the 23rd is a holiday
#: class -> (log-normal mean s, sigma), the merchant's configured call lengths
LENGTHS = {"mobile": (150, 1.0), "fixed": (240, 1.1), "ip": (180, 1.0), "all": (180, 1.0)}
#: number prefix (E.164 digits), digits after it, class, share of the callers
CALLERS = (("8190", 8, "mobile", 0.30), ("8180", 8, "mobile", 0.20), ("8170", 8, "mobile", 0.10),
           ("813", 8, "fixed", 0.12), ("816", 8, "fixed", 0.06), ("8152", 7, "fixed", 0.04),
           ("8111", 7, "fixed", 0.03), ("8192", 7, "fixed", 0.03), ("8175", 7, "fixed", 0.02),
           ("8150", 8, "ip", 0.10))


def lengths() -> MerchantLengths:
    return MerchantLengths({"bench": {
        cls: DurationModel.lognormal(f"bench-{cls}", Decimal(mean), Decimal(str(sigma)))
        for cls, (mean, sigma) in LENGTHS.items()}})


def generated_log(n: int, callers: int, seed: int) -> CallLog:
    rng = np.random.default_rng(seed)
    shares = np.asarray([c[3] for c in CALLERS])
    kind = rng.choice(len(CALLERS), size=callers, p=shares / shares.sum())
    pool = [E164(f"{CALLERS[k][0]}{int(rng.integers(10 ** CALLERS[k][1])):0{CALLERS[k][1]}d}")
            for k in kind]
    who = rng.integers(0, callers, n)
    # days of the week uniformly; hours of Tokyo's day weighted to 09:00-21:00
    hour_weight = np.asarray([1, 1, 1, 1, 1, 1, 2, 4, 6, 9, 10, 10, 9, 10, 10, 9, 9, 8, 7,
                              6, 5, 3, 2, 1], float)
    hours = rng.choice(24, size=n, p=hour_weight / hour_weight.sum())
    at = (int(START.timestamp()) - 9 * 3600 + rng.integers(0, 7, n) * 86_400
          + hours * 3600 + rng.integers(0, 3600, n))
    talk = np.zeros(n, np.int64)
    classes = np.asarray([CALLERS[k][2] for k in kind])[who]
    for cls, (mean, sigma) in LENGTHS.items():
        mine = classes == cls
        mu = np.log(mean) - sigma * sigma / 2
        talk[mine] = np.minimum(np.ceil(rng.lognormal(mu, sigma, int(mine.sum()))), 3600)
    talk[rng.random(n) < 0.04] = 0
    return CallLog(np.sort(at).astype(np.int64), [pool[i] for i in who], talk)


def write_csv(log: CallLog, path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.write("time,caller,talk_s\n")
        for i in range(len(log.talk_s)):
            f.write(f"{log.at(i).isoformat()},+{log.callers[i].digits},{log.talk_s[i]}\n")


async def load_demo_decks(pool: Pool) -> None:
    """The demo carriers and their decks (as ``routing_rates demo-setup``) into ``pool``'s
    database."""
    async with pool.acquire() as conn:
        await migrate(conn, [store.migrations()])
        await store.upsert_tariffs(conn, load_carriers(DEMO_CARRIERS))
        for tariff, path in DEMO_DECKS:
            await importer.import_deck(conn, tariff, path)


async def service() -> RatingService:
    url = await asyncio.to_thread(resolve_url, None, "cbgw_bench_rates_simulate")
    pool = await create_pool(url, min_size=1, max_size=2)
    await load_demo_decks(pool)
    rates = await RatingService.start(pool, fx=FxTable.from_mapping(DEFAULT_FX_BASE,
                                                                    DEFAULT_FX_RATES),
                                      lengths=lengths(), listen=False)
    rates.owned_pool = pool  # type: ignore[attr-defined]
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rates_simulate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--callers", type=int, default=50_000)
    parser.add_argument("--csv", default="/tmp/cbgw-bench-rates-simulate.csv",
                        help="where the log is written to time reading it")
    args = parser.parse_args(argv)
    from bench._machine import speed_line

    print(speed_line(), flush=True)
    log = generated_log(args.calls, args.callers, 20261205)
    timings = asyncio.run(run(log))
    write_csv(log, Path(args.csv))
    started = time.perf_counter()
    read_calls(Path(args.csv))
    read_s = time.perf_counter() - started
    Path(args.csv).unlink()
    took = timings[-1]
    rate = args.calls / took
    ok = took <= TARGET_S and rate >= TARGET_RATE
    print(f"  read the log's CSV ({args.calls:,} lines) {read_s:.2f} s; read + simulate "
          f"{read_s + took:.2f} s")
    print(f"  target: {args.calls:,} calls in <= {TARGET_S:.0f} s and >= {TARGET_RATE:,} "
          f"calls/s: {took:.2f} s, {rate:,.0f}/s {'PASS' if ok else 'MISS'}; "
          f"{took / timings[0]:.1f}x the baseline's time for 10x the calls")
    return 0 if ok else 1


async def run(log: CallLog) -> list[float]:
    """Seconds to simulate the first tenth of the log (the baseline), then all of it."""
    rates = await service()
    try:
        base_n = len(log.talk_s) // 10
        base = CallLog(log.at_s[:base_n], log.callers[:base_n], log.talk_s[:base_n])
        timings = []
        for name, part in ((f"{base_n:,} calls (baseline)", base),
                           (f"{len(log.talk_s):,} calls", log)):
            started = time.perf_counter()
            result = simulate(rates, part, merchant="bench")
            took = time.perf_counter() - started
            timings.append(took)
            print(f"  simulate {name:<24} {took:6.2f} s  {len(part.talk_s) / took:>10,.0f} "
                  f"calls/s   keep {result.keep:,.0f} project {result.project:,.0f} "
                  f"{result.currency}; regret {result.regret / result.project:.3%}, "
                  f"hindsight {result.hindsight / result.project:.2%}", flush=True)
        return timings
    finally:
        await rates.close()
        await rates.owned_pool.close()  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
