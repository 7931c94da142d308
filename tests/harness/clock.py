"""A server process on a fixed clock: libfaketime preloaded, its wall clock (and every
clock it reads) starting at a chosen instant and running on from there::

    Stack(..., server_env={"edge": fixed_clock(datetime(2027, 1, 11, 2, tzinfo=UTC))})

Nothing in the process is changed but the time it reads. A missing libfaketime raises
``HarnessError`` naming the package.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from tests.harness.asterisk import HarnessError

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def fixed_clock(at: datetime) -> dict[str, str]:
    """The environment that starts a process's clocks at ``at`` (aware)."""
    if not LIBFAKETIME.is_file():
        raise HarnessError(f"{LIBFAKETIME} is missing (apt-get install libfaketime)")
    return {"LD_PRELOAD": str(LIBFAKETIME), "TZ": "UTC",
            "FAKETIME": at.astimezone(UTC).strftime("@%Y-%m-%d %H:%M:%S")}
