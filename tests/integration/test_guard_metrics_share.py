"""The guard's counters of every process on a host, from whichever process answers
(callback_server.guard.metrics_share), on the real PostgreSQL."""

from __future__ import annotations

import asyncpg
import pytest

from callback_server.guard import metrics_share
from callback_server.guard.metrics import Metrics
from callback_server.guard.metrics_share import MetricsShare
from callback_server.testing import merchant
from tests.integration import callback_db

pytestmark = pytest.mark.integration

pool, clean = callback_db.fixtures([merchant("acme")])


def _accepted(text: str) -> int:
    line = next(x for x in text.splitlines() if x.startswith("cbgw_guard_accepted_total "))
    return int(line.split()[1])


async def test_a_scrape_of_any_process_sums_the_processes_of_its_host(
        clean: asyncpg.Pool) -> None:
    registries = [Metrics() for _ in range(4)]
    for i, m in enumerate(registries):
        m.inc("cbgw_guard_accepted_total", 10 ** i)        # 1, 10, 100, 1000
    full, intake1, intake2 = (
        MetricsShare(clean, registries[i], process=f"callback-h1-{i}", host="h1",
                     role="all" if i == 0 else "intake") for i in range(3))
    elsewhere = MetricsShare(clean, registries[3], process="callback-h2-3", host="h2",
                             role="all")
    for share in (full, intake1, intake2, elsewhere):
        await share.publish()
    assert _accepted(await full.render()) == 111        # host h1 only
    assert _accepted(await intake2.render()) == 111
    registries[1].inc("cbgw_guard_accepted_total", 5)   # not yet published:
    assert _accepted(await full.render()) == 111
    assert _accepted(await intake1.render()) == 116     # but live in its own scrape
    await intake1.publish()
    assert _accepted(await full.render()) == 116
    assert _accepted(await elsewhere.render()) == 1000


async def test_a_process_that_ended_still_counts_until_purged(clean: asyncpg.Pool) -> None:
    ended, alive = Metrics(), Metrics()
    ended.inc("cbgw_guard_accepted_total", 7)
    alive.inc("cbgw_guard_accepted_total", 2)
    async with MetricsShare(clean, ended, process="old", host="h", role="intake").publishing():
        ended.inc("cbgw_guard_accepted_total", 1)       # published when it stops
    share = MetricsShare(clean, alive, process="new", host="h", role="all")
    assert _accepted(await share.render()) == 10
    await clean.execute("UPDATE process_metrics SET updated_at = now() - interval '8 days'"
                        " WHERE process = 'old'")
    async with clean.acquire() as conn:
        assert await metrics_share.purge(conn) == 1
    assert _accepted(await share.render()) == 2


async def test_without_the_database_a_scrape_shows_this_process_and_says_so(
        pg_url: str) -> None:
    lonely = await asyncpg.create_pool(pg_url, min_size=1, max_size=1)
    m = Metrics()
    m.inc("cbgw_guard_accepted_total", 3)
    share = MetricsShare(lonely, m, process="p", host="h", role="all")
    await lonely.close()
    text = await share.render()
    assert text.startswith("# other processes' counters unavailable (InterfaceError)")
    assert _accepted(text) == 3
