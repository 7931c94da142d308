"""CPU time of the stack's processes, read from /proc: what a call costs each part.

::

    meter = CpuMeter({"kamailio": Part(pid, group=True), "edge Asterisk": Part(pid)})
    idle = meter.read(); ...; busy = meter.read()
    meter.per_call_ms(idle, busy, calls={"kamailio": 60, ...}, idle_rate=...)

A part is one process (all its threads: Asterisk, a server) or, with ``group``, every
process of its process group (Kamailio's children). A part whose process died is read as
absent, so a killed node is left out rather than read as zero.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(path: Path) -> list[str]:
    """The fields of /proc/PID/stat after the command name (field 3 on)."""
    return path.read_text().rpartition(")")[2].split()


def _cpu_s(fields: list[str]) -> float:
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS    # utime + stime


@dataclass(frozen=True)
class Part:
    pid: int
    group: bool = False


@dataclass(frozen=True)
class CpuMeter:
    parts: Mapping[str, Part]

    def read(self) -> dict[str, float]:
        """CPU seconds used so far by each part that is alive."""
        readings: dict[str, float] = {}
        for name, part in self.parts.items():
            try:
                if part.group:
                    readings[name] = sum(_cpu_s(f) for f in _group_stats(part.pid))
                else:
                    readings[name] = _cpu_s(_stat_fields(Path(f"/proc/{part.pid}/stat")))
            except (OSError, ValueError, IndexError):
                continue
        return readings


def _group_stats(pgid: int) -> list[list[str]]:
    stats = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = _stat_fields(proc / "stat")
        except OSError:
            continue
        if int(fields[2]) == pgid:      # pgrp
            stats.append(fields)
    if not stats:
        raise OSError(f"no process in group {pgid}")
    return stats


def per_call_ms(before: Mapping[str, float], after: Mapping[str, float],
                calls: Mapping[str, int], *, idle_rate: Mapping[str, float],
                seconds: float) -> dict[str, float]:
    """CPU milliseconds per call of each part between two readings, less what the part
    burns idle (``idle_rate``, CPU seconds a second) over those ``seconds``."""
    costs = {}
    for name, count in calls.items():
        if name in before and name in after and count > 0:
            used = after[name] - before[name] - idle_rate.get(name, 0.0) * seconds
            costs[name] = max(used, 0.0) * 1000 / count
    return costs
