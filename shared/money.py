"""Money as a value type: a ``Decimal`` amount and an ISO 4217 currency.

Never float. Arithmetic between two currencies raises ``CurrencyMismatch``;
conversion goes through an explicit ``FxTable``. Rounding is explicit too:
carriers round costs *up* to their deck's decimals, so ``round_up`` is the
common case and ``quantize`` takes a rounding mode.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal, InvalidOperation
from types import MappingProxyType

# Active ISO 4217 codes (2024). Checked on import of decks and configs, so a
# typo such as "UDS" is reported instead of silently creating a new currency.
ISO_4217 = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL
    BSD BTN BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP
    ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR
    IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL
    LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR
    NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD
    SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX
    USD UYU UZS VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG
    """.split()
)

# Minor-unit exponents that differ from the default of 2.
_MINOR_EXPONENT = {"JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "UGX": 0,
                   "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "TND": 3, "IQD": 3, "LYD": 3}


class MoneyError(ValueError):
    """Base class for money errors."""


class UnknownCurrency(MoneyError):
    def __init__(self, code: str) -> None:
        super().__init__(f"unknown currency {code!r} (expected an ISO 4217 code such as USD, JPY)")
        self.code = code


class CurrencyMismatch(MoneyError):
    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"cannot combine {a} and {b} without conversion")


class MissingFxRate(MoneyError):
    def __init__(self, src: str, dst: str) -> None:
        super().__init__(f"no FX rate from {src} to {dst}")


def check_currency(code: str) -> str:
    """Return the upper-cased code, or raise ``UnknownCurrency``."""
    upper = code.strip().upper()
    if upper not in ISO_4217:
        raise UnknownCurrency(code)
    return upper


def minor_exponent(currency: str) -> int:
    return _MINOR_EXPONENT.get(currency, 2)


def to_decimal(value: str | int | Decimal) -> Decimal:
    """Parse an amount strictly: no floats, no NaN or infinities."""
    if isinstance(value, float):
        raise TypeError("money amounts must not be float")  # pragma: no cover
    try:
        dec = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise MoneyError(f"not a number: {value!r}") from exc
    if not dec.is_finite():
        raise MoneyError(f"not a finite number: {value!r}")
    return dec


@dataclass(frozen=True, slots=True, order=False)
class Money:
    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        if not isinstance(self.amount, Decimal):
            raise TypeError(f"Money.amount must be Decimal, got {type(self.amount).__name__}")
        if self.currency not in ISO_4217:
            raise UnknownCurrency(self.currency)

    @classmethod
    def of(cls, amount: str | int | Decimal, currency: str) -> Money:
        return cls(to_decimal(amount), check_currency(currency))

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(Decimal(0), check_currency(currency))

    @classmethod
    def from_minor(cls, minor: int, currency: str) -> Money:
        cur = check_currency(currency)
        return cls(Decimal(minor).scaleb(-minor_exponent(cur)), cur)

    def to_minor(self) -> int:
        """Integer minor units, rounded up (a fraction of a cent is still owed)."""
        return int(self.round_up(minor_exponent(self.currency)).amount.scaleb(
            minor_exponent(self.currency)))

    def _same(self, other: Money) -> None:
        if self.currency != other.currency:
            raise CurrencyMismatch(self.currency, other.currency)

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(self.amount - other.amount, self.currency)

    def __mul__(self, factor: Decimal | int) -> Money:
        if isinstance(factor, float):
            raise TypeError("cannot multiply Money by float")  # pragma: no cover
        return Money(self.amount * factor, self.currency)

    __rmul__ = __mul__

    def __neg__(self) -> Money:
        return Money(-self.amount, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount < other.amount

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.amount <= other.amount

    def __gt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount > other.amount

    def __ge__(self, other: Money) -> bool:
        self._same(other)
        return self.amount >= other.amount

    def round_up(self, decimals: int) -> Money:
        return self.quantize(decimals, ROUND_CEILING)

    def quantize(self, decimals: int, rounding: str = ROUND_HALF_EVEN) -> Money:
        exp = Decimal(1).scaleb(-decimals)
        return Money(self.amount.quantize(exp, rounding=rounding), self.currency)

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"

    def to_json(self) -> dict[str, str]:
        return {"amount": str(self.amount), "currency": self.currency}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Money:
        return cls.of(str(data["amount"]), str(data["currency"]))


def total(items: Iterable[Money], currency: str) -> Money:
    acc = Money.zero(currency)
    for item in items:
        acc = acc + item
    return acc


# The one FX default: what routing_rates' CLI uses when --fx/RATES_FX is not given, and the
# value deploy/*.example.toml document under [rates] (a test checks that they agree).
# Indicative only: configure the rates you pay.
DEFAULT_FX_BASE = "JPY"
DEFAULT_FX_RATES: Mapping[str, str] = MappingProxyType({"USD": "155"})


@dataclass(frozen=True, slots=True)
class FxTable:
    """Conversion rates into a base currency: ``rates[c]`` = units of base per 1 ``c``.

    >>> fx = FxTable("JPY", {"USD": Decimal("150")})
    >>> fx.convert(Money.of("0.10", "USD"), "JPY")
    Money(amount=Decimal('15.00'), currency='JPY')
    """

    base: str
    rates: Mapping[str, Decimal]

    def rate(self, src: str, dst: str) -> Decimal:
        if src == dst:
            return Decimal(1)
        to_base = Decimal(1) if src == self.base else self.rates.get(src)
        from_base = Decimal(1) if dst == self.base else self.rates.get(dst)
        if to_base is None or from_base is None:
            raise MissingFxRate(src, dst)
        return to_base / from_base

    def convert(self, money: Money, dst: str) -> Money:
        if money.currency == dst:
            return money
        return Money(money.amount * self.rate(money.currency, dst), check_currency(dst))

    @classmethod
    def from_mapping(cls, base: str, rates: Mapping[str, str | int | Decimal]) -> FxTable:
        return cls(check_currency(base),
                   {check_currency(k): to_decimal(v) for k, v in rates.items()})
