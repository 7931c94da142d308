"""A test session stops the Asterisks it started only once it holds the stack's lock: by
its end another session's stack may be using them (a run that found them running), and
stopping them then pulls ARI from under that stack's calls."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.harness.asterisk import REPO

SESSION_END = """
import time
from tests.conftest import pytest_sessionfinish
from tests.harness import asterisk
asterisk._STARTED.add("nowhere")            # a site it started (no such site: nothing to stop)
asterisk.stop = lambda name: print("stopped", name)
pytest_sessionfinish(None, 0)
"""


def test_the_session_end_waits_for_the_stack_another_session_runs(tmp_path: Path) -> None:
    lock_path = tmp_path / "stack.lock"
    env = {**os.environ, "CBGW_STACK_LOCK": str(lock_path), "PYTHONPATH": str(REPO)}
    with open(lock_path, "ab") as held:          # another session's stack, running
        fcntl.flock(held, fcntl.LOCK_EX)
        ending = subprocess.Popen([sys.executable, "-c", SESSION_END], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert ending.poll() is None, "the session ended while another's stack ran"
    out, _ = ending.communicate(timeout=30)
    assert (ending.returncode, out) == (0, "stopped nowhere\n")
