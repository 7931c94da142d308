"""``--distributions FILE`` through the CLI, with README's example file (real PostgreSQL)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from routing_rates.cli import main

pytestmark = pytest.mark.integration
README = Path(__file__).resolve().parents[2] / "README.md"


def test_quote_with_the_readme_distribution_file(pg_url: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Call-length distributions"):]
    durations = tmp_path / "durations.toml"
    durations.write_text(re.findall(r"```toml\n(.*?)```", section, re.S)[0])
    deck = tmp_path / "deck.csv"
    deck.write_text("prefix,destination,rate,connect,initial,increment\n"
                    "8190,Japan mobile,0.1,0,60,60\n")
    db = ["--database-url", pg_url]
    assert main([*db, "carriers", "load"]) == 0
    assert main([*db, "import", "carrier-b", str(deck), "--profile", "generic",
                 "--no-progress", "--no-distribute"]) == 0   # no edge: in force at once
    capsys.readouterr()
    assert main([*db, "--distributions", str(durations), "quote", "+819012345678",
                 "--distribution", "support"]) == 0
    assert "durations support (mean 171 s)" in capsys.readouterr().out
    durations.write_text("[distributions.support]\npoints = [[30, 1], [60.5, 1]]\n")
    assert main([*db, "--distributions", str(durations), "quote", "+819012345678",
                 "--distribution", "support"]) == 2
    assert f"error: {durations}: [distributions.support]: distribution 'support': " \
        "points[1] must be [seconds, weight]" in capsys.readouterr().err
