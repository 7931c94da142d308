"""Per-number velocity limits and the unconfirmed-call-back lockout. Pure.

Counted per destination number, on the guard's clock:

* **requests** accepted for the number (``guard_callbacks``): at most
  ``concurrent`` queued or dialling at once, ``per_hour`` in the last hour,
  ``per_day`` in the last 24 h, and at least ``min_gap_s`` after the previous
  one. Refused requests do not count, so a flood cannot keep itself going.
* **unconfirmed rounds** (``guard_rounds``): every round that rang the number
  and ended without the customer pressing 1. ``lock_after`` of them since the
  last confirmation (within ``lock_window_s``) lock the number for
  ``lock_s``; ``block_after`` within ``block_window_s`` put it on the block
  list for review. One per call-back and attempt number; a round its job does
  not count (every leg refused at admission, or a shutdown before the first:
  queued again under the same attempt number) is none, so the round that
  follows under that number is the one recorded (``QueueStore.finish``).

*Known* numbers (confirmed at least once, or on the allow list) get
``known`` limits; all others the stricter ``unknown`` ones (Kazoo CCCP calls
back only listed caller IDs; we call unknown ones back, carefully).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from callback_server.guard.reasons import Refusal, Verdict


@dataclass(frozen=True, slots=True)
class Limits:
    concurrent: int = 1
    per_hour: int = 3
    per_day: int = 6
    min_gap_s: int = 120


@dataclass(frozen=True, slots=True)
class VelocitySettings:
    known: Limits = field(default_factory=Limits)
    unknown: Limits = field(default_factory=lambda: Limits(1, 2, 3, 300))
    lock_after: int = 2
    lock_window_s: int = 86_400
    lock_s: int = 86_400
    block_after: int = 5
    block_window_s: int = 30 * 86_400


@dataclass(frozen=True, slots=True)
class NumberHistory:
    """What the database knows about a number, as of ``now``."""

    known: bool = False
    active: int = 0                      # requests queued or dialling
    last_accepted_at: datetime | None = None
    accepted_hour: int = 0
    accepted_day: int = 0
    locked_until: datetime | None = None

    def accepted(self, now: datetime) -> NumberHistory:
        """The history after one more request was accepted at ``now`` (what the
        next request for the number in the same intake batch is judged on)."""
        # Not dataclasses.replace: this runs for every accepted request, and replace()
        # costs several times the constructor.
        return NumberHistory(known=self.known, active=self.active + 1, last_accepted_at=now,
                             accepted_hour=self.accepted_hour + 1,
                             accepted_day=self.accepted_day + 1, locked_until=self.locked_until)


def check_intake(h: NumberHistory, now: datetime, s: VelocitySettings) -> Verdict | None:
    """May a new call-back request for this number be accepted now?"""
    if h.locked_until is not None and now < h.locked_until:
        return Verdict(Refusal.NUMBER_LOCKED, f"locked until {h.locked_until.isoformat()}")
    limits, who = (s.known, "known") if h.known else (s.unknown, "unknown")
    if h.active >= limits.concurrent:
        return Verdict(Refusal.VELOCITY_CONCURRENT,
                       f"{h.active} call-back(s) already pending ({who} limit "
                       f"{limits.concurrent})")
    if h.last_accepted_at is not None:
        gap = (now - h.last_accepted_at).total_seconds()
        if gap < limits.min_gap_s:
            return Verdict(Refusal.VELOCITY_GAP, f"{gap:.0f} s since the last call-back "
                                                 f"({who} minimum {limits.min_gap_s} s)")
    if h.accepted_hour >= limits.per_hour:
        return Verdict(Refusal.VELOCITY_HOURLY, f"{h.accepted_hour} in the last hour "
                                                f"({who} limit {limits.per_hour})")
    if h.accepted_day >= limits.per_day:
        return Verdict(Refusal.VELOCITY_DAILY, f"{h.accepted_day} in the last 24 h "
                                               f"({who} limit {limits.per_day})")
    return None


def check_locked(locked_until: datetime | None, now: datetime) -> Verdict | None:
    """Before every round: a lock set since intake stops the remaining rounds."""
    if locked_until is not None and now < locked_until:
        return Verdict(Refusal.NUMBER_LOCKED, f"locked until {locked_until.isoformat()}")
    return None


@dataclass(frozen=True, slots=True)
class LockAction:
    lock_until: datetime | None = None
    block: bool = False


def acts_sql(recent: str, window: str, locked_until: str, now: str, lock_after: str,
             block_after: str) -> str:
    """Whether :func:`after_unconfirmed` acts (a lock or a block), as an SQL condition on
    its facts and settings (each an SQL expression): for a statement that must know
    whether writes follow it."""
    return (f"({recent} >= {lock_after} AND NOT coalesce({locked_until} > {now}, false) "
            f"OR {window} >= {block_after})")


def after_unconfirmed(recent: int, in_block_window: int, already_locked: bool,
                      now: datetime, s: VelocitySettings) -> LockAction:
    """What an unconfirmed round does to its number.

    ``recent``: unconfirmed rounds since the last confirmation, within
    ``lock_window_s`` (this round included); ``in_block_window``: unconfirmed
    rounds within ``block_window_s`` (this round included).
    """
    lock_until = None
    if recent >= s.lock_after and not already_locked:
        lock_until = now + timedelta(seconds=s.lock_s)
    return LockAction(lock_until=lock_until, block=in_block_window >= s.block_after)
