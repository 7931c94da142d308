"""A consultation whose server died while it ran, ended cleanly after: the pure part.

A killed callback server leaves its talking consultations bridged in Asterisk (the
bridge and both legs stay in the Stasis application), with no runner, no meter and no
record. The runner therefore keeps each talking consultation in ``consult_live``
(:mod:`callback_server.consult_live`): :func:`live` is what it keeps, rewritten when it
changes (an answer, a hold, a transfer). After the restart the reconciler
(:mod:`callback_server.consult_live`) ends every such consultation no running call owns:
a leg still up is hung up then; each leg's end is what Asterisk recorded.
:func:`recovered` then writes the record's end from those ends:

* a leg that ended by itself while the server was away ended the consultation: the
  first of them (the customer's on a tie) gives ``ended_at`` and the reason,
  ``customer_hangup`` or ``advisor_hangup``; the talk stopped there, whatever the other
  leg did after, alone in the bridge;
* both legs still up when the server came back: the consultation talked until the
  reconciler hung them up (the first end), and ends ``failed`` (the system ended it);
* no end known (Asterisk lost the legs too): the last moment the record knew, as the
  leg settler bills an answered leg of unknown end (nothing beyond what was known).

``talk_s`` is the whole seconds from the answer to that end, started seconds counted,
like a consultation that ended in the runner; the prepaid settlement and the postpaid
charge are made from it.

A consult transfer in progress at the death (its second party's leg ringing, or answered
with the customer on hold) is kept with it (:class:`Second`): the record has the
transfer, ``failed`` if the second party had not answered, else ``cancelled`` (it was
never completed), and, for a second advisor still ringing, their ring ``withdrawn``
(no miss), ended when their leg ended; the leg's cost is taken from its CDR like the
advisor's. The reconciler hangs that leg up and ends the second advisor's presence
(ringing: back to standby; talking: after-call work).

A consultation not talking yet is kept from before its first assignment (:func:`offer`):
the advisor being rung (their leg, their ring open in the snapshot, ``withdrawn``) or the
customer queued or an advisor being sought (nobody rung), no answer, no bridge. A
restart withdraws the offer (the assignment cancelled, and every ring under its id
ended: the advisor back to standby, no miss; the customer out of the queue) and hangs
the legs up; the record has no talk and ends ``customer_abandoned`` if
the customer's leg ended first by itself, ``no_advisor`` if the advisor's did (a ring
declined while no server ran), else ``failed``; the ring ends when its leg ended. A web
click-to-call whose customer was rung first and answered is kept so while its advisor
rings.

A web click-to-call whose advisor (rung first) answered and waits while the customer is
dialled is kept too, with no answer in its record (the talk begins at the customer's
answer: :func:`callback_server.click_to_call.kept`). Its record then has no talk
(nothing is billed) and ends as the runner would have ended it: ``no_advisor`` if the
advisor hung up first while the server was away, ``customer_abandoned`` if the
customer's leg ended first by itself (never answered), else ``failed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime

from advisors.records import ConsultationRecord, EndReason, Hold, Ring, RingOutcome, Transfer
from callback_server.consult import ConsultState, Outcome, Over, Phase
from shared.money import Money


@dataclass(frozen=True, slots=True)
class Second:
    """A consult transfer's second party at the moment it was kept: their leg (None:
    not dialled yet), and the second advisor with the id their presence is under (None:
    a transfer to a number)."""

    channel_id: str | None
    advisor_id: int | None = None
    presence_id: str | None = None


@dataclass(frozen=True, slots=True)
class Live:
    """A consultation as ``consult_live`` keeps it: its legs and bridge, its advisor (and
    the id their presence is under), and its record's parts as known now (``over``:
    ended ``failed`` at the latest moment the state knows, its legs the advisor leg, then
    a transfer's second party's, last; a transfer in progress in its transfers and rings
    as a restart would end it); ``second``: a transfer's second party.

    An offer (:attr:`offering`: no bridge yet) has the advisor being rung and their leg
    (None: queued, nobody rung), their ring open and ``withdrawn`` in ``over``."""

    customer_channel: str
    advisor_channel: str | None
    bridge_id: str | None
    advisor_id: int | None
    presence_id: str
    over: Over
    second: Second | None = None

    @property
    def offering(self) -> bool:
        """Nobody talks yet: an advisor is rung, or the customer is queued."""
        return self.bridge_id is None


def live(state: ConsultState) -> Live | None:
    """What to keep of ``state``: the customer talking with an advisor, an advisor being
    rung for them or the customer queued (:func:`offer`); None otherwise."""
    if state.phase in (Phase.ASSIGNING, Phase.RINGING, Phase.QUEUED) \
            and state.end_reason is None and state.sought_at is not None:
        return offer(state)
    leg = state.live_leg
    advisor = state.connected_advisor
    if state.phase is not Phase.TALKING or leg is None or advisor is None \
            or state.answered_at is None or state.bridge_id is None:
        return None
    holds = state.holds
    if state.held_since is not None:
        holds = (*holds, Hold(state.held_since, None))
    legs, rings, transfers, second = (*state.legs, leg), state.rings, state.transfers, None
    t = state.transferring
    if t is not None:
        xleg = t.leg if t.leg is not None and not t.leg.ended else None
        outcome = Outcome.CANCELLED if t.answered else Outcome.FAILED
        transfers = (*transfers, Transfer(t.at, t.to_advisor_id, t.to_number, str(outcome)))
        presence = None if t.assignment is None else t.assignment.consultation_id
        second = Second(None if xleg is None else xleg.channel_id, t.to_advisor_id, presence)
        if xleg is not None:
            legs = (*legs, xleg)
            if t.to_advisor_id is not None and not t.answered:
                rings = (*rings, Ring(t.to_advisor_id, xleg.channel_id, xleg.started_at,
                                      None, RingOutcome.WITHDRAWN))
    known = [state.answered_at, *(h.started_at for h in holds),
             *(h.ended_at for h in holds if h.ended_at is not None),
             *(t.at for t in transfers), *(r.started_at for r in rings),
             *(r.ended_at for r in rings if r.ended_at is not None)]
    over = Over(state.request.consultation_id, advisor, rings, state.answered_at,
                max(known), EndReason.FAILED, legs, holds, transfers)
    return Live(state.request.customer_channel, leg.channel_id, state.bridge_id, advisor,
                state.presence_id or state.request.consultation_id, over, second)


def offer(state: ConsultState) -> Live:
    """An advisor being rung (their ring open, ``withdrawn`` as a restart ends it; their
    leg the record's last), or the customer queued or an advisor being sought (kept
    before each assignment runs: whoever it offers the call to is found by the
    assignment's id at the restart): no answer, the assignment's id."""
    leg, advisor = state.live_leg, state.advisor
    ringing = state.phase is Phase.RINGING and advisor is not None
    legs, rings = state.legs, state.rings
    if ringing and leg is not None and advisor is not None:
        legs = (*legs, leg)
        rings = (*rings, Ring(advisor, leg.channel_id, state.ring_started or leg.started_at,
                              None, RingOutcome.WITHDRAWN))
    known = [*(g.started_at for g in legs), *(r.started_at for r in rings),
             *(r.ended_at for r in rings if r.ended_at is not None),
             *(t for t in (state.sought_at, state.queued_at, state.ring_started)
               if t is not None)]
    last_rung = advisor if ringing else (rings[-1].advisor_id if rings else None)
    over = Over(state.request.consultation_id, last_rung, rings, None, max(known),
                EndReason.FAILED, legs)
    return Live(state.request.customer_channel,
                None if leg is None or not ringing else leg.channel_id, None,
                advisor if ringing else None, state.assignment.consultation_id, over)


@dataclass(frozen=True, slots=True)
class LegEnd:
    """How one leg of a lost consultation ended: when (None: not known), whether the
    reconciler hung it up (it was still up when the server came back), and what the
    leg cost (its CDR's carrier cost)."""

    ended_at: datetime | None
    by_reconciler: bool
    cost: Money | None = None


def recovered(snapshot: ConsultationRecord, advisor_channel: str | None,
              customer: LegEnd | None,
              advisor: LegEnd | None, second: tuple[str, LegEnd | None] | None = None
              ) -> ConsultationRecord:
    """The record of a lost consultation: ``snapshot`` (written while it talked) ended
    by its legs' ends (see the module docstring); ``second``: a transfer's second
    party's leg and its end."""
    answered_at = snapshot.answered_at
    reasons = (EndReason.CUSTOMER_HANGUP, EndReason.ADVISOR_HANGUP) if answered_at \
        else (EndReason.CUSTOMER_ABANDONED, EndReason.NO_ADVISOR)
    by_party = [(end.ended_at, reason) for end, reason in zip((customer, advisor), reasons,
                                                              strict=True)
                if end is not None and end.ended_at is not None and not end.by_reconciler]
    known = [end.ended_at for end in (customer, advisor)
             if end is not None and end.ended_at is not None]
    if by_party:
        ended_at, reason = min(by_party, key=lambda e: e[0])
    elif known:
        ended_at, reason = min(known), EndReason.FAILED
    else:
        ended_at, reason = snapshot.ended_at, EndReason.FAILED
    ended_at = max(ended_at, snapshot.ended_at)     # never before what the record knew
    talk_s = 0 if answered_at is None \
        else max(0, math.ceil((ended_at - answered_at).total_seconds()))
    ends = {} if advisor_channel is None else {advisor_channel: advisor}
    if second is not None:
        ends[second[0]] = second[1]
    costs = tuple(replace(c, cost=end.cost) if c.cost is None
                  and (end := ends.get(c.call_id)) is not None else c
                  for c in snapshot.leg_costs)
    rings = tuple(_ring_ended(r, ends.get(r.call_id), ended_at) for r in snapshot.rings)
    return replace(snapshot, ended_at=ended_at, end_reason=reason, talk_s=talk_s,
                   leg_costs=costs, rings=rings)


def _ring_ended(ring: Ring, end: LegEnd | None, ended_at: datetime) -> Ring:
    """A ring still open in the snapshot (a transfer's second advisor) ends when their
    leg ended (the record's end at the latest; the record's end when not known)."""
    if ring.ended_at is not None:
        return ring
    when = ended_at if end is None or end.ended_at is None else min(end.ended_at, ended_at)
    return replace(ring, ended_at=max(when, ring.started_at))

