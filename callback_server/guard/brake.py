"""The global anomaly brake. Pure.

A spoofing campaign shows up as many *new* numbers (never confirmed) that
ring and never press 1. When more than ``threshold`` distinct new numbers
were left unconfirmed within ``window_s`` (default 20 in 10 minutes),
call-backs to new numbers pause (``brake_new_numbers``) and an alert goes
out. Known numbers are not affected. The brake lifts by itself as the window
slides past the burst; the alert says so when it engages.
"""

from __future__ import annotations

from dataclasses import dataclass

from callback_server.guard.reasons import Refusal, Verdict


@dataclass(frozen=True, slots=True)
class BrakeSettings:
    threshold: int = 20
    window_s: int = 600


def engaged(unconfirmed_new_numbers: int, s: BrakeSettings) -> bool:
    return unconfirmed_new_numbers > s.threshold


def check(known: bool, unconfirmed_new_numbers: int, s: BrakeSettings) -> Verdict | None:
    if known or not engaged(unconfirmed_new_numbers, s):
        return None
    return Verdict(Refusal.BRAKE_NEW_NUMBERS,
                   f"{unconfirmed_new_numbers} new numbers unconfirmed in {s.window_s} s "
                   f"(threshold {s.threshold})")
