"""deploy/prometheus/cbgw-alerts.yml: Prometheus's own ``promtool`` (Debian's
``prometheus`` package, installed by ``make deps``) accepts the rules and passes their
cases (cbgw-alerts.test.yml: each alert fires on the series that should raise it, with
its labels and both summaries, and stays quiet where it should); every ``cbgw_*`` name an
alert reads is one the sites export; every alert has a case that fires it, a severity,
and a summary in Japanese and one in English."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_grafana_dashboard import NAME, exported

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = RULES_DIR / "cbgw-alerts.yml"
CASES = RULES_DIR / "cbgw-alerts.test.yml"
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is missing: it comes with Debian's prometheus package "
                    "(make deps installs it)")
    return subprocess.run([tool, *args], cwd=RULES_DIR, capture_output=True, text=True,
                          timeout=60, check=False)


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout, checked.stdout


def test_the_rules_pass_their_cases() -> None:
    tested = promtool("test", "rules", CASES.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout, tested.stdout


def test_every_metric_an_alert_reads_is_exported() -> None:
    read = {name for rule in alerts() for name in NAME.findall(rule["expr"])}
    assert read and read <= exported(), sorted(read - exported())


def test_every_alert_fires_in_a_case_with_a_severity_and_both_summaries() -> None:
    fired = {test["alertname"] for case in yaml.safe_load(CASES.read_text())["tests"]
             for test in case["alert_rule_test"] if test.get("exp_alerts")}
    for rule in alerts():
        name = rule["alert"]
        assert name in fired, f"{name} has no case in {CASES.name} that fires it"
        assert rule["labels"]["severity"] in ("page", "ticket"), name
        notes = rule["annotations"]
        assert JAPANESE.search(notes["summary"]), f"{name}: summary is not Japanese"
        assert notes["summary_en"].isascii(), f"{name}: summary_en is not English"
