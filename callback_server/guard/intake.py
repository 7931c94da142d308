"""What the intake's one statement (``callback_intake``, migration 1020) needs from the
guard: the destination policy decided in Python, per listing that can change it, and the
velocity and brake settings as the statement reads them. Pure.

The intake's rule is written twice, here with :class:`callback_server.guard.service.
IntakeScreen` (Python) and in the statement (SQL); tests/integration/
test_callback_intake_rule.py holds the two equal. The policy needs libphonenumber, so it
is decided in Python for the three cases the statement chooses among once it has read
the lists: :class:`PolicyParts`, held equal to :meth:`shared.destination.Policy.evaluate`
by tests/unit/test_guard_intake_policy_parts.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from callback_server.guard.brake import BrakeSettings
from callback_server.guard.reasons import Refusal, Verdict
from callback_server.guard.velocity import VelocitySettings
from shared.destination import Listing, Policy
from shared.phone import E164

_ALLOWED = Listing(allowed=True)


@dataclass(frozen=True, slots=True)
class PolicyParts:
    """A number's destination policy, for any listing: ``first``, the ``plain`` verdict
    comes before the lists (a malformed number); else a blocked number is refused
    ``number_blocked``, an allow-listed one gets ``allowed`` and any other ``plain``."""

    first: bool
    plain: Verdict | None
    allowed: Verdict | None

    def verdict(self, listing: Listing) -> Verdict | None:
        """The policy's verdict under ``listing``, as ``callback_intake`` takes it."""
        if self.first:
            return self.plain
        if listing.blocked:
            return Verdict(Refusal.NUMBER_BLOCKED, listing.block_reason or "on the block list")
        return self.allowed if listing.allowed else self.plain


def policy_parts(policy: Policy, number: E164) -> PolicyParts:
    """``number`` under ``policy`` for each listing (one evaluation when it may be dialled:
    a number dialable off the lists is dialable on the allow list)."""
    plain = policy.evaluate(number)
    if plain is None:
        return PolicyParts(False, None, None)
    if plain.reason is Refusal.DESTINATION_MALFORMED:
        return PolicyParts(True, plain, plain)
    return PolicyParts(False, plain, policy.evaluate(number, _ALLOWED))


def limits_param(velocity: VelocitySettings, brake: BrakeSettings) -> list[int]:
    """``callback_intake``'s ``p_limits``: the known limits (concurrent, per hour, per day,
    minimum gap), the unknown ones, the brake's threshold and window."""
    return [velocity.known.concurrent, velocity.known.per_hour, velocity.known.per_day,
            velocity.known.min_gap_s, velocity.unknown.concurrent, velocity.unknown.per_hour,
            velocity.unknown.per_day, velocity.unknown.min_gap_s, brake.threshold,
            brake.window_s]
