"""A call whose customer answered while the events websocket was down and whose Asterisk
then died with the leg up: the reconnect finds the leg gone with no hangup record, only
Asterisk's logged answer (``LegRecord(answered_at, ended_at=None)``)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from decimal import Decimal

from callback_server.call_ports import CallContext, utcnow
from callback_server.call_runner import CallRunner
from callback_server.dialer_messages import Finish, Job, Reason, RetryPolicy, Route
from callback_server.ivr_flow import load_named
from callback_server.legrecord import LegRecord
from callback_server.testing import FakeAri, FixedRater, MemoryStore
from shared.phone import E164

CUSTOMER = Route("carrier-b", "PJSIP/819012345678@carrier-b")


class AnswerOnly:
    """Asterisk's records: the leg's answer alone (its hangup handler never ran)."""

    def __init__(self, answered_at: datetime) -> None:
        self.answered_at = answered_at

    async def fetch(self, channel_id: str, started_at: datetime) -> LegRecord | None:
        return LegRecord(self.answered_at, None, 0)


async def settle() -> None:
    for _ in range(40):
        await asyncio.sleep(0)


async def test_a_logged_answer_completes_the_call_billed_until_the_websocket_was_lost(
        ) -> None:
    asterisk, store = FakeAri(), MemoryStore()
    job = Job(callback_id="cb-7", merchant_id="acme", destination=E164("819012345678"),
              caller_id=E164("81120123456"), ring_timeout_s=30,
              policy=RetryPolicy(3, (30,)), attempt_no=1, leg_seq=0)
    runner = CallRunner(job, CallContext("edge-7", "ntt-freedial", load_named("order")),
                        client=asterisk, router=asterisk.router, store=store,
                        rater=FixedRater())
    task = asyncio.create_task(runner.run((CUSTOMER,)))
    await settle()
    assert list(asterisk.channels) == ["cb-7-01"]   # ringing
    answered_at = utcnow()                          # answered, unseen; Asterisk dies
    runner.records = AnswerOnly(answered_at)
    asterisk.channels.clear()
    lost_at = answered_at + timedelta(milliseconds=100)
    await asyncio.sleep(0.2)
    await runner.resync(lost_at)
    outcome = await asyncio.wait_for(task, 2)

    assert outcome == Finish("completed", Reason.ANSWERED, 1)
    [(cdr, *_)] = store.cdrs
    assert cdr.disposition == "answered" and cdr.answered_at == answered_at
    assert cdr.ended_at == lost_at and cdr.duration_s == Decimal("0.100")
