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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime

from advisors.records import ConsultationRecord, EndReason, Hold
from callback_server.consult import ConsultState, Over, Phase
from shared.money import Money


@dataclass(frozen=True, slots=True)
class Live:
    """A talking consultation as ``consult_live`` keeps it: its legs and bridge, its
    advisor (and the id their presence is under), and its record's parts as known now
    (``over``: ended ``failed`` at the latest moment the state knows, its legs the
    advisor leg last)."""

    customer_channel: str
    advisor_channel: str
    bridge_id: str
    advisor_id: int
    presence_id: str
    over: Over


def live(state: ConsultState) -> Live | None:
    """What to keep of ``state``: None unless the customer talks with an advisor."""
    leg = state.live_leg
    advisor = state.connected_advisor
    if state.phase is not Phase.TALKING or leg is None or advisor is None \
            or state.answered_at is None or state.bridge_id is None:
        return None
    holds = state.holds
    if state.held_since is not None:
        holds = (*holds, Hold(state.held_since, None))
    known = [state.answered_at, *(h.started_at for h in holds),
             *(h.ended_at for h in holds if h.ended_at is not None),
             *(t.at for t in state.transfers),
             *(r.ended_at for r in state.rings if r.ended_at is not None)]
    over = Over(state.request.consultation_id, advisor, state.rings, state.answered_at,
                max(known), EndReason.FAILED, (*state.legs, leg), holds, state.transfers)
    return Live(state.request.customer_channel, leg.channel_id, state.bridge_id, advisor,
                state.presence_id or state.request.consultation_id, over)


@dataclass(frozen=True, slots=True)
class LegEnd:
    """How one leg of a lost consultation ended: when (None: not known), whether the
    reconciler hung it up (it was still up when the server came back), and what the
    leg cost (its CDR's carrier cost)."""

    ended_at: datetime | None
    by_reconciler: bool
    cost: Money | None = None


def recovered(snapshot: ConsultationRecord, advisor_channel: str, customer: LegEnd | None,
              advisor: LegEnd | None) -> ConsultationRecord:
    """The record of a lost consultation: ``snapshot`` (written while it talked) ended
    by its legs' ends (see the module docstring)."""
    answered_at = snapshot.answered_at
    assert answered_at is not None, "only talking consultations are kept"
    by_party = [(end.ended_at, reason) for end, reason in
                ((customer, EndReason.CUSTOMER_HANGUP), (advisor, EndReason.ADVISOR_HANGUP))
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
    talk_s = max(0, math.ceil((ended_at - answered_at).total_seconds()))
    costs = tuple(replace(c, cost=advisor.cost) if c.call_id == advisor_channel
                  and advisor is not None and c.cost is None else c
                  for c in snapshot.leg_costs)
    return replace(snapshot, ended_at=ended_at, end_reason=reason, talk_s=talk_s,
                   leg_costs=costs)

