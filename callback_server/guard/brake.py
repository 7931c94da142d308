"""The global anomaly brake. Pure.

A spoofing campaign shows up as many *new* numbers (never confirmed) that
ring and never press 1. When more than ``threshold`` distinct new numbers
were left unconfirmed within ``window_s`` (default 20 in 10 minutes),
call-backs to new numbers pause (``brake_new_numbers``) and an alert goes
out. Known numbers are not affected. The brake lifts by itself as the window
slides past the burst; the alert says so when it engages.

The count is only needed to tell whether it exceeds the threshold, so the database
counts distinct numbers up to :attr:`BrakeSettings.limit` (threshold + 1,
``guard_brake_count``, migration 1030) instead of every round of the window: a count
equal to the limit means "more than the threshold", which is all the messages say.
``[guard.brake] enabled = false`` turns the brake off: nothing is counted at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from callback_server.guard.reasons import Refusal, Verdict


@dataclass(frozen=True, slots=True)
class BrakeSettings:
    threshold: int = 20
    window_s: int = 600
    enabled: bool = True

    @property
    def limit(self) -> int:
        """How far the database counts: one more than the threshold is enough to decide."""
        return self.threshold + 1


def bounded(count: int, s: BrakeSettings) -> int:
    """``count`` as the database's bounded count gives it (at most :attr:`limit`)."""
    return min(count, s.limit)


def engaged(unconfirmed_new_numbers: int, s: BrakeSettings) -> bool:
    """Whether the brake holds, on the full count or the count bounded at ``s.limit``
    (the same answer: both exceed the threshold or neither does)."""
    return s.enabled and unconfirmed_new_numbers > s.threshold


def described(s: BrakeSettings) -> str:
    """What an engaged brake says: true whether its count was bounded or not."""
    return f"more than {s.threshold} new numbers unconfirmed in {s.window_s} s"


def check(known: bool, unconfirmed_new_numbers: int, s: BrakeSettings) -> Verdict | None:
    if known or not engaged(unconfirmed_new_numbers, s):
        return None
    return Verdict(Refusal.BRAKE_NEW_NUMBERS, described(s))
