"""The link under partitions, over real network namespaces with WAN latency.

Topology (root namespace = both sites' processes; each link is a namespace
holding the delaying proxy, joined to the root namespace by its own veth)::

    relay (root) ──veth 10.201.1.0/30──> [cbgwf-inet:   proxy +60 ms each way] ──> receiver
                 ──veth 10.201.2.0/30──> [cbgwf-leased: proxy +60 ms each way] ──> receiver

A partition is ``ip link set ... down`` on a veth. Phases: both links up;
internet down (traffic must move to the leased line); both down (traffic must
queue durably); both up (drain, and fail back to the internet). Invariants are
checked from the database: every message applied exactly once. Needs root:
without it the test fails naming tests/faults/netlab.

The full 60 s partitions with Asterisk, SIPp and 300 call-backs are the
fault run (``tests/faults/test_fault_run.py``); ``LINK_FAULT_PARTITION_S`` lengthens these.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from shared import pki
from shared.link import LinkClient
from shared.link_policy import HealthSettings, LinkPolicy
from shared.outbox import Outbox, OutboxRelay
from tests.faults.linklab import (
    BATCHES_KEY,
    REPO,
    effect_counts,
    free_port,
    link_client,
    prepare_pool,
    receiver_app,
    serve,
    verifier,
)
from tests.faults.netlab import NetLab

PARTITION_S = float(os.environ.get("LINK_FAULT_PARTITION_S", "4"))
ONE_WAY_MS = 60
PROXY_PORT = 9443


@dataclass
class Net:
    lab: NetLab
    pki_dir: Path
    receiver_port: int


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    pki_dir = tmp_path_factory.mktemp("fault-pki")
    pki.init(pki_dir, ["edge", "callback"],
             sans=["localhost", "127.0.0.1", "10.201.1.2", "10.201.2.2"])
    port = free_port()
    with NetLab("cbgwf") as lab:
        for name, subnet in (("inet", 1), ("leased", 2)):
            ns = lab.namespace(name)
            lab.veth(name, None, f"10.201.{subnet}.1/30", ns, f"10.201.{subnet}.2/30")
            proc = lab.popen(ns, [sys.executable, "-m", "tests.faults.proxy",
                                  "--listen", f"10.201.{subnet}.2:{PROXY_PORT}",
                                  "--target", f"10.201.{subnet}.1:{port}",
                                  "--delay-ms", str(ONE_WAY_MS), "--name", name,
                                  "--log-level", "WARNING"],
                             cwd=REPO, stdout=subprocess.PIPE, text=True)
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("listening"), f"{name} proxy did not start"
        yield Net(lab, pki_dir, port)


@pytest.fixture(scope="module")
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await prepare_pool(pg_url)
    yield p
    await p.close()


async def _enqueue(pool: asyncpg.Pool, count: int, start: int) -> None:
    async with pool.acquire() as conn, conn.transaction():
        for i in range(count):
            await Outbox.enqueue(conn, kind="callback_request", path="/v1/link/test",
                                 payload={"n": start + i})


async def _pending(pool: asyncpg.Pool) -> int:
    n: int = await pool.fetchval("SELECT count(*) FROM outbox WHERE delivered_at IS NULL")
    return n


async def _drain(pool: asyncpg.Pool, within_s: float) -> float:
    started = time.monotonic()
    while await _pending(pool):
        assert time.monotonic() - started < within_s, f"{await _pending(pool)} not delivered"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def _routes(pool: asyncpg.Pool, lo: int, hi: int) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT last_route, count(*) AS c FROM outbox "
        "WHERE (convert_from(body, 'UTF8')::jsonb->>'n')::int BETWEEN $1 AND $2 GROUP BY 1",
        lo, hi - 1)
    return {r["last_route"]: int(r["c"]) for r in rows}


async def test_partitions_move_traffic_to_the_leased_line_then_queue_then_drain(
        net: Net, pool: asyncpg.Pool, pg_url: str) -> None:
    app = receiver_app(pool, verifier(net.pki_dir))
    runner = await serve(app, net.pki_dir, net.receiver_port, host="0.0.0.0")
    policy = LinkPolicy(health=HealthSettings(interval_s=0.5, timeout_s=0.5, fall=1, rise=2))
    client: LinkClient = link_client(
        net.pki_dir, [("internet", f"https://10.201.1.2:{PROXY_PORT}"),
                      ("leased", f"https://10.201.2.2:{PROXY_PORT}")],
        policy=policy, timeout_s=2.0, connect_timeout_s=1.0)
    # as the edge sends call-back requests: a backlog in batches (here of up to 16)
    relay = OutboxRelay(pool, pg_url, client, owner="faults", sweep_s=0.2, max_backoff_s=2,
                        batch_paths=["/v1/link/test"], batch_messages=16)
    task = asyncio.create_task(relay.run())
    lab = net.lab
    figures: dict[str, float] = {}
    try:
        started = time.monotonic()
        await _enqueue(pool, 50, 0)
        figures["healthy_drain_s"] = await _drain(pool, 15)
        assert await _routes(pool, 0, 50) == {"internet": 50}

        lab.link_down("inet")
        t0 = time.monotonic()
        await _enqueue(pool, 50, 50)
        figures["failover_drain_s"] = await _drain(pool, 15)
        assert await _routes(pool, 50, 100) == {"leased": 50}
        await asyncio.sleep(1.0)
        assert not client.route_status()["internet"].up

        lab.link_down("leased")
        await _enqueue(pool, 50, 100)
        await asyncio.sleep(PARTITION_S)
        stats = await relay.stats()
        assert stats.pending == 50  # queued durably, nothing lost, nothing sent
        figures["queued"] = stats.pending

        lab.link_up("inet")
        lab.link_up("leased")
        figures["heal_drain_s"] = await _drain(pool, 30)
        figures["partition_total_s"] = time.monotonic() - t0
        # failback: the internet route is preferred again once its probes pass
        deadline = time.monotonic() + 5
        while not client.route_status()["internet"].up:
            assert time.monotonic() < deadline, "no failback to the internet route"
            await asyncio.sleep(0.1)
        await _enqueue(pool, 50, 150)
        await _drain(pool, 15)
        assert await _routes(pool, 150, 200) == {"internet": 50}

        distinct, duplicated = await effect_counts(pool)
        lost = 200 - distinct
        print(f"\nlink faults over netns (+{ONE_WAY_MS} ms each way): 200 messages, "
              f"3 faults (internet down, both down {PARTITION_S:.0f} s, heal); lost {lost}, "
              f"duplicated {duplicated}; drain healthy {figures['healthy_drain_s']:.2f} s, "
              f"via leased {figures['failover_drain_s']:.2f} s, after heal "
              f"{figures['heal_drain_s']:.2f} s; total {time.monotonic() - started:.1f} s; "
              f"route status {client.route_status()}; batch requests by size "
              f"{dict(sorted(app[BATCHES_KEY].items()))}")
        assert (lost, duplicated) == (0, 0)
        assert app[BATCHES_KEY], "the backlogs went out in batches"
    finally:
        for name in ("inet", "leased"):
            lab.link_up(name)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
        await runner.cleanup()
