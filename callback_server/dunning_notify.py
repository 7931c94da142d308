"""A postpaid charge's dunning notices (:class:`billing.postpaid.DunningNotice`) sent to
the merchant's notification channels and, for a merchant in ``[sms]
dunning_merchants``, to the customer by SMS: :class:`DunningNotifications` is the
:class:`~billing.postpaid.NoticeSink` of the site's :class:`~billing.postpaid.Postpaid`.
Inside the transaction that records the attempt's outcome it queues

* the notification (:func:`ivr_platform.notify_outbox.enqueue`, event ``charge_failed`` or
  ``charge_recovered``, one per attempt: fact key ``<kind>:<attempt id>``) with the
  customer's number from the consultation's record; the site's notification worker
  delivers it (:mod:`ivr_platform.notify_compose`: 決済失敗通知 / 決済回復通知);
* the customer's SMS (:func:`ivr_platform.sms_store.enqueue`, :func:`sms_text`, from the
  merchant's sender) when the merchant opted in and the customer's number is a mobile
  one; the site's SMS worker sends it (durable, sent once). The outcome is recorded once
  per attempt, so each notice is queued once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import asyncpg

from ivr_platform.notify_config import Event, NotifySettings
from ivr_platform.notify_outbox import enqueue
from ivr_platform.sms_config import SmsSettings
from ivr_platform.sms_store import check_message
from ivr_platform.sms_store import enqueue as enqueue_sms
from ivr_platform.sms_twilio import TwilioSms
from shared.outbox import isoformat
from shared.phone import E164

if TYPE_CHECKING:
    from billing.postpaid import DunningNotice  # needs stripe (the billing extra)

log = logging.getLogger("callback.dunning")

_EVENTS = {"charge-failed": Event.CHARGE_FAILED, "charge-recovered": Event.CHARGE_RECOVERED}


def sms_text(kind: Literal["charge-failed", "charge-recovered"], total_yen: int) -> str:
    """The customer's SMS (Japanese, one UCS-2 message)."""
    if kind == "charge-failed":
        return (f"ご利用料金{total_yen:,}円のカード決済ができませんでした。"
                "ご登録のカードをご確認ください。")
    return f"ご利用料金{total_yen:,}円のお支払いを確認いたしました。ありがとうございました。"


class DunningNotifications:
    """``notify``: the merchants' channels (None: none); ``sms``: the site's ``[sms]``
    (None: no SMS)."""

    def __init__(self, notify: NotifySettings | None, sms: SmsSettings | None = None) -> None:
        self.notify = notify
        self.sms = sms

    async def __call__(self, conn: asyncpg.Connection, notice: DunningNotice) -> None:
        caller = await conn.fetchval(
            "SELECT customer_number FROM consultations WHERE merchant_id = $1 "
            "AND consultation_id = $2", notice.merchant_id, notice.consultation_id)
        if self.notify is not None:
            await enqueue(conn, self.notify, merchant_id=notice.merchant_id,
                          event=_EVENTS[notice.kind],
                          fact_key=f"{notice.kind}:{notice.attempt_id}", facts={
                              "caller": caller, "at": isoformat(notice.at),
                              "account": notice.account, "amount_yen": notice.total_yen,
                              "attempt": notice.attempt, "reason": notice.failure,
                              "consultation_id": notice.consultation_id})
        if self.sms is not None and notice.merchant_id in self.sms.dunning_merchants:
            await self._sms(conn, self.sms, notice, caller)

    @staticmethod
    async def _sms(conn: asyncpg.Connection, sms: SmsSettings, notice: DunningNotice,
                   caller: str | None) -> None:
        text = sms_text(notice.kind, notice.total_yen)
        try:
            to = E164.parse(caller or "")
            check_message(to, text)
        except ValueError as exc:    # no number, not E.164, not a mobile
            log.info("%s of attempt %d: no SMS to the customer: %s", notice.kind,
                     notice.attempt_id, exc)
            return
        await enqueue_sms(conn, notice.merchant_id, to, str(sms.sender_for(notice.merchant_id)),
                          text, TwilioSms.provider)
