from decimal import Decimal

import pytest

from shared.money import CurrencyMismatch, FxTable, Money, MoneyError, UnknownCurrency


def test_arithmetic_and_rounding_up() -> None:
    a = Money.of("0.1398", "USD")
    assert (a * 3).amount == Decimal("0.4194")
    assert Money.of("0.10001", "USD").round_up(4).amount == Decimal("0.1001")
    assert Money.of("1.001", "USD").to_minor() == 101
    assert Money.from_minor(150, "JPY").amount == Decimal(150)


def test_currency_rules() -> None:
    with pytest.raises(UnknownCurrency):
        Money.of("1", "UDS")
    with pytest.raises(CurrencyMismatch):
        _ = Money.of("1", "USD") + Money.of("1", "JPY")
    with pytest.raises(MoneyError):
        Money.of("NaN", "USD")
    with pytest.raises(TypeError):
        Money(1.5, "USD")  # type: ignore[arg-type]


def test_fx_conversion_both_ways() -> None:
    fx = FxTable.from_mapping("JPY", {"USD": "150", "EUR": "160"})
    assert fx.convert(Money.of("0.1398", "USD"), "JPY").amount == Decimal("20.9700")
    assert fx.convert(Money.of("300", "JPY"), "USD").amount == Decimal(2)
    assert fx.convert(Money.of("1", "EUR"), "USD").amount == Decimal("160") / Decimal("150")
