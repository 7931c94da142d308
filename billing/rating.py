"""Rating a consultation (pure): talk seconds and the merchant's terms → the charge.

The rules, in order (``Terms`` holds the numbers)::

    talk      = the consultation's connected seconds
    capped    = min(talk, max_talk_s)                  the line is cut at max_talk_s
    chargeable= max(0, capped - grace_s)               the first grace_s seconds are free
    billed    = ceil(chargeable / unit_s) * unit_s     every started unit is billed whole
    total_yen = floor(price_per_minute_yen * billed / 60), at least minimum_yen once
                anything is billed; 0 when nothing is
    tax_yen   = floor(total_yen * tax_percent / (100 + tax_percent))

``price_per_minute_yen`` is the price the customer sees, consumption tax included; the
tax part is derived from the total as a Japanese qualified invoice states it (tax-
inclusive total × 10/110, fractions of a yen dropped). A unit that costs a fraction of a
yen (100 JPY/min by 7 s) is never rounded per unit: the total of the billed seconds is
rounded once, down, in the customer's favour. Invoices that sum several charges derive
their tax from the summed total once per rate, not from the sum of these per-charge
figures (the two may differ by a yen per charge).

:func:`seconds_affordable` is the inverse for a prepaid balance: the longest talk whose
charge the balance pays. Everything is integer arithmetic: rating a record takes no
Decimal and no float.
"""

from __future__ import annotations

from dataclasses import dataclass

#: consumption tax, standard rate (percent)
STANDARD_TAX_PERCENT = 10
#: the longest consultation any merchant may allow (a day)
MAX_TALK_LIMIT_S = 86_400
#: the highest price per minute (tax included)
MAX_PRICE_PER_MINUTE_YEN = 100_000


class TermsError(ValueError):
    """Terms that cannot rate a consultation; ``field`` names the term at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class Terms:
    """How one consultation line is priced.

    ``price_per_minute_yen`` comes with the advisor (tax included); the rest is the
    merchant's policy: the billing unit, the free grace period at the start, the minimum
    charge once anything is billed and the longest consultation allowed."""

    price_per_minute_yen: int
    unit_s: int = 60
    grace_s: int = 0
    minimum_yen: int = 0
    max_talk_s: int = 3 * 3600
    tax_percent: int = STANDARD_TAX_PERCENT

    def __post_init__(self) -> None:
        checks = (("price_per_minute_yen", self.price_per_minute_yen, 0,
                   MAX_PRICE_PER_MINUTE_YEN),
                  ("unit_s", self.unit_s, 1, 3600),
                  ("grace_s", self.grace_s, 0, 3600),
                  ("minimum_yen", self.minimum_yen, 0, 1_000_000),
                  ("max_talk_s", self.max_talk_s, 1, MAX_TALK_LIMIT_S),
                  ("tax_percent", self.tax_percent, 0, 100))
        for field, value, low, high in checks:
            if type(value) is not int:
                raise TermsError(field, f"expected an integer, got {type(value).__name__}")
            if not low <= value <= high:
                raise TermsError(field, f"expected {low}..{high}, got {value}")

    def first_unit_yen(self) -> int:
        """What the first billed unit costs (the least charge a consultation that goes
        past the grace period makes)."""
        return rate(self.grace_s + 1, self).total_yen if self.grace_s < self.max_talk_s else 0


@dataclass(frozen=True, slots=True)
class Charge:
    """A rated consultation. ``total_yen`` includes ``tax_yen``."""

    total_yen: int
    tax_yen: int
    billed_s: int
    talk_s: int
    #: the talk went past the terms' ``max_talk_s`` (only that much is billed)
    capped: bool

    @property
    def net_yen(self) -> int:
        return self.total_yen - self.tax_yen


def tax_included(total_yen: int, tax_percent: int = STANDARD_TAX_PERCENT) -> int:
    """The consumption tax inside a tax-inclusive total, fractions dropped
    (``floor(total × 10/110)`` at the standard rate)."""
    return total_yen * tax_percent // (100 + tax_percent)


def rate(talk_s: int, terms: Terms) -> Charge:
    """The charge of a consultation that talked ``talk_s`` seconds."""
    if talk_s < 0:
        raise ValueError(f"talk_s must not be negative, got {talk_s}")
    capped = talk_s > terms.max_talk_s
    chargeable = (terms.max_talk_s if capped else talk_s) - terms.grace_s
    if chargeable <= 0:
        return Charge(0, 0, 0, talk_s, capped)
    unit = terms.unit_s
    billed = -(-chargeable // unit) * unit
    total = terms.price_per_minute_yen * billed // 60
    if total < terms.minimum_yen:
        total = terms.minimum_yen
    return Charge(total, total * terms.tax_percent // (100 + terms.tax_percent), billed,
                  talk_s, capped)


def whole_units_s(talk_s: int, terms: Terms) -> int:
    """``talk_s`` rounded up to the end of its billing unit (what a hold of that long
    pays for anyway: a started unit is billed whole): the grace period, whole units past
    it, never past ``max_talk_s`` (none: none)."""
    if talk_s <= 0:
        return 0
    if talk_s <= terms.grace_s:
        return min(terms.grace_s, terms.max_talk_s)
    units = -(-(talk_s - terms.grace_s) // terms.unit_s)
    return min(terms.max_talk_s, terms.grace_s + units * terms.unit_s)


def seconds_affordable(balance_yen: int, terms: Terms) -> int:
    """The longest talk, in seconds, whose :func:`rate` is at most ``balance_yen``.

    The grace period is always affordable; past it, whole billing units as far as the
    balance pays (a balance below the minimum charge pays none), never beyond
    ``max_talk_s``. One second more is either past ``max_talk_s`` or costs more than the
    balance."""
    if balance_yen < 0:
        raise ValueError(f"balance_yen must not be negative, got {balance_yen}")
    limit = terms.max_talk_s
    if terms.grace_s >= limit:
        return limit
    if balance_yen < terms.minimum_yen:
        return terms.grace_s
    per_unit = terms.price_per_minute_yen * terms.unit_s   # yen × 60 per unit
    if per_unit == 0:
        return limit
    # floor(per_unit × n / 60) ≤ balance  ⟺  per_unit × n < 60 × (balance + 1)
    units = (60 * (balance_yen + 1) - 1) // per_unit
    return min(limit, terms.grace_s + units * terms.unit_s)
