"""One FX default: the routing_rates CLI and the example configs agree."""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path

import pytest

from routing_rates.cli import _fx, parser
from shared.money import DEFAULT_FX_BASE, DEFAULT_FX_RATES, FxTable

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.mark.parametrize("config", ["edge.example.toml", "callback.example.toml"])
def test_example_configs_document_the_default(config: str) -> None:
    rates = tomllib.loads((DEPLOY / config).read_text(encoding="utf-8"))["rates"]
    assert rates["fx_base"] == DEFAULT_FX_BASE
    assert rates["fx_rates"] == dict(DEFAULT_FX_RATES)


def test_cli_without_fx_uses_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RATES_FX", raising=False)
    table = _fx(parser().parse_args(["decks", "list"]))
    assert table == FxTable.from_mapping(DEFAULT_FX_BASE, DEFAULT_FX_RATES)
    assert table.rates == {"USD": Decimal("155")}
    assert "default USD=155" in " ".join(parser().format_help().split())
