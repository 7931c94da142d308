"""Settle legs that no call runner owns, from what Asterisk itself recorded.

A leg loses its runner when the server is killed (its legs turn up as strays
in the Stasis app, or its job is rescued), or when the events websocket was
down as the leg ended. The leg row alone cannot say whether the customer
answered: the answer event may never have reached us. Asterisk's leg record
(:mod:`callback_server.legrecord`) can. Settling a leg writes its end and its
CDR (rated like any other, sent to the edge through the outbox), at most once:
the CDR is keyed by the channel id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime

from callback_server.call_ports import Rater
from callback_server.cdr_rating import store_cdr
from callback_server.dialer import LastLeg, Leg, leg_cdr
from callback_server.legrecord import LegRecord, LegRecords
from callback_server.store import CallbackStore
from callback_server.store.leg_store import LegRow
from shared import ari, logs
from shared.config import Merchant
from shared.phone import E164, InvalidNumber

log = logging.getLogger(__name__)


class LegSettler:
    def __init__(self, store: CallbackStore, rater: Rater, records: LegRecords,
                 merchants: Mapping[str, Merchant]) -> None:
        self.store = store
        self.rater = rater
        self.records = records
        self.merchants = merchants

    async def record_of(self, leg: LegRow, *, wait_s: float = 0.0) -> LegRecord | None:
        """Asterisk's record of ``leg``. With ``wait_s``, keep asking that long while
        there is none yet, or only its answer (a leg just hung up: its handler may still
        be running; the answer log alone would date its end at its answer).

        Raises ``ari.AriError`` / ``TimeoutError`` when Asterisk cannot be asked."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            record = await self.records.fetch(leg.channel_id, leg.created_at)
            if record is not None and record.ended_at is not None \
                    or loop.time() >= deadline:
                return record
            await asyncio.sleep(0.25)

    async def settle(self, leg: LegRow, record: LegRecord | None, *,
                     seen_up: bool = False) -> LastLeg:
        """Write the leg's end and its CDR; return what the leg now is.

        ``record``: Asterisk's record (None: it has none, e.g. it was restarted).
        ``seen_up``: the channel was found answered (a stray) before being hung up.
        """
        with logs.bind(call_id=leg.edge_call_id, request_id=leg.callback_id,
                       merchant=leg.merchant_id):
            return await self._settle(leg, record, seen_up)

    async def _settle(self, leg: LegRow, record: LegRecord | None, seen_up: bool) -> LastLeg:
        now = datetime.now(UTC)
        answered = leg.answered or seen_up or (record is not None and record.answered)
        answered_at = (record.answered_at if record is not None else None) or leg.answered_at
        ended_at = now
        if record is not None:
            # No end: Asterisk logged the answer and died with the leg up. When it ended
            # is unknown, so it is billed nothing beyond its answer.
            ended_at = record.ended_at or answered_at or now
        if answered and answered_at is None:
            answered_at = ended_at          # answered, but when is unknown: bill 0 s
        ended = record if record is not None and record.ended_at is not None else None
        cause = ended.cause if ended is not None else (leg.cause or (16 if answered else 0))
        if leg.status == "ended" and leg.cause is not None and ended is None:
            cause = leg.cause
        await self.store.settle_leg(leg.channel_id, answered=answered, answered_at=answered_at,
                                    cause=cause)
        cdr = leg_cdr(leg.callback_id, Leg(leg.channel_id, leg.leg, leg.carrier_id,
                                           leg.destination, leg.created_at, answered_at),
                      max(ended_at, answered_at or ended_at), cause)
        merchant = self.merchants.get(leg.merchant_id)
        try:
            number = E164.parse(leg.caller)
        except InvalidNumber:   # pragma: no cover - stored callers were validated at intake
            number = None
        if number is not None:
            await store_cdr(self.store, self.rater, cdr, destination=number,
                            inbound_tariff=merchant.inbound_tariff if merchant else "",
                            edge_call_id=leg.edge_call_id, merchant_id=leg.merchant_id)
        log.warning("settled leg %s without its call: %s, cause %s (%s)", leg.channel_id,
                    "answered" if answered else "not answered", cause,
                    "Asterisk's record" if record is not None else "no Asterisk record")
        return LastLeg("ended", answered, cause)

    async def settle_stray(self, channel: ari.Channel) -> None:
        """A channel parked in our app that no call owns: hang it up, then settle it."""
        try:
            await self.records.client.hangup(channel.id)
        except ari.AriError as exc:
            log.warning("hang-up of stray %s failed: %s", channel.id, exc)
        leg = await self.store.leg(channel.id)
        if leg is None:
            return
        try:
            record = await self.record_of(leg, wait_s=2.0)
        except (ari.AriError, TimeoutError) as exc:
            log.warning("no leg record of stray %s (%s); settling from what we saw",
                        channel.id, exc)
            record = None
        await self.settle(leg, record, seen_up=channel.state == "Up")
