"""Hang-up to call-back latency, through the whole system, against a bare ARI script.

What is timed, on the wire: from the edge's 486 arriving at the customer's SIPp
(the moment the inbound leg ends) to the call-back INVITE arriving at the
carrier's SIPp, for the same customer number. Everything is on the path:
the edge's release, the signed HTTPS handoff over mutual TLS, durable storage
and the job NOTIFY at the callback site, the guard, route choice from the rate
decks, the persisted leg and the ARI originate. The pre-callback delay is 0.

Baseline, same run, same Asterisks and SIPp: a bare ARI script that hangs the
inbound call up with 486 and at once originates through the callback
Asterisk, with no database, no link and no decisions.

    python -m bench.callback_latency [--calls 50] [--rate 2]

Targets on loopback: p50 <= 50 ms, p99 <= 150 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from bench._stack_load import (
    callers,
    carriers,
    hangup_times,
    invite_times,
    latencies_ms,
    percentile,
)
from demo.stack import MerchantOptions, Stack
from shared import ari
from shared.phone import normalise
from tests.faults.sites import start_customers
from tests.harness import asterisk as ast_harness
from tests.harness import sipp as sipp_harness

TARGET_P50_MS = 50.0
TARGET_P99_MS = 150.0


def report(label: str, values: list[float], missing: int) -> str:
    if not values:
        return f"{label:<28} no call-backs measured ({missing} missing)"
    return (f"{label:<28} n={len(values):3d}  p50={percentile(values, 0.5):7.1f} ms  "
            f"p99={percentile(values, 0.99):7.1f} ms  mean={statistics.fmean(values):7.1f} ms"
            f"  max={values[-1]:7.1f} ms  missing={missing}")


@contextlib.asynccontextmanager
async def declining_carriers(workdir: Path) -> AsyncIterator[tuple[sipp_harness.SippRole, ...]]:
    """Both carriers decline (603): a final answer, so nothing is retried later."""
    callback_site = ast_harness.ensure_running("callback")
    async with carriers(workdir, [callback_site], a="uas_reject_603.xml",
                        b="uas_reject_603.xml") as roles:
        yield roles


async def bare_ari_baseline(workdir: Path, numbers: list[str], rate: float
                            ) -> tuple[list[float], int]:
    edge = await asyncio.to_thread(ast_harness.ensure_running, "edge")
    callback = await asyncio.to_thread(ast_harness.ensure_running, "callback")
    await ast_harness.reset(edge)
    await ast_harness.reset(callback)
    async with declining_carriers(workdir) as (carrier_a, carrier_b), \
            edge.client() as edge_ari, callback.client() as cb_ari:
        events = edge_ari.events()
        connected = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        async def on_call(channel: ari.Channel) -> None:
            await edge_ari.hangup(channel.id, reason="busy")
            digits = normalise(channel.caller_number).digits
            with contextlib.suppress(ari.AriError):
                await cb_ari.originate(f"PJSIP/{digits}@carrier-b", timeout=10)

        async def pump() -> None:
            async for event in events:
                if isinstance(event, ari.Connected):
                    connected.set()
                elif isinstance(event, ari.StasisStart):
                    task = asyncio.create_task(on_call(event.channel))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)

        reader = asyncio.create_task(pump())
        await asyncio.wait_for(connected.wait(), 10)
        customers = start_customers(workdir, numbers, rate=rate, name="baseline-customers",
                                    limit=20, timeout_s=300)
        await asyncio.to_thread(customers.wait, 120)
        await asyncio.sleep(1.0)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await events.aclose()
        result = latencies_ms(hangup_times(customers), invite_times(carrier_a, carrier_b))
    await ast_harness.reset(callback)
    return result


async def through_the_system(workdir: Path, numbers: list[str], rate: float
                             ) -> tuple[list[float], int]:
    merchant = MerchantOptions(pre_callback_delay_s="0", max_attempts=1)
    async with Stack(workdir / "stack", merchants=(merchant,), db_prefix="cbgw_bench_latency",
                     log_level="WARNING", extra_env=BENCH_GUARD_ENV):
        async with declining_carriers(workdir) as (carrier_a, carrier_b):
            customers = start_customers(workdir, numbers, rate=rate, name="customers",
                                        limit=20, timeout_s=300)
            await asyncio.to_thread(customers.wait, 300)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if len(invite_times(carrier_a, carrier_b)) >= len(numbers):
                    break
                await asyncio.sleep(0.25)
            return latencies_ms(hangup_times(customers), invite_times(carrier_a, carrier_b))


# A latency run calls 50 new numbers in a few seconds: the guard's anomaly brake and
# CPS caps would (rightly) stop that in production, so this run raises them.
BENCH_GUARD_ENV = {
    "CALLBACK__GUARD__BRAKE__THRESHOLD": "100000",
    "CALLBACK__GUARD__CAPS__GLOBAL__CPS": "0",          # 0 = no cap
    "CALLBACK__GUARD__CAPS__TRUNK_DEFAULT__CPS": "0",
}


async def main_async(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="cbgw-bench-latency-"))
    print(f"callback latency: {args.calls} calls at {args.rate}/s, pre-callback delay 0; "
          f"work in {workdir}")
    baseline, base_missing = await bare_ari_baseline(workdir / "baseline",
                                                     callers(args.calls, 9012000000),
                                                     args.rate)
    ours, missing = await through_the_system(workdir, callers(args.calls), args.rate)
    print(report("bare ARI script (baseline)", baseline, base_missing))
    print(report("edge -> link -> callback", ours, missing))
    p50, p99 = percentile(ours, 0.5), percentile(ours, 0.99)
    base50 = percentile(baseline, 0.5)
    print(f"overhead over the baseline at p50: {p50 - base50:.1f} ms")
    ok = p50 <= TARGET_P50_MS and p99 <= TARGET_P99_MS and missing == 0
    print(f"targets p50 <= {TARGET_P50_MS:.0f} ms, p99 <= {TARGET_P99_MS:.0f} ms: "
          f"{'met' if ok else 'NOT met'}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.callback_latency",
                                     description=__doc__)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--rate", type=float, default=2.0, help="new calls per second")
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
