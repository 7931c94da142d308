"""The edge's Kamailio front for tests: wraps ``deploy/kamailio/instance.py``.

::

    front = ensure_running()       # checks the config, starts it, waits for OPTIONS
    ...                            # customers call front.sip (127.0.0.2:5060)
    stop_started()                 # stops it if this process started it

A missing ``kamailio`` binary or a config that does not load raises ``HarnessError``.
Like the Asterisks, it listens on a fixed loopback port: callers hold the stack lock.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from types import ModuleType

from tests.harness.asterisk import REPO, HarnessError, load_script

INSTANCE_TOOL = REPO / "deploy/kamailio/instance.py"
#: Kamailio's SIP address (``listen=`` in deploy/kamailio/kamailio.cfg)
SIP = ("127.0.0.2", 5060)

_started: list[bool] = []


@cache
def instance_tool() -> ModuleType:
    return load_script(INSTANCE_TOOL, "cbgw_kamailio_tool")


def ensure_running(run_dir: Path | None = None) -> tuple[str, int]:
    """Start the front unless it runs; its SIP address."""
    tool = instance_tool()
    front = tool.Front(run_dir or tool.DEFAULT_RUN_DIR)
    try:
        if tool.running_pid(front) is None:
            _started.append(True)
        tool.start(front)
    except tool.InstanceError as exc:
        raise HarnessError(f"Kamailio: {exc}") from exc
    return SIP


def stop_started(run_dir: Path | None = None) -> None:
    """Stop the front if this process started it."""
    if not _started:
        return
    tool = instance_tool()
    tool.stop(tool.Front(run_dir or tool.DEFAULT_RUN_DIR))
    _started.clear()


def log_text(run_dir: Path | None = None) -> str:
    tool = instance_tool()
    path: Path = tool.Front(run_dir or tool.DEFAULT_RUN_DIR).logfile
    return path.read_text(errors="replace") if path.exists() else ""


def running_pid(run_dir: Path | None = None) -> int | None:
    """The pid of the running front (its process group's leader), or None."""
    tool = instance_tool()
    found: int | None = tool.running_pid(tool.Front(run_dir or tool.DEFAULT_RUN_DIR))
    return found
