"""A postpaid charge's dunning notices (:class:`billing.postpaid.DunningNotice`) sent to
the merchant's notification channels: :class:`DunningNotifications` is the
:class:`~billing.postpaid.NoticeSink` of the site's :class:`~billing.postpaid.Postpaid`.
Inside the transaction that records the attempt's outcome it queues the notification
(:func:`ivr_platform.notify_outbox.enqueue`, event ``charge_failed`` or
``charge_recovered``, one per attempt: fact key ``<kind>:<attempt id>``) with the
customer's number from the consultation's record; the site's notification worker
delivers it (:mod:`ivr_platform.notify_compose`: 決済失敗通知 / 決済回復通知).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg

from ivr_platform.notify_config import Event, NotifySettings
from ivr_platform.notify_outbox import enqueue
from shared.outbox import isoformat

if TYPE_CHECKING:
    from billing.postpaid import DunningNotice  # needs stripe (the billing extra)

_EVENTS = {"charge-failed": Event.CHARGE_FAILED, "charge-recovered": Event.CHARGE_RECOVERED}


class DunningNotifications:
    def __init__(self, settings: NotifySettings) -> None:
        self.settings = settings

    async def __call__(self, conn: asyncpg.Connection, notice: DunningNotice) -> None:
        caller = await conn.fetchval(
            "SELECT customer_number FROM consultations WHERE merchant_id = $1 "
            "AND consultation_id = $2", notice.merchant_id, notice.consultation_id)
        await enqueue(conn, self.settings, merchant_id=notice.merchant_id,
                      event=_EVENTS[notice.kind],
                      fact_key=f"{notice.kind}:{notice.attempt_id}", facts={
                          "caller": caller, "at": isoformat(notice.at),
                          "account": notice.account, "amount_yen": notice.total_yen,
                          "attempt": notice.attempt, "reason": notice.failure,
                          "consultation_id": notice.consultation_id})
