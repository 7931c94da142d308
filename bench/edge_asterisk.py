"""The edge Asterisk's CPU per inbound call, as the edge runs it, against candidate cuts.

The whole stack (``tests.faults.sites.Sites``: one edge server and one callback server,
PostgreSQL, both Asterisks; the carriers decline the call-backs with 603, as ``bench
load_sweep --mode control`` runs them) under the stack's lock. A SIPp customer calls the
merchant's toll-free number at ``--rate`` a second from ``--calls`` distinct numbers a
phase; every call is what an inbound call-back request is on the wire: INVITE →
``[from-carrier]`` → ``Stasis(edge,inbound,…)`` → the edge server plays the announcement
as early media (183, the channel never answered) → 486 → the request goes over the link.

The phases, one after the other and ``--rounds`` times over (interleaved, so a change in
the machine's speed hits all alike), each a variant of the running edge Asterisk set up at
run time and undone after:

* ``current``: as ``deploy/asterisk/edge`` installs it;
* ``+ verbose and dtmf``: full.log with ``verbose`` and ``dtmf`` again, as before the cut
  (logger.conf rewritten in the root and ``logger reload``);
* ``+ unused modules``: the modules nothing on the edge uses, which modules.conf loaded
  before the cut (``module load``; unloaded again after): :data:`UNUSED_MODULES`;
* ``as before``: the two together: the edge Asterisk as it was configured before;
* ``0.1 s announcement``: the announcement's files swapped for 0.1 s of silence (restored
  after): the baseline that tells the announcement's cost from the rest of the call's.

Per phase it prints the edge Asterisk's CPU (``/proc/<pid>/stat``, all threads) less what
it uses idle (measured for ``--idle-s`` first) per call, that CPU by thread name
(``/proc/<pid>/task/*/stat`` read every 0.2 s: a call's own threads live about 3.5 s;
what threads that ended between two samples used is the ``(ended threads)`` rest), the
bytes full.log grew by per call and what the customers saw on the wire: every call must
have had a 183 and a 486 and never a 200 OK, or the phase fails. ``--perf SECONDS``
also records ``perf`` on the Asterisk during the first ``current`` phase and prints the
top shared objects and symbols.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.asterisk_media import logger_line_swapped

if TYPE_CHECKING:
    from tests.faults.sites import Sites
    from tests.harness.asterisk import AsteriskSite
    from tests.harness.sipp import SippRole

#: full.log's line in deploy/asterisk/edge/logger.conf, and with verbose and dtmf as before
QUIET_FULL_LOG = "full.log => notice,warning,error"
FULL_LOG = "full.log => notice,warning,error,verbose,dtmf"

#: loaded by deploy/asterisk/edge/modules.conf before the cut, used by nothing on the edge
#: (neither the dialplan nor the edge server's ARI requests), in an order ``module load``
#: accepts (``res_stasis_recording`` and ``res_stasis_snoop`` are unused too, but
#: ``res_ari_channels`` requires them)
UNUSED_MODULES = ("codec_gsm.so", "format_gsm.so", "format_wav_gsm.so", "app_echo.so",
                  "res_stasis_device_state.so", "res_ari_device_states.so",
                  "res_ari_recordings.so", "res_ari_sounds.so")

#: seconds between two readings of the Asterisk's threads
THREAD_EVERY_S = 0.2


#: the edge's announcement (``edge_server.flow_messages.PROMPT_RECEIVED``), as installed
ANNOUNCEMENT = "received"
#: what the baseline plays instead: this many seconds of silence
SHORT_S = 0.1


@dataclass(frozen=True)
class Variant:
    name: str
    verbose_log: bool = False
    load: bool = False
    short: bool = False     # the announcement swapped for SHORT_S of silence: a baseline


VARIANTS = (Variant("current"), Variant("+ verbose and dtmf", verbose_log=True),
            Variant("+ unused modules", load=True),
            Variant("as before", verbose_log=True, load=True),
            Variant("0.1 s announcement", short=True))


@dataclass
class Result:
    variant: Variant
    calls: int
    checked: int             # 183 and 486 received, no 200
    asterisk_s: float
    user_s: float
    kernel_s: float
    wall_s: float
    threads_s: dict[str, float]
    full_log_bytes: int
    customers_s: float
    problems: list[str] = field(default_factory=list)


# ---- the Asterisk's threads ---------------------------------------------------------------


def _thread_times(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (thread name, CPU seconds) of every thread of ``pid`` now, from
    ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds: ``stat``'s clock ticks of 10 ms
    round a short-lived thread's few milliseconds down to nothing)."""
    out: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            ran_ns = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            out[int(tid)] = (name, ran_ns / 1e9)
    return out


def user_kernel_seconds(pid: int) -> tuple[float, float]:
    """User and kernel CPU seconds of process ``pid`` (all its threads, the ended ones
    too)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0.0, 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def thread_group(name: str) -> str:
    """A thread name without its number (``pjsip/12`` and ``pjsip/3`` are one group)."""
    return name.rstrip("0123456789").rstrip("/-_ ") or name


#: the group of the threads born during a phase (Asterisk gives its threads no names of
#: their own: the channel threads that run a call's dialplan, Stasis and playback are these)
BORN = "threads born in the phase"


class ThreadWatch:
    """CPU seconds of a process's threads between ``start()`` and ``stop()``: the threads
    alive at ``start()`` by name, those born since as :data:`BORN`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.first: dict[int, tuple[str, float]] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.first = _thread_times(self.pid)
        self.last = dict(self.first)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(THREAD_EVERY_S):
            self.last.update(_thread_times(self.pid))

    def stop(self) -> dict[str, float]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.last.update(_thread_times(self.pid))
        out: dict[str, float] = defaultdict(float)
        for tid, (name, seconds) in self.last.items():
            if tid in self.first:
                out[thread_group(name)] += seconds - self.first[tid][1]
            else:
                out[BORN] += seconds
        return dict(out)


# ---- the variants -------------------------------------------------------------------------


def _verbose_full_log(site: AsteriskSite, logger_conf: Path
                      ) -> contextlib.AbstractContextManager[None]:
    """full.log with verbose and dtmf again inside (the config before the cut)."""
    return logger_line_swapped(site, logger_conf, QUIET_FULL_LOG, FULL_LOG)


@contextlib.contextmanager
def _loaded(site: AsteriskSite) -> Iterator[None]:
    loaded: list[str] = []
    try:
        for module in UNUSED_MODULES:
            out = site.cli(f"module load {module}")
            if "Loaded" not in out:
                raise RuntimeError(f"module load {module}: {out.strip()}")
            loaded.append(module)
        yield
    finally:
        for module in reversed(loaded):
            site.cli(f"module unload {module}")


@contextlib.contextmanager
def short_announcement(site: AsteriskSite) -> Iterator[None]:
    """The announcement's files (every language, every format) swapped for ``SHORT_S`` of
    silence; the installed files again after."""
    from tests.harness.asterisk import sounds_dir

    samples = round(SHORT_S * 8000)
    silence = {"ulaw": b"\xff" * samples, "alaw": b"\xd5" * samples}
    saved: dict[Path, bytes] = {}
    sounds = sounds_dir(site.name, "", site.root)[0]
    try:
        for path in sorted(sounds.glob(f"*/cbgw/{ANNOUNCEMENT}.*")):
            saved[path] = path.read_bytes()
            kind = path.suffix.lstrip(".")
            if kind == "wav":
                with wave.open(str(path), "wb") as w:
                    w.setnchannels(1)
                    w.setsampwidth(2)
                    w.setframerate(8000)
                    w.writeframes(b"\0\0" * samples)
            elif kind in silence:
                path.write_bytes(silence[kind])
        if not saved:
            raise RuntimeError(f"no {ANNOUNCEMENT}.* under {sounds}/*/cbgw")
        yield
    finally:
        for path, data in saved.items():
            path.write_bytes(data)


@contextlib.contextmanager
def _variant(site: AsteriskSite, variant: Variant, logger_conf: Path) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        if variant.verbose_log:
            stack.enter_context(_verbose_full_log(site, logger_conf))
        if variant.load:
            stack.enter_context(_loaded(site))
        if variant.short:
            stack.enter_context(short_announcement(site))
        yield


# ---- one phase ----------------------------------------------------------------------------


def check_wire(customers: SippRole) -> tuple[int, list[str]]:
    """How many of the customers' calls had a 183 and a 486 and no 200; what was wrong."""
    seen: dict[str, set[int]] = defaultdict(set)
    for m in customers.messages():
        if m.call_id is None:
            continue
        if m.direction == "sent" and m.method == "INVITE":
            seen[m.call_id]
        elif m.direction == "received" and m.status is not None and m.cseq_method == "INVITE":
            seen[m.call_id].add(m.status)
    ok = sum(1 for s in seen.values() if {183, 486} <= s and 200 not in s)
    wrong = [f"{cid}: {sorted(s)}" for cid, s in seen.items()
             if not ({183, 486} <= s and 200 not in s)]
    return ok, wrong


async def _phase(sites: Sites, variant: Variant, index: int, calls: int, rate: float,
                 pid: int, log: Path, logger_conf: Path, workdir: Path, perf_s: float
                 ) -> Result:
    from bench._stack_load import callers, children, cpu_seconds
    from tests.faults.sites import start_customers

    numbers = callers(calls, first=9060000000 + index * 100_000)
    work = workdir / f"phase{index}"
    work.mkdir()
    site = sites.edge_site
    with _variant(site, variant, logger_conf):
        await asyncio.sleep(1.0)
        watch = ThreadWatch(pid)
        log_before = _size(log)
        a0 = cpu_seconds(pid) or 0.0
        u0, k0 = user_kernel_seconds(pid)
        watch.start()
        t0 = time.monotonic()
        customers = start_customers(work, numbers, rate=rate, name="customers",
                                    limit=int(rate * 8) + 20,
                                    timeout_s=int(calls / rate + 120),
                                    remote=sites.edge_sip)
        perf = _start_perf(pid, work, perf_s) if perf_s else None
        sipp = children(customers.process.pid) or [customers.process.pid]
        c_used = 0.0
        while customers.running:
            await asyncio.sleep(0.5)
            c_used = max(c_used, sum(cpu_seconds(p) or 0.0 for p in sipp))
        await asyncio.sleep(1.0)          # the last channels' destruction
        wall = time.monotonic() - t0
        a1 = cpu_seconds(pid) or 0.0
        u1, k1 = user_kernel_seconds(pid)
        threads = await asyncio.to_thread(watch.stop)
        grown = _size(log) - log_before
        if perf is not None:
            _report_perf(perf, work)
    checked, wrong = check_wire(customers)
    problems = [f"{len(wrong)} calls without 183 + 486 or with a 200: {wrong[:3]}"] \
        if wrong else []
    if checked < calls:
        problems.append(f"{calls - checked} of {calls} calls not seen through")
    return Result(variant, calls, checked, a1 - a0, u1 - u0, k1 - k0, wall, threads, grown,
                  c_used, problems)


def _size(path: Path) -> int:
    return path.stat().st_size


def _start_perf(pid: int, work: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    if shutil.which("perf") is None:
        print("  perf: not installed", flush=True)
        return None
    return subprocess.Popen(["perf", "record", "-F", "1999", "-g", "-p", str(pid),
                             "-o", str(work / "perf.data"), "--", "sleep", str(seconds)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _report_perf(perf: subprocess.Popen[bytes], work: Path) -> None:
    _, err = perf.communicate(timeout=120)
    if perf.returncode != 0 or not (work / "perf.data").is_file():
        print(f"  perf record failed: {err.decode(errors='replace').strip()[-300:]}")
        return
    for title, options in (("by shared object", ["--no-children", "--sort", "dso"]),
                           ("by symbol, own samples", ["--no-children", "--sort", "sym"]),
                           ("by symbol, with what it calls", ["--children", "--sort", "sym"])):
        out = subprocess.run(["perf", "report", "-i", str(work / "perf.data"), *options,
                              "--stdio", "-g", "none", "--percent-limit", "2"],
                             capture_output=True, text=True, check=False).stdout
        lines = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("#")]
        print(f"  perf, {title} (≥ 2 % of the samples):")
        for ln in lines[:30]:
            print(f"    {' '.join(ln.split())}")


# ---- the run ------------------------------------------------------------------------------


async def _run(args: argparse.Namespace) -> int:
    from bench._stack_load import carriers, cpu_seconds
    from bench.load_sweep import SWEEP_ENV
    from demo.stack import MerchantOptions
    from tests.faults.sites import Sites
    from tests.harness.asterisk import instance_tool, running_pid

    variants = [v for v in VARIANTS if v.name in args.variants] if args.variants else \
        list(VARIANTS)
    workdir = Path(tempfile.mkdtemp(prefix="cbgw-bench-edge-asterisk-"))
    merchant = MerchantOptions(pre_callback_delay_s="0", max_attempts=1)
    sites = Sites(workdir / "stack", merchants=(merchant,), db_prefix="cbgw_bench_edgeast",
                  log_level="INFO", extra_env=SWEEP_ENV, callback_servers=1)
    results: list[Result] = []
    async with sites:
        site = sites.edge_site
        pid = running_pid("edge")
        if pid is None:
            print("the edge Asterisk is not running")
            return 1
        installed = instance_tool().load_site("edge", site.root)
        log = installed.host(installed.directories()["astlogdir"]) / "full.log"
        logger_conf = installed.host(installed.directories()["astetcdir"]) / "logger.conf"
        role_s = int(args.rounds * len(variants) * (args.calls / args.rate + 30) + 300)
        async with carriers(workdir, [sites.callback_site], a="uas_reject_603.xml",
                            b="uas_reject_603.xml", timeout_s=role_s):
            a0, t0 = cpu_seconds(pid) or 0.0, time.monotonic()
            await asyncio.sleep(args.idle_s)
            idle_per_s = ((cpu_seconds(pid) or 0.0) - a0) / (time.monotonic() - t0)
            names = sorted({thread_group(n) for n, _ in _thread_times(pid).values()})
            print(f"edge Asterisk pid {pid} ({site.version}), {len(_thread_times(pid))} threads "
                  f"({', '.join(names)}); idle {idle_per_s * 1000:.1f} ms CPU a second over "
                  f"{args.idle_s:.0f} s; {args.rounds} rounds of {args.calls} calls at "
                  f"{args.rate:g}/s a phase; work in {workdir}", flush=True)
            index = 0
            if args.warmup:     # the first phase of a run costs more, whichever it is
                warm = await _phase(sites, Variant("warm-up"), index, args.warmup, args.rate,
                                    pid, log, logger_conf, workdir, 0.0)
                index += 1
                own = warm.asterisk_s - idle_per_s * warm.wall_s
                print(f"  {'warm-up (not counted)':20} {own / warm.calls * 1000:6.2f} ms a call",
                      flush=True)
            for round_ in range(args.rounds):
                for variant in variants:
                    perf_s = args.perf if round_ == 0 and variant is variants[0] else 0.0
                    result = await _phase(sites, variant, index, args.calls, args.rate, pid,
                                          log, logger_conf, workdir, perf_s)
                    index += 1
                    results.append(result)
                    own = result.asterisk_s - idle_per_s * result.wall_s
                    print(f"  {variant.name:20} {own / result.calls * 1000:6.2f} ms a call "
                          f"({result.checked}/{result.calls} 183 + 486, no 200)"
                          + "".join(f"; {p}" for p in result.problems), flush=True)
    _report(results, variants, idle_per_s)
    return 0 if all(not r.problems for r in results) else 1


def _report(results: list[Result], variants: list[Variant], idle_per_s: float) -> None:
    print(f"\n{'variant':20} {'calls':>6} {'CPU s':>7} {'ms a call':>10} (each round)   "
          f"{'user / kernel ms':>17} {'full.log B a call':>18} {'SIPp ms a call':>15}")
    for variant in variants:
        mine = [r for r in results if r.variant is variant]
        calls = sum(r.calls for r in mine)
        own = sum(r.asterisk_s - idle_per_s * r.wall_s for r in mine)
        rounds = " / ".join(f"{(r.asterisk_s - idle_per_s * r.wall_s) / r.calls * 1000:.2f}"
                            for r in mine)
        user = sum(r.user_s for r in mine) / calls * 1000
        kernel = sum(r.kernel_s for r in mine) / calls * 1000
        print(f"{variant.name:20} {calls:>6} {sum(r.asterisk_s for r in mine):>7.2f} "
              f"{own / calls * 1000:>10.2f} ({rounds})   {user:>7.2f} / {kernel:<7.2f} "
              f"{sum(r.full_log_bytes for r in mine) / calls:>18.0f} "
              f"{sum(r.customers_s for r in mine) / calls * 1000:>15.2f}")
    print("\nby thread, ms a call (all rounds; idle not taken off; user / kernel above are "
          "the whole process's, in clock ticks):")
    groups: dict[str, dict[str, float]] = {}
    for variant in variants:
        mine = [r for r in results if r.variant is variant]
        calls = sum(r.calls for r in mine)
        per: dict[str, float] = defaultdict(float)
        for r in mine:
            for name, seconds in r.threads_s.items():
                per[name] += seconds
            per["(the rest: after a thread's last reading)"] += \
                r.asterisk_s - sum(r.threads_s.values())
        groups[variant.name] = {k: v / calls * 1000 for k, v in per.items()}
    names = sorted({n for g in groups.values() for n in g},
                   key=lambda n: -groups[variants[0].name].get(n, 0.0))
    print(f"{'thread':42}" + "".join(f"{v.name:>20}" for v in variants))
    for name in names:
        print(f"{name[:42]:42}" + "".join(f"{groups[v.name].get(name, 0.0):>20.2f}"
                                          for v in variants))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench edge_asterisk", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300, help="calls a phase")
    parser.add_argument("--rate", type=float, default=20.0, help="calls started a second")
    parser.add_argument("--rounds", type=int, default=2,
                        help="times every variant runs, the variants interleaved")
    parser.add_argument("--warmup", type=int, default=100,
                        help="calls of an untimed phase first (0: none): a run's first phase "
                        "cost 1-3 ms a call more than the same variant later")
    parser.add_argument("--idle-s", type=float, default=10.0,
                        help="seconds the idle Asterisk's CPU is measured first")
    parser.add_argument("--variants", type=lambda s: [v.strip() for v in s.split(",")],
                        default=None, help="comma-separated names of the variants to run "
                        f"(default all: {', '.join(v.name for v in VARIANTS)})")
    parser.add_argument("--perf", type=float, default=0.0,
                        help="seconds of `perf record` on the Asterisk in the first phase")
    args = parser.parse_args(argv)
    from bench._machine import speed_line

    print(speed_line(), flush=True)
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
