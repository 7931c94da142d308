"""The talking consultations a runner keeps (``consult_live``) against real PostgreSQL:
rewritten as they change, found by the Asterisk their advisor leg lives on, dropped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
import pytest

import callback_server
import shared
from advisors.records import EndReason
from callback_server import consult
from callback_server.consult import Begin, CancelTransfer, HoldCustomer
from callback_server.consult_live import LiveConsultations
from callback_server.consult_recovery import Second, live
from callback_server.store import CallbackStore
from shared.db import create_pool, migrate_url, package_migrations
from tests.integration.test_callback_store import MERCHANT, request
from tests.unit import test_callback_consult_transfer as transfer_tests
from tests.unit.test_callback_consult import CID, Call, at, make_desk
from tests.unit.test_callback_consult_recovery import snapshot, talking

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate_url(pg_url, [package_migrations("link", shared.__file__),
                               package_migrations("callback", callback_server.__file__)])
    p = await create_pool(pg_url, min_size=1, max_size=4)
    await CallbackStore(p, owner="setup").sync_merchants([MERCHANT])
    yield p
    await p.close()


async def a_call_back(pool: asyncpg.Pool) -> str:
    """A clean database with one call-back: its id."""
    await pool.execute("TRUNCATE consult_live, cdrs, request_info, callback_attempts, "
                       "callback_requests CASCADE")
    _, body = await CallbackStore(pool, owner="w1").intake(
        "22222222-2222-4222-8222-222222222222", request("e-live"), MERCHANT)
    return str(body["callback_id"])


async def test_kept_rewritten_found_by_asterisk_and_dropped(pool: asyncpg.Pool) -> None:
    callback_id = await a_call_back(pool)
    store = LiveConsultations(pool)
    call, leg = talking()
    kept = live(call.state)
    assert kept is not None
    await store.keep(callback_id, kept, snapshot(kept.over))
    call.send(HoldCustomer(call.at(40)))
    held = live(call.state)
    assert held is not None
    await store.keep(callback_id, held, snapshot(held.over))   # the same row, rewritten
    # its advisor leg, placed on Asterisk ast-a
    await pool.execute(
        """INSERT INTO callback_attempts (channel_id, callback_id, merchant_id, attempt_no,
               leg_seq, leg, carrier_id, endpoint, worker, asterisk)
           VALUES ($1, $2, 'acme', 1, 2, 'advisor', 'edge-trunk', 'PJSIP/a@edge-trunk',
                   'w1', 'ast-a')""", leg, callback_id)
    (found,) = await store.lost("ast-a")
    assert (found.consultation_id, found.customer_channel, found.advisor_channel,
            found.bridge_id, found.advisor_id) == (
        kept.over.consultation_id, "cb-1-01", leg, f"{kept.over.consultation_id}-br", 1)
    assert found.snapshot == snapshot(held.over)
    assert [h.ended_at for h in found.snapshot.holds] == [None]
    assert found.snapshot.end_reason is EndReason.FAILED
    assert await store.lost("ast-b") == []
    assert [f.consultation_id for f in await store.lost(None, callback_id)] == [
        kept.over.consultation_id]
    assert await store.lost(None, "cb-2") == []
    assert await store.leg_end(leg) is None                    # no CDR yet
    await store.drop(kept.over.consultation_id)
    assert await store.lost(None) == []


async def test_a_row_with_no_leg_is_found_only_by_its_jobs_rescue(pool: asyncpg.Pool) -> None:
    """An advisor-first click-to-call seeking its advisor (no leg placed anywhere): not
    taken by a server's reconnect, which cannot tell whose it is; its job's rescue is."""
    callback_id = await a_call_back(pool)
    store = LiveConsultations(pool)
    state, _ = consult.transition(Call(make_desk()).state, Begin(at(0)))
    seeking = live(state)
    assert seeking is not None
    await store.keep(callback_id, replace(seeking, customer_channel=""),
                     snapshot(seeking.over))
    assert await store.lost("ast-a") == []
    assert [f.consultation_id for f in await store.lost("ast-a", callback_id)] == [CID]
    await store.keep(callback_id, seeking, snapshot(seeking.over))   # its customer's leg
    assert [f.consultation_id for f in await store.lost("ast-a")] == [CID]


async def test_a_transfer_in_progress_is_kept_with_its_second_party(pool: asyncpg.Pool) -> None:
    """The second advisor's leg and presence are kept beside the row (and found by the
    restart), and forgotten when the transfer ended."""
    callback_id = await a_call_back(pool)
    store = LiveConsultations(pool)
    call, _ = transfer_tests.talking()
    second = transfer_tests.transferring_to_2(call)
    kept = live(call.state)
    assert kept is not None and kept.second is not None
    await store.keep(callback_id, kept, snapshot(kept.over))
    (found,) = await store.lost(None, callback_id)
    assert found.second == Second(second, 2, f"{kept.over.consultation_id}-t1")
    assert found.snapshot.transfers[-1].outcome == "failed"
    call.send(CancelTransfer(call.at(20)))
    back = live(call.state)
    assert back is not None and back.second is None
    await store.keep(callback_id, back, snapshot(back.over))
    (found,) = await store.lost(None, callback_id)
    assert found.second is None
    assert [t.outcome for t in found.snapshot.transfers] == ["cancelled"]
