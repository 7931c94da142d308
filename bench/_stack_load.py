"""What the whole-stack benches share: callers, carriers, what the SIPp logs say, CPU.

The clock of a call-back, on the wire: from the edge's 486 arriving at the customer's
SIPp (the moment the inbound leg ends) to the call-back INVITE arriving at a carrier's
SIPp, for the same customer number (``latencies_ms``). CPU time of a process (all its
threads) is read from ``/proc/<pid>/stat`` (``CpuSampler``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from shared.phone import normalise
from tests.harness import asterisk as ast_harness
from tests.harness import sipp as sipp_harness

#: clock ticks per second of ``/proc/<pid>/stat``'s utime and stime
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def callers(count: int, first: int = 9011000000) -> list[str]:
    """``count`` distinct Japanese mobile numbers, national form, from ``0<first>``."""
    return [f"0{first + i}" for i in range(count)]


def hangup_times(customers: sipp_harness.SippRole) -> dict[str, datetime]:
    """Customer E.164 digits -> when the 486 arrived."""
    by_call: dict[str, str] = {}
    out: dict[str, datetime] = {}
    for m in customers.messages():
        if m.method == "INVITE" and m.direction == "sent" and m.call_id and m.from_user:
            by_call[m.call_id] = normalise(m.from_user).digits
        elif m.status == 486 and m.direction == "received" and m.call_id in by_call:
            out.setdefault(by_call[m.call_id], m.at)
    return out


def invite_times(*carriers: sipp_harness.SippRole) -> dict[str, datetime]:
    """Called number (E.164 digits) -> its first call-back INVITE at any carrier."""
    out: dict[str, datetime] = {}
    for role in carriers:
        for m in role.invites_received():
            if m.ruri_user and (m.ruri_user not in out or m.at < out[m.ruri_user]):
                out[m.ruri_user] = m.at
    return out


def latencies_ms(hung: dict[str, datetime], invited: dict[str, datetime]
                 ) -> tuple[list[float], int]:
    """Sorted hang-up -> INVITE latencies of the numbers hung up, and how many of them
    were never called back."""
    values = [(invited[n] - t).total_seconds() * 1000 for n, t in hung.items() if n in invited]
    return sorted(values), len(hung) - len(values)


@dataclass(frozen=True)
class Answered:
    """A call-back the customer's phone answered: the number called (E.164 digits), who
    ended it: ``"customer"`` (the phone's BYE), ``"server"`` (the callback site's BYE), or
    None (no BYE in the log), and when that BYE was sent or received."""

    number: str
    bye: str | None
    bye_at: datetime | None = None


def answered_calls(messages: Iterable[sipp_harness.SipMessage]) -> dict[str, Answered]:
    """Call-ID -> the call-back a phone (a UAS role) answered with 200 OK, from its message
    log in order: the first BYE of the dialog says who hung up (one sent by the phone: the
    customer; one received: the server; a BYE crossing the other's counts as the first)."""
    numbers: dict[str, str] = {}
    out: dict[str, Answered] = {}
    for m in messages:
        cid = m.call_id
        if cid is None:
            continue
        if m.method == "INVITE" and m.direction == "received" and m.ruri_user:
            numbers.setdefault(cid, m.ruri_user)
        elif m.status == 200 and m.direction == "sent" and m.cseq_method == "INVITE" \
                and cid in numbers and cid not in out:
            out[cid] = Answered(numbers[cid], None)
        elif m.method == "BYE" and cid in out and out[cid].bye is None:
            out[cid] = Answered(out[cid].number,
                                "customer" if m.direction == "sent" else "server", m.at)
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[index]


@contextlib.asynccontextmanager
async def carriers(workdir: Path, sites: Iterable[ast_harness.AsteriskSite], *, a: str, b: str,
             digits: str | None = None, timeout_s: int = 120
             ) -> AsyncIterator[tuple[sipp_harness.SippRole, sipp_harness.SippRole]]:
    """Carriers A and B as SIPp roles running ``a`` and ``b``, qualified on every callback
    Asterisk in ``sites`` (Asterisk refuses to dial an unqualified trunk). With the demo
    decks carrier B is the cheapest for Japanese mobiles, so it is tried first."""
    with sipp_harness.role(a, "carrier-a", workdir, digits=digits, timeout_s=timeout_s) as ra, \
            sipp_harness.role(b, "carrier-b", workdir, digits=digits,
                              timeout_s=timeout_s) as rb:
        for site in sites:
            for trunk in ("carrier-a", "carrier-b"):
                await ast_harness.qualify(site, trunk, within_s=10.0)
        yield ra, rb


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads); None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()    # the name may hold spaces and ')'
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def user_system_seconds(pid: int) -> tuple[float, float] | None:
    """User and system (kernel) CPU seconds of process ``pid``; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) * _TICK_S, int(fields[12]) * _TICK_S


def reaped_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid``'s children that exited and it waited for."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[13]) + int(fields[14])) * _TICK_S


def _proc_pids() -> Iterator[int]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            yield int(entry.name)


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (SIPp under coreutils ``timeout``)."""
    out = []
    for child in _proc_pids():
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{child}/stat").read_text()
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                out.append(child)
    return out


def postgres_backends(databases: Sequence[str]) -> list[int]:
    """The PostgreSQL backends connected to any of ``databases`` (by their process title,
    ``postgres: <user> <database> ...``, so no connection of ours is needed)."""
    wanted = set(databases)
    out = []
    for pid in _proc_pids():
        with contextlib.suppress(OSError):
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split()
            if len(title) >= 3 and title[0] == b"postgres:" and title[2].decode() in wanted:
                out.append(pid)
    return out


def parent(pid: int) -> int | None:
    """The parent of ``pid``; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])


def postmaster_of(databases: Sequence[str]) -> int | None:
    """The postmaster of the cluster holding ``databases``: the parent of a backend
    connected to one of them (other clusters, the tests', may run on the machine)."""
    for pid in postgres_backends(databases):
        if (ppid := parent(pid)) is not None:
            return ppid
    return None


#: an auxiliary process's title (``postgres: <title>``) -> its group in the split
PG_AUXILIARY = {"walwriter": "walwriter", "checkpointer": "checkpointer",
                "background writer": "background writer",
                "autovacuum launcher": "autovacuum launcher",
                "autovacuum worker": "autovacuum workers",
                "logger": "logger"}


def postgres_group(title: str, databases: dict[str, str]) -> str | None:
    """The group of a PostgreSQL process by its title: a backend of one of ``databases``
    (name -> group), of another database ("database <name>"), an auxiliary process
    (``PG_AUXILIARY``, else its title); None for no PostgreSQL child."""
    title = title.strip()
    if not title.startswith("postgres: "):
        return None
    title = title.removeprefix("postgres: ")
    for prefix, group in PG_AUXILIARY.items():
        if title.startswith(prefix):
            return group
    words = title.split()           # a backend: <user> <database> <host(port)|[local]> ...
    if len(words) >= 3 and ("(" in words[2] or words[2] == "[local]"):
        return databases.get(words[1], f"database {words[1]}")
    return title


class _Sampling:
    """``start()`` reads what every tracked process has used so far, each ``sample()``
    what it has used by now; a subclass says how to read (``_read``) and what to forget
    when it starts again (``_reset``)."""

    def start(self) -> None:
        self._reset()
        self._read(into_first=True)

    def sample(self) -> None:
        self._read(into_first=False)

    def _reset(self) -> None:
        raise NotImplementedError

    def _read(self, *, into_first: bool) -> None:
        raise NotImplementedError


class PostgresSplit(_Sampling):
    """CPU seconds of every process of one PostgreSQL cluster between ``start()`` and the
    last ``sample()``, grouped by process title: the backends of each of ``databases``
    (by name), the sessions in ``probes`` (pids: the bench's own sampling connections),
    each auxiliary process (``PG_AUXILIARY``), the postmaster, and other databases'
    backends. Each sample reads ``/proc`` once; pids that come and go count as in
    :class:`CpuSampler`, and what the children that exited used after their last sample
    (or all of it, for those born and gone between two: autovacuum workers, short
    connections) is the growth of the postmaster's reaped children's CPU (``cutime`` +
    ``cstime``) less what was sampled of them: group "exited"."""

    def __init__(self, databases: dict[str, str]) -> None:
        self.databases = databases          # database name -> its group's name
        self.probes: set[int] = set()
        self.postmaster: int | None = None
        self.group_of: dict[int, str] = {}
        self.first: dict[int, tuple[float, float]] = {}   # pid -> (user, system)
        self.last: dict[int, tuple[float, float]] = {}
        self.reaped: tuple[float, float] = (0.0, 0.0)   # the postmaster's, first and last

    def _group(self, pid: int) -> str | None:
        if pid == self.postmaster:
            return "postmaster"
        if pid in self.probes:
            return "bench probes"
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return postgres_group(cmdline.replace(b"\0", b" ").decode(errors="replace"),
                              self.databases)

    def _reset(self) -> None:
        self.postmaster = postmaster_of(list(self.databases))
        self.group_of.clear()
        self.first.clear()
        self.last.clear()

    def _read(self, *, into_first: bool) -> None:
        if self.postmaster is None:
            return
        reaped = reaped_seconds(self.postmaster)
        if reaped is not None:
            self.reaped = (reaped if into_first else self.reaped[0], reaped)
        for pid in [self.postmaster, *children(self.postmaster)]:
            if pid not in self.group_of:
                group = self._group(pid)
                if group is None:
                    continue
                self.group_of[pid] = group
            value = user_system_seconds(pid)
            if value is None:
                continue
            if into_first:
                self.first[pid] = value
            self.last[pid] = value

    def used(self, *, system: bool = False) -> dict[str, float]:
        """Group -> CPU seconds used since ``start()`` (``system``: in the kernel only;
        "exited" is then left out)."""
        out: dict[str, float] = {}
        for pid, (user, sys) in self.last.items():
            group = self.group_of[pid]
            first_user, first_sys = self.first.get(pid, (0.0, 0.0))
            used = sys - first_sys if system else user + sys - first_user - first_sys
            out[group] = out.get(group, 0.0) + used
        if not system:
            gone = sum(sum(value) for pid, value in self.last.items()
                       if cpu_seconds(pid) is None)
            out["exited"] = max(0.0, self.reaped[1] - self.reaped[0] - gone)
        return out


class CpuSampler(_Sampling):
    """CPU seconds used by groups of processes between ``start()`` and the last ``sample()``.

    A group is a name and a function giving its pids now (PostgreSQL's backends come and
    go). A pid seen at ``start()`` counts from its value then; one first seen later was
    born since, and counts from zero. Sampling every second or so keeps what a process
    used before it exited, up to the last sample.
    """

    def __init__(self, groups: dict[str, Callable[[], Iterable[int]]]) -> None:
        self.groups = groups
        self.first: dict[tuple[str, int], float] = {}
        self.last: dict[tuple[str, int], float] = {}

    def _reset(self) -> None:
        self.first.clear()
        self.last.clear()

    def _read(self, *, into_first: bool) -> None:
        for name, pids in self.groups.items():
            for pid in pids():
                value = cpu_seconds(pid)
                if value is None:
                    continue
                if into_first:
                    self.first[(name, pid)] = value
                self.last[(name, pid)] = value

    def used(self) -> dict[str, float]:
        """Group -> CPU seconds used since ``start()``."""
        out = dict.fromkeys(self.groups, 0.0)
        for (name, pid), value in self.last.items():
            out[name] += value - self.first.get((name, pid), 0.0)
        return out
