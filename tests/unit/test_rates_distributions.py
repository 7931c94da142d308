"""Call-length distribution files (``--distributions``), and that README's example is
what the parser accepts."""

from __future__ import annotations

import re
import shlex
from decimal import Decimal
from pathlib import Path

import pytest

from routing_rates.cli import parser
from routing_rates.duration import DistributionError, load_distributions

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("### Call-length distributions")
    return text[start:text.index("\n### Call lengths per merchant", start)]


def test_readme_example_file_parses_as_documented() -> None:
    [example] = re.findall(r"```toml\n(.*?)```", _readme_section(), re.S)
    models = load_distributions(example, "README.md")
    assert sorted(models) == ["enquiries", "sales", "support"]
    assert models["support"].points == ((30, Decimal("0.2")), (60, Decimal("0.35")),
                                        (180, Decimal("0.3")), (600, Decimal("0.15")))
    assert models["support"].mean == Decimal("171")
    assert abs(models["sales"].mean - Decimal("240")) < 5
    assert abs(models["enquiries"].mean - Decimal("25")) < 1


def test_readme_command_is_what_the_cli_accepts() -> None:
    [command] = re.findall(r"```sh\n(.*?)\n```", _readme_section(), re.S)
    argv = shlex.split(command)
    args = parser().parse_args(argv[argv.index("routing_rates") + 1:])
    assert (args.distributions, args.command, args.distribution) == (
        "durations.toml", "decide", "support")


def test_weights_of_any_form_and_repeated_seconds_add_up() -> None:
    models = load_distributions('[distributions.x]\npoints = [[60, "1"], [0, 0.5], '
                                "[60, 2], [120, 0.5]]\n", "d.toml")
    assert models["x"].points == ((0, Decimal("0.125")), (60, Decimal("0.75")),
                                  (120, Decimal("0.125")))


@pytest.mark.parametrize(("text", "error"), [
    ('[distributions.x]\npoints = [[30, 1], ["60", 1]]\n', r"points\[1\] must be"),
    ("[distributions.x]\npoints = [[30.5, 1]]\n", r"points\[0\] must be"),
    ('[distributions.x]\npoints = [[30, "heavy"]]\n', r"points\[0\] must be"),
    ("[distributions.x]\npoints = [[30, -1]]\n", r"points\[0\] must be"),
    ("[distributions.x]\npoints = [30, 1]\n", r"points\[0\] must be"),
    ("[distributions.x]\npoints = []\n", "points must be a list"),
    ("[distributions.x]\npoints = [[30, 0]]\n", "weights sum to 0"),
    ('[distributions.x]\nexponential_mean_s = "long"\n', "exponential_mean_s must be"),
    ("[distributions.x]\nexponential_mean_s = 0\n", "exponential_mean_s must be"),
    ("[distributions.x]\nexponential_mean = 200\n", "needs exactly one of"),
    ("[distributions.x]\nexponential_mean_s = 200\npoints = [[1, 1]]\n", "exactly one of"),
    ("distributions = 3\n", r"no \[distributions.NAME\] table"),
    ("[distributions]\nx = 3\n", "must be a table"),
    ("[distributions.x\n", "Expected"),
])
def test_bad_distribution_file_names_file_and_table(text: str, error: str) -> None:
    with pytest.raises(DistributionError, match=error) as err:
        load_distributions(text, "durations.toml")
    assert str(err.value).startswith("durations.toml: ")
    if "[distributions.x]" in text:
        assert str(err.value).startswith("durations.toml: [distributions.x]: ")
