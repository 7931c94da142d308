"""Calls live at once on one prepaid balance, each metered in slices (billing.meter with
``slice_s``), against a model of the ledger's arithmetic (the real ledger:
tests/integration/test_billing_slices.py): each call connects, holds a slice at a time from
what the others do not hold, is warned, then cut off when no more can be had; the balance
ends at 0 or more and below one more billing unit's price, beside what the cut-offs'
margins left unbilled (released at settlement)."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from billing import meter
from billing.rating import Terms, rate, seconds_affordable, whole_units_s

T0 = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


@dataclass
class Balance:
    """The ledger's arithmetic on one account (``billing.ledger.Ledger``)."""

    terms: Terms
    available: int
    held: dict[int, int] = field(default_factory=dict)
    allowed: dict[int, int] = field(default_factory=dict)
    released: dict[int, int] = field(default_factory=dict)

    def reserve(self, rid: int, at_most_s: int | None) -> meter.Event:
        needed = self.terms.first_unit_yen()
        if self.available < needed:
            return meter.Refused("balance-too-low", self.available, needed)
        allowed = seconds_affordable(self.available, self.terms)
        if at_most_s is not None:
            allowed = min(allowed, whole_units_s(at_most_s, self.terms))
        self.hold(rid, allowed)
        return meter.Reserved(rid, allowed)

    def extend(self, rid: int, at_most_s: int | None, at: datetime) -> meter.Event:
        allowed = seconds_affordable(max(0, self.available) + self.held[rid], self.terms)
        if at_most_s is not None:
            allowed = min(allowed, whole_units_s(at_most_s, self.terms))
        if allowed > self.allowed[rid]:
            self.hold(rid, allowed)
        return meter.Extended(self.allowed[rid], at)

    def hold(self, rid: int, allowed: int) -> None:
        held = rate(allowed, self.terms).total_yen
        self.available -= held - self.held.get(rid, 0)
        self.held[rid], self.allowed[rid] = held, allowed

    def settle(self, rid: int, talk_s: int) -> None:
        charge, held = rate(talk_s, self.terms).total_yen, self.held.pop(rid)
        self.available += held - charge          # below 0: an overrun, from available
        self.released[rid] = max(0, held - charge)


class Calls:
    """The adapters of several calls: timers fire ``late``, an advisor answers
    ``answer_after`` s after their call is ready, a cut-off hangs up at once."""

    def __init__(self, balance: Balance, late: timedelta) -> None:
        self.balance, self.late = balance, late
        self.queue: list[tuple[datetime, int, int, meter.Event]] = []
        self.order = itertools.count()
        self.meters: dict[int, meter.Meter] = {}
        self.answer_after: dict[int, int] = {}
        self.log: dict[int, list[tuple[str, datetime]]] = {}
        self.talk: dict[int, int] = {}

    def start(self, call: int, metered: meter.Meter, at: datetime, answer_after: int) -> None:
        self.meters[call], self.answer_after[call], self.log[call] = metered, answer_after, []
        self.later(at, call, meter.Start())

    def later(self, when: datetime, call: int, event: meter.Event) -> None:
        heapq.heappush(self.queue, (when, next(self.order), call, event))

    def run(self) -> None:
        while self.queue:
            now, _, call, event = heapq.heappop(self.queue)
            self.meters[call], commands = meter.transition(self.meters[call], event)
            for command in commands:
                self.execute(call, now, command)

    def execute(self, call: int, now: datetime, command: meter.Command) -> None:
        match command:
            case meter.Reserve(at_most_s=at_most):
                self.later(now, call, self.balance.reserve(call, at_most))
            case meter.Refuse():
                self.log[call].append(("refused", now))
            case meter.Ready():
                answer = now + timedelta(seconds=self.answer_after[call])
                self.later(answer, call, meter.Connected(answer))
            case meter.SetTimer(due=due, token=token):
                fires = max(due, now) + self.late
                self.later(fires, call, meter.TimerFired(token, fires))
            case meter.Extend(reservation_id=rid, at_most_s=at_most):
                self.later(now, call, self.balance.extend(rid, at_most, now))
            case meter.Warn():
                self.log[call].append(("warned", now))
            case meter.CutOff():
                self.log[call].append(("cut", now))
                self.later(now, call, meter.HungUp(now))
            case meter.Settle(reservation_id=rid, talk_s=talk):
                self.talk[call] = talk
                self.balance.settle(rid, talk)
                self.later(now, call, meter.Settled())


def unit_yen(terms: Terms) -> int:
    """The most one more billing unit costs (the first: at least the minimum charge)."""
    return max(terms.first_unit_yen(), -(-terms.price_per_minute_yen * terms.unit_s // 60))


def share(terms: Terms, balance_yen: int, starts: list[int], late_ms: int,
          slice_s: int | None = 60) -> tuple[Calls, list[meter.Meter]]:
    calls = Calls(Balance(terms, balance_yen), timedelta(milliseconds=late_ms))
    for i, start in enumerate(starts):
        metered = meter.Meter(f"c-{i}", warn_before_s=60, cutoff_margin_s=1, recheck_s=5,
                              slice_s=slice_s)
        calls.start(i, metered, T0 + timedelta(seconds=start), answer_after=3)
    calls.run()
    return calls, list(calls.meters.values())


def test_two_calls_on_a_balance_for_270_s_are_each_warned_and_cut_off() -> None:
    """900 yen at 200 yen a minute by the second pays for 270 s: each call holds 120 s
    (the warning's minute and a slice), the first call's check takes the last 30 s, so the
    second is warned 60 s into its talk and cut off at 120 s, the first at 150 s; the
    balance ends at 0."""
    terms = Terms(200, unit_s=1)
    calls, meters = share(terms, 900, [0, 2], late_ms=200)
    assert [m.allowed_s for m in meters] == [150, 120]
    assert [m.phase for m in meters] == [meter.Phase.DONE, meter.Phase.DONE]
    for call, (allowed, answered) in enumerate([(150, 3), (120, 5)]):
        [warned, cut] = calls.log[call]
        assert warned == ("warned", T0 + timedelta(seconds=answered + allowed - 60 + 0.2))
        assert cut == ("cut", T0 + timedelta(seconds=answered + allowed - 1 + 0.2))
        assert calls.talk[call] == allowed
    assert calls.balance.available == 0 and calls.balance.held == {}


def test_without_slices_the_first_call_holds_all_and_the_second_is_refused() -> None:
    calls, meters = share(Terms(200, unit_s=1), 900, [0, 2], late_ms=200, slice_s=None)
    assert [m.allowed_s for m in meters] == [270, 0]
    assert [e for e, _ in calls.log[1]] == ["refused"]


def test_a_slice_rounds_up_to_a_whole_billing_unit() -> None:
    """By the minute with 30 s free, a first hold of 60 + 45 s is 30 s and two whole
    minutes (what its price pays anyway), each extension a minute more: 1000 yen at 100
    yen a minute pays for ten minutes, five for each of two calls."""
    terms = Terms(100, unit_s=60, grace_s=30)
    calls, meters = share(terms, 1000, [0, 0], late_ms=0, slice_s=45)
    assert [m.allowed_s for m in meters] == [30 + 300, 30 + 300]
    assert [calls.log[i][0] for i in (0, 1)] == [
        ("warned", T0 + timedelta(seconds=3 + 330 - 60))] * 2
    assert calls.balance.available == 0 and calls.talk == {0: 329, 1: 329}


terms_st = st.builds(Terms, price_per_minute_yen=st.integers(30, 600),
                     unit_s=st.sampled_from([1, 2, 10, 30, 60]), grace_s=st.integers(0, 60),
                     minimum_yen=st.integers(0, 500), max_talk_s=st.just(86_400))


@settings(max_examples=400, deadline=None)
@given(terms=terms_st, balance_yen=st.integers(0, 5000),
       starts=st.lists(st.integers(0, 200), min_size=2, max_size=4),
       late_ms=st.integers(0, 499), slice_s=st.integers(1, 180))
def test_calls_sharing_a_balance_use_it_up_within_one_billing_unit(
        terms: Terms, balance_yen: int, starts: list[int], late_ms: int,
        slice_s: int) -> None:
    calls, meters = share(terms, balance_yen, starts, late_ms, slice_s)
    balance = calls.balance
    connected = [i for i, m in enumerate(meters) if m.reservation_id is not None]
    for i in connected:
        assert meters[i].phase is meter.Phase.DONE
        events = [e for e, _ in calls.log[i]]
        assert events == ["warned", "cut"], events      # warned first, then cut off
        assert calls.talk[i] <= meters[i].allowed_s     # never past its hold
        # what the cut-off's margin leaves unbilled (none when a unit is over 1 s)
        margin = meters[i].allowed_s - 1
        assert balance.released[i] <= (rate(meters[i].allowed_s, terms).total_yen
                                       - rate(max(0, margin), terms).total_yen)
    for i, m in enumerate(meters):
        if m.reservation_id is None:
            assert [e for e, _ in calls.log[i]] == ["refused"]
    assert balance.held == {}
    # never overdrawn; below one more billing unit left, beside what the margins released
    assert balance.available >= 0
    if connected:
        assert balance.available < unit_yen(terms) + sum(balance.released.values())
    else:
        assert balance.available == balance_yen < terms.first_unit_yen()
