"""Calls live at once on one prepaid balance, each metered in slices (billing.meter with
``slice_s``) on the real ledger (PostgreSQL) and the real clock, concurrently: each
connects, holds a slice at a time from what the others do not hold, is warned, then cut
off when no more can be had; the balance ends at 0 or more and below one more billing
unit's price beside what the cut-offs' margins released, nothing held."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import pytest

from billing import meter
from billing.ledger import Balance, Ledger, Refusal
from billing.rating import Terms, rate
from tests.integration import billing_db

pytestmark = pytest.mark.integration
pool, clean = billing_db.fixtures()
#: 10 yen a second by the second: a second is a billing unit
TERMS = Terms(price_per_minute_yen=600, unit_s=1)


@dataclass
class Call:
    """One call's adapter: the advisor answers at once, timers on the event loop, a
    cut-off hangs up at once."""

    ledger: Ledger
    account: str
    clock: meter.Meter
    events: asyncio.Queue[meter.Event] = field(default_factory=asyncio.Queue)
    heard: list[tuple[str, float]] = field(default_factory=list)
    connected: float = 0.0
    settled: int | None = None

    async def run(self) -> None:
        self.events.put_nowait(meter.Start())
        while self.clock.phase is not meter.Phase.DONE:
            self.clock, commands = meter.transition(self.clock, await self.events.get())
            for command in commands:
                await self.execute(command)

    def since(self) -> float:
        return asyncio.get_running_loop().time() - self.connected

    async def execute(self, command: meter.Command) -> None:
        now = datetime.now(UTC)
        match command:
            case meter.Reserve(consultation_id=cid, at_most_s=at_most):
                got = await self.ledger.reserve("acme", self.account, cid, TERMS,
                                                at_most_s=at_most)
                self.events.put_nowait(
                    meter.Refused(got.reason, got.available_yen, got.needed_yen)
                    if isinstance(got, Refusal) else meter.Reserved(got.id, got.allowed_s))
            case meter.Refuse():
                self.heard.append(("refused", 0.0))
            case meter.Ready():
                self.connected = asyncio.get_running_loop().time()
                self.events.put_nowait(meter.Connected(now))
            case meter.SetTimer(due=due, token=token):
                asyncio.get_running_loop().call_later(
                    max(0.0, (due - now).total_seconds()),
                    lambda: self.events.put_nowait(meter.TimerFired(token, datetime.now(UTC))))
            case meter.Extend(reservation_id=rid, at_most_s=at_most):
                got = await self.ledger.extend("acme", rid, at_most_s=at_most)
                self.events.put_nowait(meter.Extended(got.allowed_s, datetime.now(UTC)))
            case meter.Warn():
                self.heard.append(("warned", self.since()))
            case meter.CutOff():
                self.heard.append(("cut", self.since()))
                self.events.put_nowait(meter.HungUp(datetime.now(UTC)))
            case meter.Settle(reservation_id=rid, talk_s=talk):
                await self.ledger.settle("acme", rid, talk)
                self.settled = talk
                self.events.put_nowait(meter.Settled())
            case meter.Ignored():
                pass


def sliced(ledger: Ledger, account: str, name: str) -> Call:
    return Call(ledger, account, meter.Meter(name, warn_before_s=2, cutoff_margin_s=1,
                                             recheck_s=1, slice_s=2))


async def test_two_meters_share_one_balance_until_it_is_used(clean: asyncpg.Pool) -> None:
    """130 yen pays for 13 s: each call first holds 4 s (a 2 s warning and a 2 s slice),
    then 2 s more at each check while the balance lasts; both are warned, both cut off,
    the balance ends within one second's price beside the seconds the cut-offs' margins
    left unbilled, nothing held."""
    ledger = Ledger(clean)
    await ledger.deposit("acme", "family", 130, "test", "bank transfer")
    calls = [sliced(ledger, "family", f"call-{i}") for i in range(2)]
    await asyncio.wait_for(asyncio.gather(*(c.run() for c in calls)), 60)
    allowed = [c.clock.allowed_s for c in calls]
    assert sum(allowed) == 13 and min(allowed) >= 4, allowed
    for call in calls:
        assert [e for e, _ in call.heard] == ["warned", "cut"], call.heard
        (_, warned), (_, cut) = call.heard
        assert call.clock.allowed_s - 2 - 0.5 <= warned <= call.clock.allowed_s - 2 + 1
        assert call.clock.allowed_s - 1 <= cut, call.heard
        assert call.settled is not None and call.settled <= call.clock.allowed_s
    end = await ledger.balance("acme", "family")
    charged = sum(rate(c.settled or 0, TERMS).total_yen for c in calls)
    released = sum(rate(c.clock.allowed_s, TERMS).total_yen for c in calls) - charged
    # below one more second's price (10 yen), beside what the cut-offs' margins released
    assert end == Balance(130 - charged, 0) and 0 <= end.available_yen < 10 + released
    extended = await clean.fetchval("SELECT count(*) FROM billing_reservation_extensions")
    assert extended >= 2                    # the balance was shared slice by slice


async def test_a_third_call_is_refused_once_the_slices_hold_the_balance(
        clean: asyncpg.Pool) -> None:
    ledger = Ledger(clean)
    await ledger.deposit("acme", "family", 80, "test", "bank transfer")
    calls = [sliced(ledger, "family", f"call-{i}") for i in range(3)]
    await asyncio.wait_for(asyncio.gather(*(c.run() for c in calls)), 60)
    assert sorted(c.clock.allowed_s for c in calls) == [0, 4, 4]
    assert sorted(e for c in calls for e, _ in c.heard) == [
        "cut", "cut", "refused", "warned", "warned"]
    assert await ledger.balance("acme", "family") == Balance(0, 0)
