"""Which call-length distribution a merchant's decision assumes: learned (smoothed toward
the prior), configured, or the default; and the merchant config that sets it."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from routing_rates.call_lengths import (
    DEFAULT_CHOICE,
    Learned,
    Policy,
    choose,
    configured_models,
    from_merchants,
    number_class,
)
from routing_rates.duration import BUILTIN, DistributionError, DurationModel
from shared.config import ConfigError, Merchant, load, root
from shared.phone import E164

SINCE = datetime(2026, 11, 1, tzinfo=UTC)
PRIOR = DurationModel.from_histogram("prior", {60: 1, 600: 1})


def test_the_rule_default_then_configured_then_learned() -> None:
    policy = Policy(min_calls=4, prior_calls=2)
    assert choose({}, "mobile", None, policy) is DEFAULT_CHOICE
    configured = choose({"all": PRIOR}, "mobile", None, policy)
    assert (configured.model, configured.source) == (PRIOR, "configured")
    few = Learned(3, SINCE, ((10, 3),))
    waiting = choose({"mobile": PRIOR}, "mobile", few, policy)
    assert waiting.model is PRIOR
    assert waiting.detail.endswith("3 mobile calls so far, learning from 4")
    learned = choose({"mobile": PRIOR, "all": BUILTIN["long"]}, "mobile",
                     Learned(6, SINCE, ((10, 4), (60, 2))), policy)
    assert learned.source == "learned"
    assert learned.detail.startswith("learned from 6 mobile calls since 2026-11-01")
    # (n_s + k * prior(s)) / (n + k): 10 s = 4/8, 60 s = (2 + 1)/8, 600 s = 1/8
    assert learned.model.points == ((10, Decimal("0.5")), (60, Decimal("0.375")),
                                    (600, Decimal("0.125")))


def test_number_classes() -> None:
    assert number_class(E164("819012345678")) == "mobile"
    assert number_class(E164("81312345678")) == "fixed"
    assert number_class(E164("815012345678")) == "ip"
    assert number_class(E164("81120123456")) == "other"


def _merchant(tmp_path: Path, table: str) -> Merchant:
    path = tmp_path / "site.toml"
    path.write_text('id = "acme"\nname = "A"\nnumbers = ["0120123456"]\n' + table)
    source = load(path, "EDGE", {})
    merchant = Merchant.parse(root(source))
    source.check_unknown()
    return merchant


def test_configured_by_name_from_the_file_or_inline(tmp_path: Path) -> None:
    (tmp_path / "durations.toml").write_text(
        "[distributions.support]\npoints = [[30, 1], [90, 1]]\n")
    merchant = _merchant(tmp_path, """
[call_lengths]
file = "durations.toml"
all = { distribution = "short" }
mobile = { distribution = "support" }
fixed = { lognormal_mean_s = 25, lognormal_sigma = 0.8 }
ip = { exponential_mean_s = 240 }
""")
    models = configured_models(merchant.call_lengths, BUILTIN)
    assert models["all"] is BUILTIN["short"]
    assert models["mobile"].mean == 60
    assert abs(models["fixed"].mean - 25) < 1 and abs(models["ip"].mean - 240) < 5
    lengths = from_merchants([merchant], Policy())
    assert set(lengths.configured) == {"acme"}


@pytest.mark.parametrize(("table", "error"), [
    ("[call_lengths.mobile]\nlognormal_mean = 25\nlognormal_sigma = 0.8\n",
     r"call_lengths.mobile.lognormal_mean: unknown key \(did you mean lognormal_mean_s\?\)"),
    ("[call_lengths.mobile]\n", "needs exactly one of"),
    ("[call_lengths.mobile]\ndistribution = \"x\"\nexponential_mean_s = 3\n",
     "needs exactly one of"),
    ("[call_lengths.pager]\nexponential_mean_s = 3\n", "call_lengths.pager"),
])
def test_config_errors_name_the_key(tmp_path: Path, table: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        _merchant(tmp_path, table)


@pytest.mark.parametrize(("table", "error"), [
    ('[call_lengths]\nmobile = { distribution = "nope" }\n',
     "call_lengths.mobile: unknown distribution 'nope'"),
    ("[call_lengths]\nmobile = { lognormal_mean_s = 25, lognormal_sigma = 9 }\n",
     "call_lengths.mobile: .*lognormal_sigma"),
])
def test_bad_distributions_are_refused_with_the_key(tmp_path: Path, table: str,
                                                    error: str) -> None:
    merchant = _merchant(tmp_path, table)
    with pytest.raises(DistributionError, match=error):
        configured_models(merchant.call_lengths, BUILTIN)
