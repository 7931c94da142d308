"""How a consultation's events reach its prepaid meter (pure): the session's routing
between the consult machine (:mod:`callback_server.consult`) and the meter
(:mod:`billing.meter`), and the meter's commands in the call's terms.

* the consult machine bridging customer and advisor (``CreateBridge``) is the meter's
  ``Connected``, at the advisor's answer (the start of the record's talk time);
* its ``Over`` is the meter's ``HungUp`` at the record's end, so the talk seconds the
  meter settles are the record's (:func:`callback_server.consult_runner.talk_seconds`:
  started seconds whole, from the answer to the end);
* the meter's timers are the round's named timers ``meter:<token>``.

The meter reserves in slices (``SLICE_S``): first the warning's minute and a slice, then
a slice more at each check, so calls live at once on one balance share it (each holds a
slice at a time, from what the others do not hold) and each is warned and cut off when
no more can be had. The warning (``WARNING``, 「残り一分です」) plays ``WARN_BEFORE_S``
before the reserved talk time ends; the cut-off (``CUTOFF_MARGIN_S`` before it, for a late
timer) is the consult machine's ``ForceEnd`` with reason ``cut_off``: the advisor's leg is
hung up and the talk ends there, so it never runs past what the reservation holds; the
customer hears ``CUTOFF``, then their leg is hung up (BYE). Once warned the meter asks the
ledger again every ``RECHECK_S``, so a top-up made after the warning (a deposit, a card)
moves the cut-off within that time.
"""

from __future__ import annotations

from datetime import datetime

from advisors.records import EndReason
from billing import meter
from callback_server import consult
from callback_server.dialer_messages import CreateBridge

#: the warning says 「残り一分です」 / "one minute remaining"
WARN_BEFORE_S = 60
#: the cut-off comes this much before the reserved end (a timer may fire late)
CUTOFF_MARGIN_S = 1
#: how often a warned meter looks for a top-up
RECHECK_S = 5
#: the talk each step of a reservation adds (the first holds the warning's and this)
SLICE_S = 60
WARNING = ("sound:cbgw/balance-warning",)
CUTOFF = "sound:cbgw/balance-cutoff"
TIMER_PREFIX = "meter:"


def new_meter(consultation_id: str) -> meter.Meter:
    return meter.Meter(consultation_id, warn_before_s=WARN_BEFORE_S,
                       cutoff_margin_s=CUTOFF_MARGIN_S, recheck_s=RECHECK_S,
                       slice_s=SLICE_S)


def meter_event(cmd: consult.Command, state: consult.ConsultState) -> meter.Event | None:
    """The meter's event for a command of the consult machine (None: not the meter's)."""
    match cmd:
        case CreateBridge() if state.answered_at is not None:
            return meter.Connected(state.answered_at)
        case consult.Over(ended_at=ended):
            return meter.HungUp(ended)
        case _:
            return None


def cut_off(at: datetime) -> consult.ForceEnd:
    """The meter's ``CutOff`` for the consult machine: the advisor's leg goes at once
    (the talk ends here), the customer hears ``CUTOFF``, then is hung up."""
    return consult.ForceEnd(at, EndReason.CUT_OFF, CUTOFF)


def timer_name(token: int) -> str:
    return f"{TIMER_PREFIX}{token}"


def timer_event(name: str, at: datetime) -> meter.TimerFired | None:
    """The meter's ``TimerFired`` for a round timer ``meter:<token>`` (None: another)."""
    token = name.removeprefix(TIMER_PREFIX)
    if not name.startswith(TIMER_PREFIX) or not token.isdigit():
        return None
    return meter.TimerFired(int(token), at)


def delay_s(due: datetime, now: datetime) -> float:
    """How long a timer due at ``due`` waits from ``now`` (never negative)."""
    return max(0.0, (due - now).total_seconds())
