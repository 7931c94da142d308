"""A postpaid consultation a killed server left talking, ended by the restart's
reconciler (``ConsultReconciler``, Asterisk faked in process: both legs already gone)
against a real PostgreSQL and a real localstripe: charged from its saved record like the
runner charges, exactly once even when a reconciler dies before dropping the row and the
next one ends it again."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import stripe

import callback_server
from advisors.record_store import ConsultationRecords
from billing import records
from billing.rating import Terms
from billing.settings import BillingSettings, StripeSettings
from callback_server.consult import HoldCustomer
from callback_server.consult_billing import ChargeTo, ConsultBilling
from callback_server.consult_live import ConsultReconciler, LiveConsultations
from callback_server.consult_recovery import live
from callback_server.legrecord import LegRecords
from callback_server.reconcile import LegSettler
from callback_server.store import CallbackStore
from callback_server.testing import FakeAri, FixedRater
from shared.db import package_migrations
from tests.integration import advisors_db, billing_db
from tests.integration.localstripe import client_for, intents_with, localstripe_fixture
from tests.integration.test_billing_postpaid import registered
from tests.unit.test_callback_consult_recovery import snapshot, talking

pytestmark = pytest.mark.integration
localstripe = localstripe_fixture()

pool, clean = advisors_db.fixtures(billing_db.migrations(), records.MIGRATIONS,
                                   package_migrations("callback", callback_server.__file__))


@pytest.fixture
def stripe_client(localstripe: int) -> stripe.StripeClient:
    return client_for(localstripe)


async def test_a_postpaid_consultation_reconciled_is_charged_once(
        clean: asyncpg.Pool, stripe_client: stripe.StripeClient, localstripe: int) -> None:
    db = clean
    await billing_db.truncate(db, "consult_live", "billing_records", "billing_customer_legs",
                              "billing_records_awaiting")
    await registered(db, stripe_client, "member-42")
    call, _ = talking()                        # answered at 5 s
    call.send(HoldCustomer(call.at(70)))       # kept at the hold: 65 s of talk known
    kept = live(call.state)
    assert kept is not None
    cid = kept.over.consultation_id
    store = LiveConsultations(db)
    to = ChargeTo("member-42", Terms(100))
    await store.keep("cb-1", kept, snapshot(kept.over), to)
    ari = FakeAri()                            # Asterisk lost both legs with the server
    callbacks = CallbackStore(db, owner="w2")
    settings = BillingSettings(
        stripe=StripeSettings("sk_test_billing", api_base=f"http://127.0.0.1:{localstripe}"),
        postpaid_merchants=frozenset({"acme"}))
    reconciler = ConsultReconciler(
        store, client=ari, store=callbacks,  # type: ignore[arg-type]
        settler=LegSettler(callbacks, FixedRater(), LegRecords(ari), {}),  # type: ignore[arg-type]
        records=ConsultationRecords(db), desk=call.desk,
        billing=ConsultBilling(db, settings))
    assert await reconciler.reconcile() == 1
    assert await store.lost(None) == []
    record = await db.fetchrow("SELECT talk_s FROM consultations WHERE consultation_id = $1",
                               cid)
    assert record["talk_s"] == 65

    async def charged() -> list[tuple[object, ...]]:
        rows = await db.fetch(
            "SELECT c.consultation_id, c.talk_s, c.total_yen, c.requested_by, o.outcome "
            "FROM billing_postpaid_charges c JOIN billing_postpaid_attempts t "
            "ON t.charge_id = c.id JOIN billing_postpaid_outcomes o ON o.attempt_id = t.id")
        return [tuple(r) for r in rows]

    once = [(cid, 65, 200, "rescue", "succeeded")]      # two started minutes at 100 yen
    assert await charged() == once
    (intent,) = await asyncio.to_thread(intents_with, stripe_client, "consultation", cid)
    # a reconciler killed after charging, before dropping the row: the next ends it again
    await store.keep("cb-1", kept, snapshot(kept.over), to)
    assert await reconciler.reconcile() == 1
    assert await store.lost(None) == []
    assert await charged() == once
    assert await asyncio.to_thread(intents_with, stripe_client, "consultation", cid) == [
        intent]
