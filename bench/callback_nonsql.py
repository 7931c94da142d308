"""The callback server's own Python per call-back outside SQL: the route choice and the log
lines, each against the path it replaced, in the same run.

* ``routing``: ``Routing.routes`` for mobile numbers (070/080/090, distinct), as the
  worker asks it, over a ``RatingService`` started on PostgreSQL (the embedded server,
  database ``cbgw_bench_callback_nonsql``, made afresh) with the demo decks
  ``routing_rates demo-setup`` imports (the Plivo deck for carrier A, 72,554 rows;
  carriers B and C; NTT Free Dial). Baseline: the same calls with the snapshot's
  rankings dropped before each, so every call prices its rows again (the path before
  the rankings were kept).
* ``logs``: the five INFO lines a declined call-back writes on the callback site (their
  loggers and messages as in a ``load_sweep --mode control`` run's log, the call's
  context bound) through the handler ``serve`` installs, to ``/dev/null``, records as
  ``shared.logs.configure`` leaves them. Baseline: the formatter before (``json.dumps``
  of the fields, the time through ``datetime``) and records with the caller's file and
  line, thread and process.

Each part runs ``--compare`` times, the two paths alternating; the figures are the median
pass's µs per call (or line) and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

from bench.rates_simulate import load_demo_decks
from callback_server.routing import Routing
from routing_rates.service import RatingService
from shared import logs
from shared.db import Pool, create_pool, fresh_database, resolve_url
from shared.money import FxTable
from shared.phone import E164

FX = FxTable.from_mapping("JPY", {"USD": "150"})
_RECORDS = (logging._srcfile, logging.logThreads,  # noqa: SLF001 - what configure changes
            logging.logProcesses, logging.logMultiprocessing)
#: a declined call-back's INFO lines on the callback site (logger, message)
CALLBACK_LINES = (
    ("callback.store", "stored 1 call-back request messages in one commit: {'queued': 1}"),
    ("callback.routing", "routes for +819050000000: carrier-b 50.8585 JPY, carrier-a "
                         "66.6181 JPY, carrier-c 88.0616 JPY"),
    ("callback.worker", "job claimed, round 1/1: flow order (configured file), routes "
                        "['carrier-b', 'carrier-a', 'carrier-c']"),
    ("callback.stasis", "originated cb-37db13d26dbe0140859728fd57956762-01 via "
                        "PJSIP/819050000000@carrier-b"),
    ("callback.stasis", "CDR cb-37db13d26dbe0140859728fd57956762-01 carrier-b declined "
                        "0.000s cause 21; round 1: failed (declined)"),
)


class DumpsFormatter(logs.JsonFormatter):
    """The JSON formatter before: a dict of the fields through ``json.dumps``, the time
    through ``datetime`` (the baseline)."""

    def format(self, record: logging.LogRecord) -> str:
        at = datetime.fromtimestamp(record.created, UTC)
        line = {"ts": f"{at:%Y-%m-%dT%H:%M:%S}.{int(record.msecs):03d}Z",
                "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        for name in logs.FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = str(value)
        return json.dumps(line)


def _median_pass(passes: list[float]) -> float:
    return statistics.median(passes)


def _report(what: str, unit: str, new: list[float], old: list[float]) -> None:
    n, o = _median_pass(new), _median_pass(old)
    print(f"  {what}: {n:8.1f} µs per {unit}   baseline {o:8.1f} µs   "
          f"{o / n:4.1f}x   (passes: {', '.join(f'{x:.1f}' for x in new)} / "
          f"{', '.join(f'{x:.1f}' for x in old)})")


async def _rating_service() -> tuple[RatingService, Pool]:
    url = await fresh_database(await asyncio.to_thread(resolve_url, None, "postgres"),
                               "cbgw_bench_callback_nonsql")
    pool = await create_pool(url, min_size=1, max_size=2)
    await load_demo_decks(pool)
    return await RatingService.start(pool, fx=FX, listen=False), pool


async def routing(calls: int, compare: int) -> None:
    rates, pool = await _rating_service()
    try:
        rng = random.Random(20261205)
        numbers = [E164(f"81{rng.choice((70, 80, 90))}{rng.randint(10_000_000, 99_999_999)}")
                   for _ in range(calls)]
        route = Routing(rates, ())
        logging.getLogger("callback.routing").setLevel(logging.WARNING)  # lines: see logs
        new: list[float] = []
        old: list[float] = []
        for _ in range(compare):
            for keep, out in ((True, new), (False, old)):
                rates.snapshot.ranked.clear()
                started = time.perf_counter()
                for number in numbers:
                    if not keep:
                        rates.snapshot.ranked.clear()
                    await route.routes(number, datetime.now(UTC))
                out.append((time.perf_counter() - started) / calls * 1e6)
        rates.snapshot.ranked.clear()
        kept = [await route.routes(n, datetime.now(UTC)) for n in numbers[:500]]
        afresh = []
        for n in numbers[:500]:
            rates.snapshot.ranked.clear()
            afresh.append(await route.routes(n, datetime.now(UTC)))
        assert kept == afresh, "the kept rankings answer differently"
        print(f"routing: Routing.routes for {calls:,} distinct mobile numbers, demo decks "
              f"({sum(1 for _ in rates.snapshot.terms):,} distinct terms); the first 500 "
              "answers equal the baseline's")
        _report("Routing.routes", "call", new, old)
    finally:
        await rates.close()
        await pool.close()


def _lines_us(call_backs: int, formatter: logging.Formatter, lean: bool) -> float:
    with open(os.devnull, "w") as sink:
        out = logs.handler("json", sink)
        out.setFormatter(formatter)
        loggers = [(logging.getLogger(name), message) for name, message in CALLBACK_LINES]
        for logger, _ in loggers:
            logger.handlers, logger.propagate = [out], False
            logger.setLevel(logging.INFO)
        if lean:
            logs.lean_records()
        else:
            (logging._srcfile, logging.logThreads,  # noqa: SLF001
             logging.logProcesses, logging.logMultiprocessing) = _RECORDS
        started = time.perf_counter()
        for i in range(call_backs):
            with logs.bind(call_id=f"edge-{i}", request_id=f"cb-{i}", merchant="acme"):
                for logger, message in loggers:
                    logger.info("%s", message)
        took = time.perf_counter() - started
    return took / (call_backs * len(loggers)) * 1e6


def log_lines(call_backs: int, compare: int) -> None:
    new: list[float] = []
    old: list[float] = []
    for _ in range(compare):
        new.append(_lines_us(call_backs, logs.JsonFormatter(), lean=True))
        old.append(_lines_us(call_backs, DumpsFormatter(), lean=False))
    print(f"logs: {len(CALLBACK_LINES)} INFO lines a declined call-back, "
          f"{call_backs:,} call-backs, JSON to /dev/null")
    _report("a log line", "line", new, old)
    per_call = _median_pass(new) * len(CALLBACK_LINES)
    print(f"  per call-back: {per_call:.0f} µs (baseline "
          f"{_median_pass(old) * len(CALLBACK_LINES):.0f} µs)")


PARTS: dict[str, Callable[[argparse.Namespace], None]] = {
    "routing": lambda a: asyncio.run(routing(a.calls, a.compare)),
    "logs": lambda a: log_lines(a.calls, a.compare),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.callback_nonsql", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all")
    parser.add_argument("--calls", type=int, default=5000, help="numbers (or call-backs)")
    parser.add_argument("--compare", type=int, default=3, help="passes of each path")
    args = parser.parse_args(argv)
    from bench._machine import speed_line

    print(speed_line(), flush=True)
    for name, part in PARTS.items():
        if args.part in (name, "all"):
            part(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
