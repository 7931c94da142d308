"""Consultations in progress in PostgreSQL (``consult_live``), and the reconciler that
ends those a killed server left behind (the decision:
:mod:`callback_server.consult_recovery`).

:class:`LiveConsultations` is the table: the runner keeps a row from the consultation's
first offer (an advisor rung, or the customer queued) while it rings, queues and talks
(:meth:`~LiveConsultations.keep`, rewritten on change) and drops it once the record is
saved. :class:`ConsultReconciler` runs after a restart, for every row no running call
of this process owns whose advisor leg lives on this server's Asterisk: on every
(re)connect of the events websocket, before the strays are hung up
(:class:`~callback_server.stasis.StasisApp`), and for a rescued job's own rows (the
worker). For each one:

1. each leg still up is hung up and settled from Asterisk's leg record (its end and CDR,
   :class:`~callback_server.reconcile.LegSettler`); a leg already gone is settled the
   same way if no runner saw its end; the bridge is destroyed;
2. the record is the row's snapshot ended by the legs' ends (:func:`recovered`), saved
   once (by consultation id; its message to the edge with it);
3. the advisor's consultation is ended (``ConsultationEnded``: after-call work, never
   left ``talking``); an offer's assignment is cancelled instead (:func:`withdrawn`: the
   advisor being rung back to standby with no miss, never left ``ringing``, and so is
   any advisor still rung under the consultation's id, an offer the runner made after
   it last kept the row; a queued customer out of the queue); a consult transfer's
   second party (the row's ``second_party``) is hung up and settled in step 1 too, its
   record's transfer ``failed`` or ``cancelled`` and its cost in the record, and the
   second advisor's presence ended (ringing: standby again, no miss; answered:
   after-call work);
4. the prepaid reservation is settled from the saved record's talk seconds (once: a
   settled reservation is not settled again); a postpaid consultation (the row has the
   account and terms its runner kept) is charged from them like the runner charges
   (:meth:`~callback_server.consult_billing.ConsultBilling.recharge`: the charge row
   before Stripe, one per consultation, so a second reconcile returns the first charge);
   then the row is dropped.

Every step is idempotent, so a reconciler killed half-way is finished by the next one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import asyncpg

from advisors import assignment as am
from advisors.records import ConsultationRecord
from billing.rating import Terms
from callback_server.advisor_desk import AdvisorPort
from callback_server.call_ports import utcnow
from callback_server.consult import Op
from callback_server.consult_billing import BillingPort, ChargeTo
from callback_server.consult_recovery import LegEnd, Live, Second, recovered
from callback_server.consult_runner import BILLING_ERRORS, DATABASE_ERRORS, RecordSink
from callback_server.reconcile import LegSettler
from callback_server.store import CallbackStore
from shared import ari
from shared.money import Money

log = logging.getLogger("callback.consult")


@dataclass(frozen=True, slots=True)
class LostConsultation:
    """A ``consult_live`` row: a consultation as its runner last kept it."""

    consultation_id: str
    callback_id: str
    merchant_id: str
    customer_channel: str
    advisor_channel: str | None          # None: queued, nobody rung
    bridge_id: str | None                # None: an offer (nobody talks yet)
    advisor_id: int | None
    presence_id: str
    snapshot: ConsultationRecord
    charge_to: ChargeTo | None = None      # postpaid: charged once ended
    second: Second | None = None           # a consult transfer's second party


class LiveConsultations:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def keep(self, callback_id: str, live: Live, snapshot: ConsultationRecord,
                   charge_to: ChargeTo | None = None) -> None:
        """Write (or rewrite) the consultation's row (``charge_to``: postpaid)."""
        await self.pool.execute(
            """INSERT INTO consult_live (consultation_id, callback_id, merchant_id,
                   customer_channel, advisor_channel, bridge_id, advisor_id, presence_id,
                   snapshot, charge_account, charge_terms, second_party)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
               ON CONFLICT (consultation_id) DO UPDATE SET
                   customer_channel = $4, advisor_channel = $5, bridge_id = $6,
                   advisor_id = $7, presence_id = $8, snapshot = $9, charge_account = $10,
                   charge_terms = $11, second_party = $12, updated_at = now()""",
            snapshot.consultation_id, callback_id, snapshot.merchant_id, live.customer_channel,
            live.advisor_channel, live.bridge_id, live.advisor_id, live.presence_id,
            snapshot.to_json(), None if charge_to is None else charge_to.account,
            None if charge_to is None else asdict(charge_to.terms),
            None if live.second is None else asdict(live.second))

    async def drop(self, consultation_id: str) -> None:
        await self.pool.execute("DELETE FROM consult_live WHERE consultation_id = $1",
                                consultation_id)

    async def lost(self, asterisk: str | None, callback_id: str | None = None
                   ) -> list[LostConsultation]:
        """The rows whose advisor leg (a queued customer's: their leg) was placed on
        ``asterisk`` (None: any), oldest first; only ``callback_id``'s when given. A row
        with no leg at all (an advisor-first click-to-call seeking its advisor) is another
        server's as much as this one's: only its job's rescue (``callback_id``) takes it."""
        rows = await self.pool.fetch(
            """SELECT l.* FROM consult_live l
               LEFT JOIN callback_attempts a
                      ON a.channel_id = coalesce(l.advisor_channel, l.customer_channel)
               WHERE ($1::text IS NULL OR a.asterisk = $1 OR (a.asterisk IS NULL AND
                      ($2::text IS NOT NULL OR l.advisor_channel IS NOT NULL
                       OR l.customer_channel <> '')))
                 AND ($2::text IS NULL OR l.callback_id = $2)
               ORDER BY l.updated_at""", asterisk, callback_id)
        return [_lost(r) for r in rows]

    async def leg_end(self, channel_id: str) -> tuple[datetime, Money | None] | None:
        """When the leg ended and what it cost, from its CDR (None: it has none)."""
        row = await self.pool.fetchrow(
            "SELECT ended_at, carrier_cost, carrier_currency FROM cdrs WHERE call_id = $1",
            channel_id)
        if row is None:
            return None
        cost = None if row["carrier_cost"] is None else Money(row["carrier_cost"],
                                                               row["carrier_currency"])
        return row["ended_at"], cost


def withdrawn(lost: LostConsultation) -> am.Assignment:
    """The assignment of an offer left by a dead server, to cancel: the advisor being
    rung (their ring withdrawn: standby, no miss), else the customer queued (out of the
    queue)."""
    if lost.advisor_id is None:
        return am.Assignment(lost.presence_id, frozenset(), am.Phase.QUEUED)
    return am.Assignment(lost.presence_id, frozenset(), am.Phase.OFFERING,
                         offered_to=lost.advisor_id)


def _lost(row: Any) -> LostConsultation:
    charge_to = None if row["charge_account"] is None else ChargeTo(
        row["charge_account"], Terms(**row["charge_terms"]))
    second = None if row["second_party"] is None else Second(**row["second_party"])
    return LostConsultation(
        row["consultation_id"], row["callback_id"], row["merchant_id"],
        row["customer_channel"], row["advisor_channel"], row["bridge_id"], row["advisor_id"],
        row["presence_id"], ConsultationRecord.from_json(row["snapshot"]), charge_to, second)


class ConsultReconciler:
    def __init__(self, live: LiveConsultations, *, client: ari.AriClient,
                 store: CallbackStore, settler: LegSettler, records: RecordSink,
                 desk: AdvisorPort, billing: BillingPort | None) -> None:
        self.live = live
        self.client = client
        self.store = store
        self.settler = settler
        self.records = records
        self.desk = desk
        self.billing = billing
        # one at a time: a reconnect's and a rescue's would end the same consultation
        self._lock = asyncio.Lock()

    async def reconcile(self, running: Collection[str] = (), callback_id: str | None = None
                        ) -> int:
        """End the lost consultations of this server's Asterisk (only ``callback_id``'s
        when given) whose call-back is not ``running`` here; how many were ended."""
        async with self._lock:
            return await self._reconcile(running, callback_id)

    async def _reconcile(self, running: Collection[str], callback_id: str | None) -> int:
        ended = 0
        try:
            found = await self.live.lost(self.store.asterisk, callback_id)
        except DATABASE_ERRORS as exc:
            log.error("consultations left by a dead server not read: %s", exc)
            return 0
        for lost in found:
            if lost.callback_id in running:
                continue
            try:
                await self._end(lost)
                ended += 1
            except (ari.AriError, TimeoutError, *BILLING_ERRORS) as exc:
                log.error("consultation %s left by a dead server not ended yet: %s",
                          lost.consultation_id, exc)
        return ended

    async def _end(self, lost: LostConsultation) -> None:
        log.warning("consultation %s was left %s by a dead server: ending it",
                    lost.consultation_id,
                    "talking" if lost.bridge_id is not None else "ringing or queued")
        customer = None if not lost.customer_channel \
            else await self._leg_end(lost.customer_channel)    # "": not dialled yet
        advisor = None if lost.advisor_channel is None \
            else await self._leg_end(lost.advisor_channel)
        second, xleg = lost.second, None
        if second is not None and second.channel_id is not None:
            xleg = (second.channel_id, await self._leg_end(second.channel_id))
        if lost.bridge_id is not None:
            await self.client.destroy_bridge(lost.bridge_id)
        record = recovered(lost.snapshot, lost.advisor_channel, customer, advisor, xleg)
        saved = await self.records.save(record)
        if lost.bridge_id is None:
            await self.desk.assignment(lost.merchant_id, Op.CANCELLED, withdrawn(lost))
            # an offer made after the row was last kept (the runner died before knowing)
            for rung in await self.desk.ringing(lost.merchant_id, lost.presence_id):
                await self.desk.ended(lost.merchant_id, rung, lost.presence_id, utcnow())
        elif lost.advisor_id is not None:
            await self.desk.ended(lost.merchant_id, lost.advisor_id, lost.presence_id,
                                  utcnow())
        if second is not None and second.advisor_id is not None \
                and second.presence_id is not None:
            await self.desk.ended(lost.merchant_id, second.advisor_id, second.presence_id,
                                  utcnow())
        if self.billing is not None:
            for done in await self.billing.rescue(lost.merchant_id, lost.callback_id):
                log.warning("reservation %d settled from the record: %d s, %d yen",
                            done.reservation_id, done.charge.talk_s, done.charge.total_yen)
            if lost.charge_to is not None:
                charge = await self.billing.recharge(lost.merchant_id, lost.charge_to,
                                                     lost.consultation_id)
                if charge is not None:
                    log.warning("consultation %s charged from the record: %d yen, %s",
                                lost.consultation_id, charge.total_yen, charge.state)
        await self.live.drop(lost.consultation_id)
        log.warning("consultation %s ended %s after %d s of talk (%s)",
                    lost.consultation_id, record.end_reason, record.talk_s,
                    "record saved" if saved else "its record was already saved")

    async def _leg_end(self, channel_id: str) -> LegEnd | None:
        """Hang the leg up if it is still up; its end once settled (None: no CDR)."""
        channel = await self.client.get_channel(channel_id)
        if channel is not None:
            await self.settler.settle_stray(channel)
        else:
            leg = await self.store.leg(channel_id)
            if leg is not None and leg.status not in ("ended", "failed"):
                await self.settler.settle(leg, await self.settler.record_of(leg, wait_s=2.0))
        end = await self.live.leg_end(channel_id)
        if end is None:
            return None
        return LegEnd(end[0], by_reconciler=channel is not None, cost=end[1])
