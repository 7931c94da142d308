"""``make demo`` end to end: one call-back, a consultation, and afterwards nothing it
started is running.

The demo is run as ``make demo`` runs it (``python -m demo``, its own process). An
Asterisk that was running before it is left running; one it started is stopped.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from demo import consult
from demo.stack import REPO
from tests.harness import asterisk as ast_harness

pytestmark = pytest.mark.e2e


def running_pid(name: str) -> int | None:
    tool = ast_harness.instance_tool()
    pid: int | None = tool.running_pid(tool.load_site(name, ast_harness.asterisk_root()))
    return pid


def test_demo_stops_the_asterisk_it_started_and_leaves_a_running_one(tmp_path: Path) -> None:
    ast_harness.ensure_running("edge")
    edge_before = running_pid("edge")
    ast_harness.stop("callback")
    assert edge_before is not None and running_pid("callback") is None

    demo = subprocess.run([sys.executable, "-m", "demo", "--workdir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False)

    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "CDR" in demo.stdout and "never answered" in demo.stdout
    # the consultation: record, advisor's presence, settlement, the record at the edge
    assert (f"consultation record: advisor {consult.ADVISOR_NAME}, method code"
            in demo.stdout), demo.stdout[-4000:]
    assert "end advisor_hangup" in demo.stdout
    for step in ("offered (standby → ringing)", "answered (ringing → talking)",
                 "ended (talking → wrap_up)"):
        assert f"{consult.ADVISOR_NAME}: {step}" in demo.stdout, step
    assert "yen tax" in demo.stdout and "consultation record stored for the merchant" \
        in demo.stdout
    assert running_pid("callback") is None, "the demo left the Asterisk it started running"
    assert running_pid("edge") == edge_before, "the demo stopped an Asterisk it found running"
