"""Scale-out: two callback servers on ONE database, each with its own Asterisk.

One edge, two ``callback_server`` processes (``callback`` on 9443 with the callback
Asterisk, ``callback2`` on 9444 with the second callback Asterisk), one callback
database they both claim jobs from (``FOR UPDATE SKIP LOCKED``). One SIPp calls the
edge from ``SCALE_OUT_CALLS`` (default 100) distinct numbers; both carriers answer
and press the IVR keys. The edge delivers each request to either server
(primary/backup over both); NOTIFY wakes both workers, and they race for every job.

Asserted from the carriers' SIP traces and the databases: every number got exactly
one INVITE and one answered call-back (no request dialled twice), every persisted
leg is one INVITE, every request finished, both workers (and both Asterisks)
dialled, and every CDR reached the edge exactly once.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from demo.stack import MerchantOptions
from tests.faults.sites import (
    LOAD_GUARD_ENV,
    Sites,
    collect,
    customer_numbers,
    start_carrier,
    start_customers,
    wait_finished,
)

CALLS = int(os.environ.get("SCALE_OUT_CALLS", "100"))
RATE = float(os.environ.get("SCALE_OUT_RATE", "8"))
# confirm the call-back (1), inquiry (2), order number 123#: submit, thanks, hang-up
KEYS = "1" + "2" + "123#"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


async def test_two_callback_servers_on_one_database_never_dial_a_request_twice(
        tmp_path: Path) -> None:
    merchant = MerchantOptions(pre_callback_delay_s="0", max_attempts=3,
                               retry_backoff_s=(5, 10, 20))
    sites = Sites(tmp_path, merchants=(merchant,), db_prefix=f"cbgw_scale{os.getpid()}",
                  log_level="INFO", extra_env=LOAD_GUARD_ENV, callback_servers=2,
                  edge_routes=(("cb1", "https://127.0.0.1:9443"),
                               ("cb2", "https://127.0.0.1:9444")))
    numbers = customer_numbers(CALLS)
    async with sites:
        carrier_a = start_carrier("uas_answer_dtmf.xml", "carrier-a", tmp_path, digits=KEYS)
        carrier_b = start_carrier("uas_answer_dtmf.xml", "carrier-b", tmp_path, digits=KEYS)
        try:
            await sites.qualify_carriers()
            customers = start_customers(tmp_path, numbers, rate=RATE, name="customers")
            await asyncio.to_thread(customers.wait, CALLS / RATE + 120)
            done, waited, status = await wait_finished(sites, CALLS, within_s=180)
            report = await collect(sites, carrier_a, carrier_b)
        finally:
            carrier_a.stop()
            carrier_b.stop()
    print(f"\nscale-out: {CALLS} calls at {RATE}/s; drained {waited:.1f} s after the last "
          f"call; {report.summary()}")
    assert done, f"not every request finished: {status}\n{sites.log_tail('callback')}"
    assert report.requests == CALLS and report.edge_calls == CALLS, report.summary()
    assert report.violations() == {}, report.violations()
    # Both carriers answer, so every request is one answered INVITE: never two.
    assert report.invites == CALLS and report.answered == CALLS, report.summary()
    assert report.completed == CALLS, report.summary()
    assert sum(report.legs_by_worker.values()) == CALLS
    assert len(report.legs_by_worker) == 2 and min(report.legs_by_worker.values()) > 0, \
        f"both workers must dial: {report.legs_by_worker}"
    assert set(report.invites_by_asterisk) == {"5260", "5262"}, report.invites_by_asterisk
    assert sorted(report.invites_by_asterisk.values()) == sorted(
        report.legs_by_worker.values()), (report.invites_by_asterisk, report.legs_by_worker)
