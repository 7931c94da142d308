"""A consultation its server lost, ended from its legs' ends (``consult_recovery``, pure):
what the runner keeps while it talks, and the record the restart writes."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from pathlib import Path

from advisors.records import ConsultationRecord, EndReason, LegCost, Method
from callback_server import consult_recovery
from callback_server.consult import Begin, CustomerGone, HoldCustomer, Over, ResumeCustomer
from callback_server.consult_recovery import LegEnd, live, recovered
from callback_server.dialer_messages import Answered, Originated
from shared.money import Money
from tests.purity import io_imports
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


def test_nothing_is_kept_until_the_customer_talks_with_an_advisor() -> None:
    call = Call(make_desk())
    assert live(call.state) is None
    call.send(Begin(call.at(0)))
    assert live(call.state) is None              # ringing
    leg = call.ringing()
    call.send(Answered(leg, call.at(5)))
    kept = live(call.state)
    assert kept is not None
    assert (kept.customer_channel, kept.advisor_channel, kept.bridge_id, kept.presence_id) \
        == ("cb-1-01", leg, f"{CID}-br", CID)
    assert kept.over.answered_at == at(5) == kept.over.ended_at
    assert kept.over.end_reason is EndReason.FAILED
    assert [leg_.channel_id for leg_ in kept.over.legs] == [leg]


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
