"""A consultation its server lost, ended from its legs' ends (``consult_recovery``, pure):
what the runner keeps while it talks, and the record the restart writes."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from pathlib import Path

from advisors import presence as pm
from advisors.model import FirstParty
from advisors.records import ConsultationRecord, EndReason, LegCost, Method, RingOutcome, Transfer
from callback_server import consult, consult_recovery
from callback_server.click_to_call import kept as kept_click
from callback_server.consult import (
    T_RETRY,
    T_RING,
    Begin,
    CustomerGone,
    HoldCustomer,
    Over,
    ResumeCustomer,
    StartTransfer,
    TransferRouted,
)
from callback_server.consult_recovery import LegEnd, live, recovered
from callback_server.dialer_messages import (
    Answered,
    ChannelGone,
    Originate,
    Originated,
    Route,
    TimerFired,
)
from shared.money import Money
from tests.purity import io_imports
from tests.unit import test_callback_click_to_call as click_tests
from tests.unit import test_callback_consult_transfer as transfer_tests
from tests.unit.test_callback_consult import CID, Call, at, make_desk


def test_consult_recovery_imports_no_io() -> None:
    assert io_imports(Path(consult_recovery.__file__)) == []


def talking() -> tuple[Call, str]:
    call = Call(make_desk())
    call.send(Begin(call.at(0)))
    leg = call.ringing()
    call.send(Originated(leg, call.at(0.1)))
    call.send(Answered(leg, call.at(5)))
    return call, leg


def test_nothing_is_kept_before_the_first_offer_then_the_ring_then_the_talk() -> None:
    call = Call(make_desk())
    assert live(call.state) is None
    call.send(Begin(call.at(0)))
    leg = call.ringing()
    ringing = live(call.state)
    assert ringing is not None and ringing.offering
    assert (ringing.customer_channel, ringing.advisor_channel, ringing.bridge_id,
            ringing.advisor_id, ringing.presence_id) == ("cb-1-01", leg, None, 1, CID)
    assert ringing.over.answered_at is None and ringing.over.advisor_id == 1
    assert [(r.advisor_id, r.call_id, r.ended_at, r.outcome) for r in ringing.over.rings] \
        == [(1, leg, None, RingOutcome.WITHDRAWN)]
    assert [leg_.channel_id for leg_ in ringing.over.legs] == [leg]
    call.send(Originated(leg, call.at(1)))
    assert live(call.state) == ringing           # nothing new: not rewritten
    call.send(Answered(leg, call.at(5)))
    kept = live(call.state)
    assert kept is not None and not kept.offering
    assert (kept.customer_channel, kept.advisor_channel, kept.bridge_id, kept.presence_id) \
        == ("cb-1-01", leg, f"{CID}-br", CID)
    assert kept.over.answered_at == at(5) == kept.over.ended_at
    assert kept.over.end_reason is EndReason.FAILED
    assert [leg_.channel_id for leg_ in kept.over.legs] == [leg]


def test_an_advisor_being_sought_is_kept_before_the_assignment_runs() -> None:
    call = Call(make_desk())
    state, cmds = consult.transition(call.state, Begin(at(3)))   # the assignment not run
    assert [type(c) for c in cmds] == [consult.RunAssignment]
    kept = live(state)
    assert kept is not None and kept.offering
    assert (kept.advisor_channel, kept.advisor_id, kept.presence_id) == (None, None, CID)
    assert kept.over.rings == () and kept.over.ended_at == at(3)


def test_a_missed_ring_then_the_next_advisor_rung_is_kept_with_both_rings() -> None:
    call = Call(make_desk())
    call.send(Begin(call.at(0)))
    first = call.ringing()
    call.send(TimerFired(T_RING, call.at(20)))        # missed: hung up, the next member
    call.send(ChannelGone(first, 16, call.at(20.1)))
    second = call.ringing()
    kept = live(call.state)
    assert kept is not None and kept.offering and kept.advisor_channel == second
    assert [(r.call_id, r.outcome) for r in kept.over.rings] \
        == [(first, RingOutcome.MISSED), (second, RingOutcome.WITHDRAWN)]
    assert kept.advisor_id == kept.over.advisor_id == kept.over.rings[-1].advisor_id


def queued() -> Call:
    """A customer queued at 0 s for advisor 1, who is on another call."""
    desk = make_desk(advisors=1)
    desk.apply(1, pm.Offered(at(-1), "other"))
    call = Call(desk, members=frozenset({1}), queue_s=60)
    call.send(Begin(call.at(0)))
    return call


def test_a_queued_customer_is_kept_with_nobody_rung() -> None:
    call = queued()
    kept = live(call.state)
    assert kept is not None and kept.offering
    assert (kept.advisor_channel, kept.advisor_id, kept.presence_id) == (None, None, CID)
    assert kept.over.rings == () and kept.over.ended_at == at(0)
    call.send(TimerFired(T_RETRY, call.at(2)))        # tried again, still queued
    assert live(call.state) == kept


def offered() -> tuple[ConsultationRecord, str]:
    """The snapshot kept of a consultation ringing advisor 1, and their leg."""
    call = Call(make_desk())
    call.send(Begin(call.at(0)))
    leg = call.ringing()
    kept = live(call.state)
    assert kept is not None
    return snapshot(kept.over), leg


def test_an_offer_lost_while_the_customer_waits_ends_failed_with_no_talk() -> None:
    kept, leg = offered()
    record = recovered(kept, leg, ended(40, by_reconciler=True),
                       ended(40, by_reconciler=True))
    assert (record.end_reason, record.talk_s, record.answered_at, record.ended_at) \
        == (EndReason.FAILED, 0, None, at(40))
    assert [(r.ended_at, r.outcome) for r in record.rings] \
        == [(at(40), RingOutcome.WITHDRAWN)]


def test_an_offer_whose_customer_left_while_no_server_ran_is_abandoned_then() -> None:
    kept, leg = offered()
    record = recovered(kept, leg, ended(12, by_reconciler=False),
                       ended(40, by_reconciler=True))
    assert (record.end_reason, record.talk_s, record.ended_at) \
        == (EndReason.CUSTOMER_ABANDONED, 0, at(12))
    assert record.rings[0].ended_at == at(12)        # withdrawn when the customer left


def test_a_ring_declined_while_no_server_ran_ends_it_no_advisor() -> None:
    kept, leg = offered()
    record = recovered(kept, leg, ended(40, by_reconciler=True),
                       ended(9, by_reconciler=False))
    assert (record.end_reason, record.talk_s, record.ended_at) \
        == (EndReason.NO_ADVISOR, 0, at(9))


def test_a_queued_customer_lost_has_no_advisor_leg_and_no_ring() -> None:
    kept = live(queued().state)
    assert kept is not None
    record = recovered(snapshot(kept.over), None, ended(30, by_reconciler=True), None)
    assert (record.end_reason, record.talk_s, record.advisor_id, record.rings,
            record.leg_costs) == (EndReason.FAILED, 0, None, (), ())


def test_what_is_kept_changes_with_a_hold_and_not_with_time() -> None:
    call, _ = talking()
    first = live(call.state)
    call.at(30)
    assert live(call.state) == first             # nothing new: not rewritten
    call.send(HoldCustomer(call.at(40)))
    held = live(call.state)
    assert held is not None and held != first
    assert [(h.started_at, h.ended_at) for h in held.over.holds] == [(at(40), None)]
    assert held.over.ended_at == at(40)
    call.send(ResumeCustomer(call.at(50)))
    resumed = live(call.state)
    assert resumed is not None
    assert [(h.started_at, h.ended_at) for h in resumed.over.holds] == [(at(40), at(50))]
    call.send(CustomerGone(call.at(60)))
    assert live(call.state) is None              # over: the runner drops its row


def snapshot(over: Over, advisor_cost: Money | None = None) -> ConsultationRecord:
    return ConsultationRecord(
        consultation_id=over.consultation_id, merchant_id="acme", callback_id="cb-1",
        edge_call_id="edge-1", customer_number="+819012345678", customer_id=None,
        advisor_id=over.advisor_id, group_id=None, method=Method.CODE,
        requested_at=at(0), rings=over.rings, answered_at=over.answered_at,
        holds=over.holds, transfers=over.transfers, ended_at=over.ended_at, talk_s=0,
        end_reason=over.end_reason, customer_call_id="cb-1-01",
        leg_costs=tuple(LegCost(leg.channel_id, "advisor", leg.carrier_id, advisor_cost)
                        for leg in over.legs))


def lost() -> tuple[ConsultationRecord, str]:
    call, leg = talking()
    kept = live(call.state)
    assert kept is not None
    return snapshot(kept.over), leg


def ended(when: float | None, *, by_reconciler: bool) -> LegEnd:
    return LegEnd(None if when is None else at(when), by_reconciler)


def test_both_legs_up_at_the_restart_talked_until_hung_up_and_end_failed() -> None:
    snap, leg = lost()
    made = recovered(snap, leg, ended(95.2, by_reconciler=True),
                     ended(95.25, by_reconciler=True))
    assert made.end_reason is EndReason.FAILED
    assert made.ended_at == at(95.2)
    assert made.talk_s == 91                       # 90.2 s from the answer, started seconds


def test_the_customer_hanging_up_while_the_server_was_away_ends_it_then() -> None:
    snap, leg = lost()
    made = recovered(snap, leg, ended(42.5, by_reconciler=False),
                     ended(95.2, by_reconciler=True))
    assert (made.end_reason, made.ended_at, made.talk_s) == (
        EndReason.CUSTOMER_HANGUP, at(42.5), 38)


def test_the_advisor_hanging_up_first_ends_it_then_even_if_the_customer_left_after() -> None:
    snap, leg = lost()
    made = recovered(snap, leg, ended(50, by_reconciler=False),
                     ended(20, by_reconciler=False))
    assert (made.end_reason, made.ended_at, made.talk_s) == (
        EndReason.ADVISOR_HANGUP, at(20), 15)


def test_no_end_known_bills_nothing_beyond_what_the_record_knew() -> None:
    snap, leg = lost()
    for customer, advisor in ((None, None), (ended(None, by_reconciler=False), None)):
        made = recovered(snap, leg, customer, advisor)
        assert (made.end_reason, made.ended_at, made.talk_s) == (
            EndReason.FAILED, at(5), 0)


def test_an_end_before_what_the_record_knew_is_taken_as_that_moment() -> None:
    """A leg record's clock a little behind the server's: never an end before the
    hold the runner saw."""
    call, leg = talking()
    call.send(HoldCustomer(call.at(40)))
    kept = live(call.state)
    assert kept is not None
    made = recovered(snapshot(kept.over), leg, ended(39.9, by_reconciler=False), None)
    assert (made.ended_at, made.talk_s, made.end_reason) == (
        at(40), 35, EndReason.CUSTOMER_HANGUP)
    assert [(h.started_at, h.ended_at) for h in made.holds] == [(at(40), None)]


def test_a_customer_on_hold_at_the_death_is_recorded_held_to_the_end() -> None:
    """Killed while the customer hears the hold music (out of the bridge, the advisor
    alone in it): the restart hangs up both, the record ends ``failed`` at the first
    hang-up with the hold still open (held to the end) and the talk counted through the
    hold, as the runner counts it; a held customer who hangs up meanwhile ends it
    ``customer_hangup`` then."""
    call, leg = talking()                                    # answered at 5 s
    call.send(HoldCustomer(call.at(40)))
    kept = live(call.state)
    assert kept is not None
    assert (kept.customer_channel, kept.advisor_channel) == ("cb-1-01", leg)
    snap = snapshot(kept.over)
    made = recovered(snap, leg, ended(70, by_reconciler=True), ended(70.4, by_reconciler=True))
    assert (made.end_reason, made.ended_at, made.talk_s) == (EndReason.FAILED, at(70), 65)
    assert [(h.started_at, h.ended_at) for h in made.holds] == [(at(40), None)]
    assert ConsultationRecord.from_json(made.to_json()) == made        # a valid record
    gone = recovered(snap, leg, ended(55, by_reconciler=False), ended(70, by_reconciler=True))
    assert (gone.end_reason, gone.ended_at, gone.talk_s) == (
        EndReason.CUSTOMER_HANGUP, at(55), 50)
    assert [(h.started_at, h.ended_at) for h in gone.holds] == [(at(40), None)]
    left = recovered(snap, leg, ended(70, by_reconciler=True), ended(62, by_reconciler=False))
    assert (left.end_reason, left.ended_at, left.talk_s) == (
        EndReason.ADVISOR_HANGUP, at(62), 57)


def test_the_advisor_legs_cost_comes_from_its_cdr() -> None:
    snap, leg = lost()
    cost = Money(Decimal("0.42"), "USD")
    made = recovered(snap, leg, ended(60, by_reconciler=True),
                     LegEnd(at(60), by_reconciler=True, cost=cost))
    assert [(c.call_id, c.cost) for c in made.leg_costs] == [(leg, cost)]
    priced = recovered(replace(snap, leg_costs=(LegCost(leg, "advisor", "carrier-a",
                                                         Money(Decimal("1"), "USD")),)),
                       leg, None, LegEnd(at(60), by_reconciler=True, cost=cost))
    assert [c.cost for c in priced.leg_costs] == [Money(Decimal("1"), "USD")]


def test_the_record_survives_its_wire_form_as_kept() -> None:
    snap, _ = lost()
    assert ConsultationRecord.from_json(snap.to_json()) == snap


def test_a_ring_during_a_transfer_is_within_what_is_kept() -> None:
    """The second advisor of a consult transfer answers after the hold began: the kept
    record ends no earlier than that ring (a snapshot ending at the hold's start was an
    invalid record, and building it crashed the call-back's job in a stack run)."""
    call, _ = transfer_tests.talking()
    second = transfer_tests.transferring_to_2(call)
    call.send(Answered(second, call.at(14)))
    kept = live(call.state)
    assert kept is not None
    assert kept.over.ended_at == at(14)
    record = snapshot(kept.over)                 # a valid record: no InvalidRecord
    assert [r.ended_at for r in record.rings] == [at(2), at(14)]


def test_an_advisor_first_click_to_call_lost_before_the_customer_answered_has_no_talk() -> None:
    """A web click-to-call whose advisor answered first and waited while the customer
    was dialled: no talk whatever ended it (nothing billed), and the end reason the runner
    would have given: both hung up by the restart ``failed``; the advisor gone first by
    themselves ``no_advisor``; the customer's leg ended first by itself (never answered)
    ``customer_abandoned``. Each a valid record."""
    call = click_tests.Call(FirstParty.ADVISOR)
    click_tests.answered_advisor(call)                  # the advisor answered at 4 s
    kept = kept_click(call.state)
    assert kept is not None
    snap = snapshot(kept.over)
    leg = kept.advisor_channel
    cases = [((30, True), (30.2, True), EndReason.FAILED, at(30)),
             ((30, True), (12, False), EndReason.NO_ADVISOR, at(12)),
             ((20, False), (30, True), EndReason.CUSTOMER_ABANDONED, at(20))]
    for customer, advisor, reason, when in cases:
        made = recovered(snap, leg, ended(customer[0], by_reconciler=customer[1]),
                         ended(advisor[0], by_reconciler=advisor[1]))
        assert (made.end_reason, made.ended_at, made.talk_s, made.answered_at) == (
            reason, when, 0, None)
        assert ConsultationRecord.from_json(made.to_json()) == made


# --- a consult transfer in progress at the death -------------------------------------------


def test_a_transfer_ringing_the_second_advisor_is_kept_with_its_leg_and_presence() -> None:
    """Killed while the second advisor's phone rings (the customer on hold): the kept
    row has their leg and presence, the record has the transfer ``failed`` at the time it
    was asked and their ring ``withdrawn`` (no miss); the restart ends that ring when
    their leg ended and takes the leg's cost from its CDR."""
    call, first = transfer_tests.talking()
    second = transfer_tests.transferring_to_2(call)        # asked at 10 s, rings
    kept = live(call.state)
    assert kept is not None
    assert kept.second == consult_recovery.Second(second, 2, f"{CID}-t1")
    assert kept.over.transfers == (Transfer(at(10), 2, None, "failed"),)
    assert [(r.advisor_id, r.call_id, r.ended_at, r.outcome) for r in kept.over.rings] == [
        (1, first, at(2), RingOutcome.ANSWERED), (2, second, None, RingOutcome.WITHDRAWN)]
    assert [leg.channel_id for leg in kept.over.legs] == [first, second]
    snap = snapshot(kept.over)
    cost = Money(Decimal("0"), "USD")
    made = recovered(snap, first, ended(40, by_reconciler=True), ended(40.1, by_reconciler=True),
                     (second, LegEnd(at(40.2), by_reconciler=True, cost=cost)))
    assert (made.end_reason, made.ended_at, made.talk_s) == (EndReason.FAILED, at(40), 38)
    assert made.transfers == (Transfer(at(10), 2, None, "failed"),)
    assert [(r.advisor_id, r.ended_at, r.outcome) for r in made.rings] == [
        (1, at(2), RingOutcome.ANSWERED), (2, at(40), RingOutcome.WITHDRAWN)]
    assert [(c.call_id, c.cost) for c in made.leg_costs] == [(first, None), (second, cost)]
    assert ConsultationRecord.from_json(made.to_json()) == made
    # their phone stopped ringing by itself while the server was away: the ring ends then
    rang_out = recovered(snap, first, ended(40, by_reconciler=True), None,
                         (second, LegEnd(at(30), by_reconciler=False)))
    assert [r.ended_at for r in rang_out.rings] == [at(2), at(30)]


def test_a_transfer_answered_at_the_death_is_kept_cancelled() -> None:
    """The second advisor answered, the customer on hold: the record's transfer is
    ``cancelled`` (never completed), their ring answered; their presence is kept to end."""
    call, first = transfer_tests.talking()
    second = transfer_tests.transferring_to_2(call)
    call.send(Answered(second, call.at(14)))
    kept = live(call.state)
    assert kept is not None
    assert kept.second == consult_recovery.Second(second, 2, f"{CID}-t1")
    assert kept.over.transfers == (Transfer(at(10), 2, None, "cancelled"),)
    assert [(r.advisor_id, r.ended_at, r.outcome) for r in kept.over.rings] == [
        (1, at(2), RingOutcome.ANSWERED), (2, at(14), RingOutcome.ANSWERED)]
    made = recovered(snapshot(kept.over), first, ended(50, by_reconciler=True),
                     ended(50, by_reconciler=True), (second, ended(50, by_reconciler=True)))
    assert made.transfers == kept.over.transfers and made.end_reason is EndReason.FAILED
    assert ConsultationRecord.from_json(made.to_json()) == made


def test_a_transfer_to_a_number_is_kept_with_its_leg_after_a_carrier_fault() -> None:
    """To a number: the leg ringing now is kept (no advisor, no presence, no ring); the
    leg its first carrier refused is among the record's legs, ended, not kept to hang up."""
    call, first = transfer_tests.talking()
    call.send(StartTransfer(call.at(10), to_number="+81311112222"))
    routing = live(call.state)                           # nothing dialled yet
    assert routing is not None and routing.second == consult_recovery.Second(None, None, None)
    routes = (Route("carrier-a", "PJSIP/+81311112222@carrier-a"),
              Route("carrier-b", "PJSIP/+81311112222@carrier-b"))
    refused = [c for c in call.send(TransferRouted(call.at(10.1), routes))
               if isinstance(c, Originate)][0].channel_id
    ringing = [c for c in call.send(ChannelGone(refused, 38, call.at(11)))
               if isinstance(c, Originate)][0].channel_id
    kept = live(call.state)
    assert kept is not None and kept.second == consult_recovery.Second(ringing, None, None)
    assert kept.over.transfers == (Transfer(at(10), None, "+81311112222", "failed"),)
    assert [r.advisor_id for r in kept.over.rings] == [1]
    assert [leg.channel_id for leg in kept.over.legs] == [refused, first, ringing]
