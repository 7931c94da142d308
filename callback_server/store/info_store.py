"""Request info: what the customer gave the IVR, reported to the edge through the outbox
and, to the merchant's channels that take ``request_collected``, queued as a call
notification (:mod:`ivr_platform.notify_outbox`) in the same transaction; and the flow
each round played to the customer."""

from __future__ import annotations

from datetime import datetime

from callback_server.ivr import Submit
from callback_server.store.base import RoundFlow, StoreBase
from callback_server.store.info_records import InfoRecord
from ivr_platform.notify_config import Event
from ivr_platform.notify_outbox import enqueue as enqueue_notification
from shared.db import survives_database_restarts
from shared.outbox import EVENTS_PATH, Outbox, encode, fact_message_id, isoformat
from shared.phone import E164

#: the request info's row ($1..$6), its message id returned only if the row is new
_INSERT_INFO = """
        INSERT INTO request_info (callback_id, merchant_id, category, fields, collected_at,
                                  message_id)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (message_id) DO NOTHING RETURNING message_id"""

#: the request info and its outbox message in one statement (without call notifications):
#: the message only if the row is new, so a repeat of the fact sends nothing twice
RECORD_INFO_SQL = f"""
    WITH info AS ({_INSERT_INFO})
    INSERT INTO outbox ({Outbox.INSERT_COLUMNS})
    SELECT message_id::uuid, 'request_info', $7, $8, $2, false FROM info
    ON CONFLICT (message_id) DO NOTHING"""


class InfoStore(StoreBase):
    @survives_database_restarts
    async def record_info(self, submit: Submit, *, callback_id: str, edge_call_id: str,
                          merchant_id: str, caller: E164, collected_at: datetime,
                          seq: int) -> str:
        """Store collected request info and its outbox message; returns the message id."""
        mid = fact_message_id("request_info", f"{callback_id}:{seq}")
        message = {
            "kind": "request_info", "callback_id": callback_id,
            "edge_call_id": edge_call_id, "merchant_id": merchant_id,
            "caller": str(caller), "category": submit.category,
            "fields": submit.as_dict(), "collected_at": isoformat(collected_at),
        }
        if self.notify is None and self.info_records is not None:
            # with the other calls' submits of the moment: one statement, one commit
            await self.info_records.record(InfoRecord(
                callback_id, merchant_id, submit.category, submit.as_dict(), collected_at,
                mid, encode(message)))
            return mid
        if self.notify is None:
            # One statement, its own transaction: the row and its message, or neither
            # (a repeat of the same fact inserts nothing). A connection is held for one
            # round trip, not four (BEGIN, two INSERTs, COMMIT) each waiting for the
            # event loop's turn while the IVRs of many calls submit.
            await self.pool.execute(RECORD_INFO_SQL, callback_id, merchant_id,
                                    submit.category, submit.as_dict(), collected_at, mid,
                                    EVENTS_PATH, encode(message))
            return mid
        async with self.pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                _INSERT_INFO, callback_id, merchant_id, submit.category, submit.as_dict(),
                collected_at, mid)
            if inserted is not None:
                await Outbox.enqueue(conn, kind="request_info", path=EVENTS_PATH,
                                     payload=message, message_id=mid,
                                     merchant_id=merchant_id)
                await enqueue_notification(
                    conn, self.notify, merchant_id=merchant_id,
                    event=Event.REQUEST_COLLECTED, fact_key=f"request_info:{mid}",
                    facts={"caller": str(caller), "at": isoformat(collected_at),
                           "category": submit.category, "fields": submit.as_dict(),
                           "callback_id": callback_id, "edge_call_id": edge_call_id})
        return mid

    def keep_round_flow(self, callback_id: str, flow: RoundFlow) -> None:
        """Keep which flow the round running ``callback_id`` runs: written
        (``callback_round_flows``) in the transaction of the round's first leg
        (:meth:`~callback_server.store.leg_store.LegStore.persist_leg`), not in one of
        its own; a round that places no leg keeps none. A rescued round started again
        keeps the flow it runs now."""
        self.round_flows[callback_id] = flow
