"""The fault run: hundreds of call-backs through both sites while things break.

Real components throughout: a private embedded PostgreSQL (its own postmaster, so
restarting it disturbs no other run), the edge Asterisk and both callback Asterisks,
SIPp as the customers' phones and as both carriers, and the servers as processes:
one edge, two callback servers on one callback database.

Topology of the link (both directions), one network namespace per line, each
holding delaying proxies (+60 ms each way, about Tokyo-US)::

    edge (0.0.0.0:8443) ─┬─ veth 10.202.1.0/30 ── [cbgwr-inet:   proxies] ─┬─ callback  :9443
                         └─ veth 10.202.2.0/30 ── [cbgwr-leased: proxies] ─┴─ callback2 :9444
    edge -> callback:  internet -> callback (9443), leased -> callback2 (9444)
    callback* -> edge: internet, then leased, both to the edge's 8443

Callback server ``callback`` reaches its Asterisk through a local proxy (ARI REST and the
events websocket), so the test can cut its connections with calls in progress.

Faults, in this order, while ``FAULT_RUN_CALLS`` (300) distinct customers call at
``FAULT_RUN_RATE`` (1/s):

1. ``kill -9`` of callback server ``callback2`` while it has a leg being originated
   (or at least calls in progress), restarted 3 s later;
2. PostgreSQL stop (fast) and start again 5 s later;
3. the ARI connections of ``callback`` cut with calls in progress;
4. a restart of the callback Asterisk (``callback``) with calls in progress;
5. the internet link down for ``FAULT_PARTITION_S`` (60 s): traffic moves to the
   leased line;
6. both links down for ``FAULT_PARTITION_S``: requests queue in the edge's outbox,
   CDRs and statuses in the callback site's, and drain after.

Invariants afterwards, from both databases and the carriers' SIP traces: every
acknowledged request got exactly one answered call-back or a final reason-coded
failure; none dialled in more rounds than its attempt limit, none answered twice,
no INVITE without a persisted leg; every call answered on the wire has one CDR;
every CDR reached the edge exactly once; 99 % of the requests finished within 5
minutes after the last fault healed. The figures are printed (and recorded in
bench/README.md, "Faults").

Budget: about 6-7 minutes with 60 s partitions (``FAULT_PARTITION_S`` shortens them).
Needs root (network namespaces); without it the test fails naming tests/faults/netlab.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from demo.stack import MerchantOptions
from tests.faults.netlab import NetLab
from tests.faults.sites import (
    ARI_URLS,
    LOAD_GUARD_ENV,
    PrivatePostgres,
    Report,
    Sites,
    collect,
    customer_numbers,
    require_free,
    start_carrier,
    start_customers,
    wait_finished,
)
from tests.harness import asterisk as ast_harness
from tests.harness.sipp import SippRole

CALLS = int(os.environ.get("FAULT_RUN_CALLS", "300"))
RATE = float(os.environ.get("FAULT_RUN_RATE", "1"))
PARTITION_S = float(os.environ.get("FAULT_PARTITION_S", "60"))
ONE_WAY_MS = 60
DRAIN_LIMIT_S = 300.0            # 99 % finished within 5 minutes after the last heal
KEYS = "1" + "2" + "123#"        # confirm, inquiry, order number: submit, thanks, hang-up
ARI_PROXY_PORT = 18288
LINK_PORTS = {"callback": 19443, "edge": 18443}

# Retries must be able to happen inside the run: short backoffs, and a guard that lets
# a number be called again after a round a fault broke (production: 300 s, 2/hour).
FAULT_ENV = {
    **LOAD_GUARD_ENV,
    "CALLBACK__GUARD__VELOCITY__UNKNOWN__MIN_GAP_S": "1",
    "CALLBACK__GUARD__VELOCITY__UNKNOWN__PER_HOUR": "10",
    "CALLBACK__GUARD__VELOCITY__UNKNOWN__PER_DAY": "10",
    "CALLBACK__GUARD__VELOCITY__LOCK_AFTER_UNCONFIRMED": "10",
}

# Not part of `make test` yet: it fails on three known server bugs (double ring after a
# worker is killed or the ARI websocket drops; CDR lost when the database restarts
# mid-call), see the issue notes. Run it with `make faults`.
pytestmark = [pytest.mark.e2e, pytest.mark.faultrun, pytest.mark.timeout(1200)]


@dataclass
class Fault:
    name: str
    injected_at: float
    healed_at: float = 0.0
    detail: str = ""


@dataclass
class Run:
    sites: Sites
    lab: NetLab
    pg: PrivatePostgres
    ari_proxy: subprocess.Popen[Any]
    faults: list[Fault] = field(default_factory=list)

    async def fault(self, name: str, inject: Callable[[], Coroutine[Any, Any, str]],
                    heal: Callable[[], Coroutine[Any, Any, None]] | None = None,
                    hold_s: float = 0.0) -> Fault:
        fault = Fault(name, time.time())
        self.faults.append(fault)
        fault.detail = await inject()
        print(f"  {time.strftime('%H:%M:%S')} fault: {name} {fault.detail}", flush=True)
        if hold_s:
            await asyncio.sleep(hold_s)
        if heal is not None:
            await heal()
        fault.healed_at = time.time()
        print(f"  {time.strftime('%H:%M:%S')} healed: {name} "
              f"({fault.healed_at - fault.injected_at:.1f} s)", flush=True)
        return fault


def link_lab() -> NetLab:
    lab = NetLab("cbgwr")
    for name, subnet in (("inet", 1), ("leased", 2)):
        ns = lab.namespace(name)
        lab.veth(name, None, f"10.202.{subnet}.1/30", ns, f"10.202.{subnet}.2/30")
        targets = {"callback": 9443 if name == "inet" else 9444, "edge": 8443}
        for peer, port in LINK_PORTS.items():
            proc = lab.popen(ns, [sys.executable, "-m", "tests.faults.proxy",
                                  "--listen", f"10.202.{subnet}.2:{port}",
                                  "--target", f"10.202.{subnet}.1:{targets[peer]}",
                                  "--delay-ms", str(ONE_WAY_MS), "--name", f"{name}-{peer}",
                                  "--log-level", "WARNING"],
                             cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE,
                             text=True)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("listening"), f"{name}-{peer} proxy did not start: {line}"
    return lab


def ari_proxy(lab: NetLab) -> subprocess.Popen[Any]:
    proc = lab.popen(None, [sys.executable, "-m", "tests.faults.proxy",
                            "--listen", f"127.0.0.1:{ARI_PROXY_PORT}",
                            "--target", ARI_URLS["callback"].removeprefix("http://"),
                            "--delay-ms", "0", "--name", "ari", "--log-level", "INFO"],
                     cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("listening"), "ARI proxy did not start"
    return proc


async def legs_in_flight(sites: Sites, server: str) -> list[asyncpg.Record]:
    owner_suffix = f"-{sites.pid(server)}"
    rows = await sites.fetch(
        "callback", "SELECT channel_id, status FROM callback_attempts "
        "WHERE status IN ('dialing', 'originated', 'answered') AND worker LIKE $1",
        f"%{owner_suffix}")
    return rows


async def kill_mid_origination(run: Run) -> str:
    """kill -9 callback2 the moment it has a leg being originated (else calls in progress)."""
    deadline = time.monotonic() + 20
    rows: list[asyncpg.Record] = []
    while time.monotonic() < deadline:
        rows = await legs_in_flight(run.sites, "callback2")
        if any(r["status"] in ("dialing", "originated") for r in rows):
            break
        await asyncio.sleep(0.01)
    pid = run.sites.kill9("callback2")
    states = sorted(str(r["status"]) for r in rows)
    return f"pid {pid} with legs {states}"


async def wait_calls_in_progress(sites: Sites, server: str, within_s: float = 20) -> int:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        rows = await legs_in_flight(sites, server)
        if any(r["status"] == "answered" for r in rows):
            return len(rows)
        await asyncio.sleep(0.05)
    return 0


async def inject_faults(run: Run) -> None:
    sites, lab, pg = run.sites, run.lab, run.pg
    await asyncio.sleep(15)

    async def restart_cb2() -> None:
        await asyncio.sleep(3)
        await sites.restart("callback2")
    await run.fault("kill -9 callback2 mid-origination",
                    lambda: kill_mid_origination(run), restart_cb2)
    await asyncio.sleep(15)

    async def pg_stop() -> str:
        await asyncio.to_thread(pg.stop, "fast")
        return "pg_ctl stop -m fast"

    async def pg_start() -> None:
        await asyncio.to_thread(pg.start_again)
    await run.fault("PostgreSQL restart", pg_stop, pg_start, hold_s=5)
    await asyncio.sleep(15)

    async def cut_ari() -> str:
        calls = await wait_calls_in_progress(sites, "callback")
        run.ari_proxy.send_signal(1)   # SIGHUP: abort every ARI connection of 'callback'
        return f"with {calls} legs in progress"
    await run.fault("ARI websocket drop (callback)", cut_ari)
    await asyncio.sleep(15)

    async def restart_asterisk() -> str:
        calls = await wait_calls_in_progress(sites, "callback")
        await asyncio.to_thread(ast_harness.stop, "callback")
        await asyncio.to_thread(ast_harness.ensure_running, "callback")
        return f"with {calls} legs in progress"
    await run.fault("callback Asterisk restart", restart_asterisk)
    await asyncio.sleep(15)

    async def inet_down() -> str:
        lab.link_down("inet")
        return f"for {PARTITION_S:.0f} s"

    async def inet_up() -> None:
        lab.link_up("inet")
    await run.fault("internet link partition", inet_down, inet_up, hold_s=PARTITION_S)
    await asyncio.sleep(10)

    async def both_down() -> str:
        lab.link_down("inet")
        lab.link_down("leased")
        return f"for {PARTITION_S:.0f} s"

    async def both_up() -> None:
        lab.link_up("inet")
        lab.link_up("leased")
    await run.fault("both links partition", both_down, both_up, hold_s=PARTITION_S)


async def route_use(sites: Sites, site: str, kind: str) -> dict[str, int]:
    rows = await sites.fetch(site, "SELECT coalesce(last_route, '?') AS route, count(*) AS n "
                                   "FROM outbox WHERE kind = $1 GROUP BY 1", kind)
    return {r["route"]: int(r["n"]) for r in rows}


_BATCH_LOG = re.compile(rb"accepted a batch of (\d+) call-back requests")


def batched_intake(sites: Sites) -> tuple[int, int]:
    """(batch requests, call-back requests in them) the callback servers logged: the edge's
    relay sends a backlog (here: what queued during the partitions) in batches."""
    sizes = [int(m.group(1)) for log in sorted(sites.workdir.glob("callback*.log"))
             for m in _BATCH_LOG.finditer(log.read_bytes())]
    return len(sizes), sum(sizes)


def promises(customers: SippRole) -> Counter[int]:
    """Final answers the callers got from the edge: 486 = call-back promised, 503 = not."""
    final = {m.call_id: m.status for m in customers.dialog_messages()
             if m.direction == "received" and m.status is not None
             and m.status >= 300 and m.cseq_method == "INVITE"}
    return Counter(final.values())


def figures(report: Report, faults: list[Fault], drained_s: float, within: float,
            promised: Counter[int]) -> str:
    lines = [f"fault run: {CALLS} calls; the edge promised {promised[486]} call-backs "
             f"(486) and refused {promised[503]} (503, database down); "
             f"{report.requests} requests acknowledged by the callback site; "
             f"{len(faults)} faults injected:"]
    lines += [f"  - {f.name}: {f.detail} (healed after {f.healed_at - f.injected_at:.1f} s)"
              for f in faults]
    lines.append(f"  lost {len(report.lost)}, duplicated {len(report.duplicated)}, "
                 f"over attempt limit {len(report.over_limit)}, unfinished "
                 f"{len(report.unfinished)}, CDRs missing {len(report.cdr_missing)}, "
                 f"CDRs missing at the edge {len(report.edge_cdr_missing)}")
    lines.append(f"  time to drain after the last heal: {drained_s:.1f} s; finished within "
                 f"{DRAIN_LIMIT_S:.0f} s of it: {within:.1%}")
    lines.append(f"  {report.summary()}")
    return "\n".join(lines)


async def test_fault_run_loses_and_duplicates_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_free(ARI_PROXY_PORT)    # the servers' ports: Sites checks them under the lock
    merchant = MerchantOptions(pre_callback_delay_s="0", max_attempts=3,
                               retry_backoff_s=(5, 10, 20))
    # Not under pytest's tmp tree: any pytest session starting on the machine resets
    # /tmp/pytest-of-<user> to 0700, and the postmaster runs as its own system user.
    pg = PrivatePostgres(Path(tempfile.mkdtemp(prefix="cbgw-faultrun-pg-")))
    await asyncio.to_thread(pg.start)
    lab = link_lab()
    try:
        proxy = ari_proxy(lab)
        policy = ('[peer.health]\ninterval_s = 1\ntimeout_s = 1\nfall = 2\nrise = 2\n')
        sites = Sites(
            tmp_path, merchants=(merchant,), db_prefix="cbgw_faultrun", log_level="INFO",
            extra_env=FAULT_ENV, callback_servers=2, listen_host="0.0.0.0",
            sans=("10.202.1.2", "10.202.2.2"), pg=pg, peer_policy=policy,
            drop_databases=False,    # private server: keep the rows for a post-mortem
            edge_routes=(("internet", f"https://10.202.1.2:{LINK_PORTS['callback']}"),
                         ("leased", f"https://10.202.2.2:{LINK_PORTS['callback']}")),
            callback_routes=(("internet", f"https://10.202.1.2:{LINK_PORTS['edge']}"),
                             ("leased", f"https://10.202.2.2:{LINK_PORTS['edge']}")),
            ari_urls={"callback": f"http://127.0.0.1:{ARI_PROXY_PORT}",
                      "callback2": ARI_URLS["callback2"]})
        run = Run(sites, lab, pg, proxy)
        async with sites:
            carrier_a = start_carrier("uas_answer_dtmf.xml", "carrier-a", tmp_path,
                                      digits=KEYS)
            carrier_b = start_carrier("uas_answer_dtmf.xml", "carrier-b", tmp_path,
                                      digits=KEYS)
            customers = None
            try:
                await sites.qualify_carriers()
                started = time.time()
                customers = start_customers(tmp_path, customer_numbers(CALLS, 9041000000),
                                            rate=RATE, name="customers")
                await inject_faults(run)
                last_heal = max(f.healed_at for f in run.faults)
                await asyncio.to_thread(customers.wait, max(60.0, CALLS / RATE + 60
                                                            - (time.time() - started)))
                promised = promises(customers)
                done, _, status = await wait_finished(sites, promised[486],
                                                      within_s=DRAIN_LIMIT_S)
                drained_s = time.time() - last_heal
                report = await collect(sites, carrier_a, carrier_b)
                routes = {kind: await route_use(sites, "edge", kind)
                          for kind in ("callback_request",)}
                routes_back = await route_use(sites, "callback", "cdr")
                batches, batched = batched_intake(sites)
            finally:
                if customers is not None:        # a failed run must not leave callers behind
                    customers.stop()
                carrier_a.stop()
                carrier_b.stop()
    finally:
        lab.destroy()
        await asyncio.to_thread(pg.close)
    within = (sum(1 for t in report.finished_at if t <= last_heal + DRAIN_LIMIT_S)
              / max(1, report.requests))
    with capsys.disabled():     # the figures are the run's output, even under -q
        print("\n" + figures(report, run.faults, drained_s, within, promised))
        print(f"  routes used: edge->callback {routes}, "
              f"callback->edge CDRs {routes_back}; {batched} requests arrived in "
              f"{batches} batch requests", flush=True)
    assert done, f"not every request finished: {status}"
    # The edge promised a call-back (486 after the announcement) to every caller it
    # stored; while PostgreSQL was down it could not store, and said so (503: call again).
    assert promised[486] + promised[503] == CALLS, promised
    assert report.requests == report.edge_calls == promised[486], (promised, report.summary())
    assert report.violations() == {}, report.violations()
    assert within >= 0.99, f"only {within:.1%} finished within 5 min of the last heal"
    assert routes["callback_request"].get("leased", 0) > 0, \
        f"no request moved to the leased line: {routes}"
    assert batched > batches > 0, "the requests queued by the partitions did not drain in batches"
