"""Both sites as real processes, scaled out and with fault hooks, for the fault tests.

:class:`Sites` is :class:`demo.stack.Stack` (PKI, fresh databases, rate decks, real
Asterisks, ``python -m edge_server serve`` / ``python -m callback_server serve``)
plus what the scale-out and fault tests need::

    async with Sites(tmp, callback_servers=2) as sites:   # one edge, two callback servers
        ...                                               # on ONE callback database,
        sites.kill9("callback2")                          # each with its own Asterisk
        await sites.restart("callback2")

* ``callback_servers=2``: a second ``callback_server`` (HTTP 9444) driving the second
  callback Asterisk (``deploy/asterisk/callback2``, ARI 8388, SIP 5262) against the
  same callback database.
* ``edge_servers=2``: the edge scaled out behind Kamailio (``deploy/kamailio``, SIP
  127.0.0.2:5060, dispatcher over both edge Asterisks): a second ``edge_server``
  (``edge2``, HTTP 8445) driving the second edge Asterisk (``deploy/asterisk/edge2``, ARI
  8488, SIP 5162) against the same edge database. Customers call ``sites.edge_sip``.
* ``edge_routes`` / ``callback_routes``: the link's ``[[peer.routes]]`` on each side
  (e.g. internet and leased line through delaying proxies in network namespaces),
  ``peer_policy``: extra ``[peer.policy]`` / ``[peer.health]`` TOML.
* ``pg``: a :class:`PrivatePostgres` (its own postmaster, so a restart disturbs no
  other test run on the machine).
* ``ari_urls``: per callback server, the ARI URL it uses (a proxy in front of
  Asterisk lets a test cut the events websocket).

Load and SIP facts: :func:`start_carrier` (a long-running SIPp UAS per carrier),
:func:`start_customers` (many distinct callers from one SIPp), :func:`invites_by_number`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from demo.stack import REPO, TOLL_FREE, Stack, StackError
from shared import ari, pki
from tests.harness import asterisk as ast_harness
from tests.harness import kamailio as kamailio_harness
from tests.harness import sipp as sipp_harness

EDGE_HTTP_PORT = 8443
EDGE_HTTP_PORTS = {"edge": EDGE_HTTP_PORT, "edge2": 8445}
CALLBACK_HTTP_PORTS = {"callback": 9443, "callback2": 9444}
HTTP_PORTS = {**EDGE_HTTP_PORTS, **CALLBACK_HTTP_PORTS}
ASTERISK_OF = {"callback": "callback", "callback2": "callback2", "edge2": "edge2"}
ARI_URLS = {"callback": "http://127.0.0.1:8288", "callback2": "http://127.0.0.1:8388",
            "edge2": "http://127.0.0.1:8488"}

# Many new numbers in a few minutes: the guard's anomaly brake and CPS caps would (rightly)
# stop that in production, so load runs lift them (as bench/callback_latency.py does).
LOAD_GUARD_ENV = {
    "CALLBACK__GUARD__BRAKE__THRESHOLD": "100000",
    "CALLBACK__GUARD__CAPS__GLOBAL__CPS": "0",
    "CALLBACK__GUARD__CAPS__TRUNK_DEFAULT__CPS": "0",
    "CALLBACK__GUARD__CAPS__GLOBAL__CHANNELS": "0",
    "CALLBACK__GUARD__CAPS__TRUNK_DEFAULT__CHANNELS": "0",
}


def routes_toml(routes: Sequence[tuple[str, str]]) -> str:
    return "".join(f'[[peer.routes]]\nname = "{n}"\nurl = "{u}"\n\n' for n, u in routes)


def _replace_once(text: str, old: str, new: str, what: str) -> str:
    if old not in text:
        raise StackError(f"cannot set {what}: {old!r} not found in the example config")
    return text.replace(old, new, 1)


def _replace_peer(text: str, peer: str) -> str:
    """Replace the example's ``[[peer.routes]]`` blocks (up to the next other section)."""
    match = re.search(r"^\[\[peer\.routes\]\].*?(?=^\[(?!\[?peer))", text, re.S | re.M)
    if match is None:
        raise StackError("no [[peer.routes]] in the example config")
    return text[:match.start()] + peer + text[match.end():]


@dataclass
class PrivatePostgres:
    """An embedded PostgreSQL (pgserver) with its own data directory and postmaster.

    A restart fault must not hit the shared embedded server that other test runs use,
    so the fault run starts its own: ``restart()`` is ``pg_ctl restart -m fast`` on
    this data directory only (same socket directory, same URL).
    """

    directory: Path
    url: str = ""

    def start(self) -> str:
        import pgserver

        self.directory.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(  # type: ignore[attr-defined]
            str(self.directory / "pgdata"), cleanup_mode="stop")
        self.url = str(self._server.get_uri())
        return self.url

    def _pg_ctl(self, *args: str, timeout: float = 60.0) -> None:
        from pgserver import _commands

        pg_ctl = _commands.pg_ctl  # type: ignore[attr-defined]
        pg_ctl(["-w", *args], pgdata=self.directory / "pgdata", user=self._server.system_user,
               timeout=timeout)

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "stop")

    def start_again(self) -> None:
        """Start the stopped postmaster as pgserver did: no TCP, socket in the data dir."""
        pgdata = self.directory / "pgdata"
        socket_dir = self.url.rsplit("host=", 1)[1].split("&", 1)[0]
        self._pg_ctl("-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(pgdata / "log"),
                     "start")

    def restart(self, mode: str = "fast") -> None:
        self._pg_ctl("-m", mode, "restart")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._server.cleanup()
        # pgserver stops only the postmaster it started; after restart() it is another
        # one, and it would outlive the test run.
        if (self.directory / "pgdata" / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self.stop()


async def _drop(url: str) -> None:
    """Drop the database in ``url`` (best effort: the data only matters during a run)."""
    if not url:
        return
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    with contextlib.suppress(OSError, asyncpg.PostgresError):
        conn = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@dataclass
class Sites(Stack):
    callback_servers: int = 2
    edge_servers: int = 1
    edge_routes: tuple[tuple[str, str], ...] = (("internet", "https://127.0.0.1:9443"),)
    callback_routes: tuple[tuple[str, str], ...] = (("internet", "https://127.0.0.1:8443"),)
    peer_policy: str = ""
    listen_host: str = "127.0.0.1"
    sans: tuple[str, ...] = ()
    ari_urls: Mapping[str, str] = field(default_factory=lambda: dict(ARI_URLS))
    pg: PrivatePostgres | None = None
    restarts: Counter[str] = field(default_factory=Counter)
    drop_databases: bool = True      # the run's fresh databases, after the run

    @property
    def callback_names(self) -> list[str]:
        return ["callback", "callback2"][:self.callback_servers]

    @property
    def edge_names(self) -> list[str]:
        return ["edge", "edge2"][:self.edge_servers]

    @property
    def edge_sip(self) -> tuple[str, int]:
        """Where customers call: Kamailio in front of a scaled-out edge, else the edge."""
        return kamailio_harness.SIP if self.edge_servers > 1 else sipp_harness.EDGE_SIP

    async def _start(self) -> Sites:
        """Called by ``Stack.__aenter__`` once it holds the one-stack-per-machine lock."""
        # checked under the lock: before it, another run's servers still hold the ports
        require_free(*(HTTP_PORTS[name] for name in (*self.edge_names, *self.callback_names)))
        self.started_at = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki_dir = self.workdir / "pki"
        pki.init(self.pki_dir, ["edge", "callback"],
                 sans=["localhost", "127.0.0.1", *self.sans])
        await self._databases()
        await asyncio.to_thread(self._rates)
        self.edge_site = await asyncio.to_thread(ast_harness.ensure_running, "edge")
        self.asterisks = {"edge": self.edge_site}
        for name in [*self.edge_names[1:], *self.callback_names]:
            self.asterisks[name] = await asyncio.to_thread(
                ast_harness.ensure_running, ASTERISK_OF[name])
        self.callback_site = self.asterisks["callback"]
        for site in self.asterisks.values():
            await clear(site)
        self._write_site_configs()
        try:
            for name in self.edge_names:     # one at a time: the first migrates the database
                self._spawn(name, "edge_server", self.workdir / f"{name}.toml")
                await self._wait_healthy(name, EDGE_HTTP_PORTS[name])
            for name in self.callback_names:
                self._spawn(name, "callback_server", self.workdir / f"{name}.toml")
            for name in self.callback_names:
                await self._wait_healthy(name, CALLBACK_HTTP_PORTS[name])
            if self.edge_servers > 1:
                await asyncio.to_thread(kamailio_harness.ensure_running)
        except BaseException:
            self.stop_servers()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.stop_servers()
            if self.edge_servers > 1:
                await asyncio.to_thread(kamailio_harness.stop_started)
            if self.drop_databases:
                for url in (self.edge_db_url, self.callback_db_url):
                    await _drop(url)
        finally:
            self._lock.close()

    async def _databases(self) -> None:
        if self.pg is None:
            await super()._databases()
            return
        from shared.db import fresh_database

        server = self.pg.url or await asyncio.to_thread(self.pg.start)
        self.edge_db_url = await fresh_database(server, f"{self.db_prefix}_edge")
        self.callback_db_url = await fresh_database(server, f"{self.db_prefix}_callback")

    # ---- configs and processes ---------------------------------------------------------

    def _site_config(self, example: str, *, port: int, peer: str, ari_url: str | None,
                     asterisk: str | None = None) -> str:
        text = (REPO / "deploy" / example).read_text().split("[[merchants]]", 1)[0]
        text = text.replace("../var/pki/", f"{self.pki_dir}/")
        text = _replace_once(text, 'host = "127.0.0.1"\nport = ',
                             f'host = "{self.listen_host}"\nport = ', "[http] host")
        text = re.sub(r"^port = \d+$", f"port = {port}", text, count=1, flags=re.M)
        if ari_url is not None:
            text = re.sub(r'^url = "http://127\.0\.0\.1:\d+"$', f'url = "{ari_url}"', text,
                          count=1, flags=re.M)
        if asterisk is not None:    # its own Asterisk's log of answers
            text, found = re.subn(r'^answer_log = ".*"$',
                                  f'answer_log = "{ast_harness.answer_log(asterisk)}"', text,
                                  count=1, flags=re.M)
            if not found:
                raise StackError(f"cannot set answer_log: not in deploy/{example}")
        text = _replace_peer(text, peer)
        return text + "".join(m.toml() for m in self.merchants)

    def _write_site_configs(self) -> None:
        for name in self.edge_names:
            ari_url = self.ari_urls.get(name, ARI_URLS.get(name))
            (self.workdir / f"{name}.toml").write_text(self._site_config(
                "edge.example.toml", port=EDGE_HTTP_PORTS[name], ari_url=ari_url,
                peer=routes_toml(self.edge_routes) + self.peer_policy))
        for name in self.callback_names:
            text = self._site_config(
                "callback.example.toml", port=CALLBACK_HTTP_PORTS[name],
                ari_url=self.ari_urls[name], asterisk=ASTERISK_OF[name],
                peer=routes_toml(self.callback_routes) + self.peer_policy)
            if self.edge_servers > 1:     # its trunks to both edge Asterisks, edge1 first
                text = _replace_once(text, 'edge_trunks = ["edge-trunk"]',
                                     'edge_trunks = ["edge-trunk", "edge-trunk2"]',
                                     "[callback] edge_trunks")
            (self.workdir / f"{name}.toml").write_text(text)

    def _spawn(self, name: str, module: str, config: Path) -> None:
        """Like Stack._spawn, but appends to the log, so a restarted server keeps its past."""
        with open(self.workdir / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", module, "serve", "--config", str(config)],
                cwd=REPO, env=self._env(), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def kill9(self, name: str) -> int:
        """SIGKILL one server process (no drain, no clean-up); returns its pid."""
        proc = self.processes[name]
        pid = proc.pid
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        return pid

    async def restart(self, name: str) -> None:
        """Start a killed (or stopped) server again and wait until it is healthy."""
        proc = self.processes.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 30)
        module = "edge_server" if name in EDGE_HTTP_PORTS else "callback_server"
        self._spawn(name, module, self.workdir / f"{name}.toml")
        self.restarts[name] += 1
        await self._wait_healthy(name, HTTP_PORTS[name], timeout_s=60.0)

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    async def qualify_carriers(self) -> None:
        for name in self.callback_names:
            for carrier in ("carrier-a", "carrier-b"):
                await ast_harness.qualify(self.asterisks[name], carrier, within_s=10.0)


async def clear(site: ast_harness.AsteriskSite, within_s: float = 5.0) -> None:
    """Hang up every channel (Stasis or dialplan), then destroy the Stasis bridges left.

    ``tests.harness.asterisk.reset`` destroys bridges first, which fails (409) on a
    dialplan bridge that an earlier run left up; hanging its channels up removes it.
    """
    async with site.client() as client:
        deadline = time.monotonic() + within_s
        while channels := await client.list_channels():
            for channel in channels:
                await client.hangup(channel.id)
            if time.monotonic() > deadline:
                raise StackError(f"{site.name}: channels survive hang-up: "
                                 f"{', '.join(c.name for c in channels)}")
            await asyncio.sleep(0.1)
        for bridge in await client.list_bridges():
            with contextlib.suppress(ari.AriError):
                await client.destroy_bridge(bridge.id)


# ---- SIPp load -----------------------------------------------------------------------------


def start_carrier(scenario: str, role_name: str, workdir: Path, *, digits: str | None = None,
                  timeout_s: int = 1800) -> sipp_harness.SippRole:
    """A carrier (the customers' phones behind it) for a whole run: hundreds of calls."""
    return sipp_harness.start_role(scenario, port=sipp_harness.ROLE_PORTS[role_name],
                                   workdir=workdir, name=role_name, digits=digits,
                                   timeout_s=timeout_s)


def customer_numbers(count: int, first: int = 9031000000) -> list[str]:
    """``count`` distinct Japanese mobile numbers (national format): the guard limits
    call-backs per number, so every request of a load run comes from its own phone."""
    return [f"0{first + i}" for i in range(count)]


def start_customers(workdir: Path, numbers: Sequence[str], *, rate: float, name: str,
                    limit: int = 30, timeout_s: int = 1800,
                    remote: tuple[str, int] = sipp_harness.EDGE_SIP) -> sipp_harness.SippRole:
    """One SIPp calling the merchant's toll-free number once from each of ``numbers``
    (at ``remote``: the edge Asterisk, or the Kamailio in front of the edges)."""
    inf = workdir / f"{name}-callers.csv"
    inf.write_text("SEQUENTIAL\n" + "".join(f"{n};\n" for n in numbers))
    return sipp_harness.start_role(
        "customer_calls_csv.xml", port=sipp_harness.CUSTOMER_PORT, ip=sipp_harness.CUSTOMER_IP,
        workdir=workdir, name=name, remote=remote, service=TOLL_FREE,
        max_calls=len(numbers), timeout_s=timeout_s,
        extra_args=["-inf", str(inf), "-r", str(rate), "-l", str(limit)])


def port_busy(*ports: int) -> list[int]:
    """Which of ``ports`` someone already listens on (TCP)."""
    out = subprocess.run(["ss", "-Htln"], capture_output=True, text=True, check=False).stdout
    busy = []
    for port in ports:
        if re.search(rf":{port}\s", out):
            busy.append(port)
    return busy


def require_free(*ports: int) -> None:
    """Fail (naming the holder) if another run holds the servers' fixed ports."""
    busy = port_busy(*ports)
    if busy:
        holders = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True,
                                 check=False).stdout
        lines = [ln for ln in holders.splitlines() if any(f":{p} " in ln for p in busy)]
        raise StackError(f"ports {busy} are in use by another run (the servers need them):\n"
                         + "\n".join(lines))


def env_flag(name: str, default: float) -> float:
    return float(os.environ.get(name, str(default)))


# ---- invariants, from the databases and the SIPp logs ----------------------------------------


@dataclass
class Report:
    """What a load run did, and every invariant it broke (empty lists: none)."""

    edge_calls: int = 0                  # call-back requests the edge stored and released
    requests: int = 0                    # acknowledged: rows at the callback site
    completed: int = 0
    failed: Counter[str] = field(default_factory=Counter)   # by reason code
    unfinished: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)           # released at the edge, never arrived
    duplicated: list[str] = field(default_factory=list)     # numbers answered more than once
    over_limit: list[str] = field(default_factory=list)     # more rounds than max_attempts
    unpersisted_dials: list[str] = field(default_factory=list)  # INVITEs > persisted legs
    completed_unanswered: list[str] = field(default_factory=list)
    cdr_missing: list[str] = field(default_factory=list)    # answered on the wire, no CDR
    edge_cdr_missing: list[str] = field(default_factory=list)
    edge_cdr_duplicated: list[str] = field(default_factory=list)
    invites: int = 0
    answered: int = 0
    legs_by_worker: Counter[str] = field(default_factory=Counter)
    invites_by_asterisk: Counter[str] = field(default_factory=Counter)
    finished_at: list[float] = field(default_factory=list)  # epoch s, per finished request

    def violations(self) -> dict[str, list[str]]:
        checks = {
            "unfinished": self.unfinished, "lost": self.lost, "duplicated": self.duplicated,
            "over_limit": self.over_limit, "unpersisted_dials": self.unpersisted_dials,
            "completed_unanswered": self.completed_unanswered,
            "cdr_missing": self.cdr_missing, "edge_cdr_missing": self.edge_cdr_missing,
            "edge_cdr_duplicated": self.edge_cdr_duplicated,
        }
        return {k: v for k, v in checks.items() if v}

    def summary(self) -> str:
        failed = ", ".join(f"{k} {v}" for k, v in sorted(self.failed.items())) or "none"
        return (f"edge calls {self.edge_calls}, acknowledged requests {self.requests}, "
                f"completed {self.completed}, failed {sum(self.failed.values())} ({failed}), "
                f"unfinished {len(self.unfinished)}, lost {len(self.lost)}, "
                f"duplicated {len(self.duplicated)}, over attempt limit {len(self.over_limit)}, "
                f"INVITEs at carriers {self.invites}, answered {self.answered}, "
                f"legs by worker {dict(self.legs_by_worker)}, "
                f"INVITEs by Asterisk {dict(self.invites_by_asterisk)}")


def _via_port(message: sipp_harness.SipMessage) -> str:
    via = message.header("via") or ""
    match = re.search(r"UDP [\d.]+:(\d+)", via)
    return match.group(1) if match else "?"


async def collect(sites: Sites, *carriers: sipp_harness.SippRole) -> Report:
    """Check the run's invariants from both databases and the carriers' SIP traces."""
    r = Report()
    edge = await sites.fetch("edge", "SELECT edge_call_id, caller, state FROM edge_calls "
                                     "WHERE caller IS NOT NULL AND state = 'released'")
    reqs = await sites.fetch("callback", "SELECT * FROM callback_requests")
    legs = await sites.fetch("callback", "SELECT * FROM callback_attempts WHERE leg = 'customer'")
    cdrs = await sites.fetch("callback", "SELECT call_id, callback_id, answered_at FROM cdrs")
    edge_cdrs = await sites.fetch("edge", "SELECT call_id, count(*) AS n FROM cdrs GROUP BY 1")
    r.edge_calls, r.requests = len(edge), len(reqs)
    arrived = {row["edge_call_id"] for row in reqs}
    r.lost = sorted(row["edge_call_id"] for row in edge if row["edge_call_id"] not in arrived)
    wire = Wire.read(carriers)
    r.invites, r.answered = sum(wire.invites.values()), sum(wire.answered.values())
    r.invites_by_asterisk = wire.by_asterisk
    legs_of: dict[str, list[asyncpg.Record]] = {}
    for leg in legs:
        legs_of.setdefault(leg["callback_id"], []).append(leg)
        r.legs_by_worker[str(leg["worker"])] += 1
    answered_cdrs: Counter[str] = Counter(c["callback_id"] for c in cdrs
                                          if c["answered_at"] is not None)
    for req in reqs:
        _check_request(r, req, legs_of.get(req["callback_id"], []), wire,
                       answered_cdrs[req["callback_id"]])
    at_edge = {row["call_id"]: int(row["n"]) for row in edge_cdrs}
    r.edge_cdr_missing = [c["call_id"] for c in cdrs if at_edge.get(c["call_id"], 0) == 0]
    r.edge_cdr_duplicated = [c["call_id"] for c in cdrs if at_edge.get(c["call_id"], 0) > 1]
    return r


@dataclass
class Wire:
    """SIP facts at the carriers, per customer number (E.164 digits)."""

    invites: Counter[str] = field(default_factory=Counter)     # new INVITE dialogs
    answered: Counter[str] = field(default_factory=Counter)    # 200 OK sent to an INVITE
    by_asterisk: Counter[str] = field(default_factory=Counter)  # INVITEs by source SIP port

    @classmethod
    def read(cls, carriers: Sequence[sipp_harness.SippRole]) -> Wire:
        wire = cls()
        for role in carriers:
            numbers: dict[str, str] = {}
            answered: set[str] = set()
            for m in role.dialog_messages():
                if m.direction == "received" and m.method == "INVITE" and m.call_id \
                        and m.ruri_user and m.call_id not in numbers:
                    numbers[m.call_id] = m.ruri_user
                    wire.invites[m.ruri_user] += 1
                    wire.by_asterisk[_via_port(m)] += 1
                elif (m.direction == "sent" and m.status == 200 and m.cseq_method == "INVITE"
                      and m.call_id in numbers and m.call_id not in answered):
                    answered.add(m.call_id)
                    wire.answered[numbers[m.call_id]] += 1
        return wire


def _check_request(r: Report, req: asyncpg.Record, legs: list[asyncpg.Record], wire: Wire,
                   answered_cdrs: int) -> None:
    cid, number = req["callback_id"], str(req["caller"]).lstrip("+")
    if req["status"] == "completed":
        r.completed += 1
    elif req["status"] == "failed" and req["reason"]:
        r.failed[str(req["reason"])] += 1
    else:
        r.unfinished.append(f"{cid} {req['status']} {req['reason']}")
    if req["finished_at"] is not None:
        r.finished_at.append(req["finished_at"].timestamp())
    answered = wire.answered[number]
    if answered > 1:
        r.duplicated.append(f"{number} ({cid}) answered {answered} times")
    rounds = {leg["attempt_no"] for leg in legs}
    if len(rounds) > int(req["max_attempts"]):
        r.over_limit.append(f"{cid} {len(rounds)} rounds > {req['max_attempts']}")
    if wire.invites[number] > len(legs):
        r.unpersisted_dials.append(f"{number} ({cid}): {wire.invites[number]} INVITEs, "
                                   f"{len(legs)} persisted legs")
    if req["status"] == "completed" and answered != 1:
        r.completed_unanswered.append(f"{cid} completed, answered {answered}x on the wire")
    if answered_cdrs < answered:
        r.cdr_missing.append(f"{cid}: answered {answered}x on the wire, "
                             f"{answered_cdrs} answered CDRs")


async def wait_finished(sites: Sites, expected: int, *, within_s: float,
                        poll_s: float = 1.0) -> tuple[bool, float, str]:
    """Wait until ``expected`` requests exist at the callback site, all are final, and
    the CDRs their rounds wrote have left the callback site's outbox for the edge (the
    finish writes a round's CDR with its status, and the relay carries it a moment later:
    a check of the edge's CDRs made at the last finish would race that delivery).

    Returns (done, seconds waited, last status line).
    """
    started = time.monotonic()
    last = "no answer from the callback database"
    while True:
        try:
            rows = await sites.fetch(
                "callback", "SELECT count(*) AS n, count(*) FILTER (WHERE status IN "
                "('completed', 'failed')) AS done, (SELECT count(*) FROM outbox WHERE "
                "kind = 'cdr' AND delivered_at IS NULL AND dead_at IS NULL) AS cdrs "
                "FROM callback_requests")
            n, done, cdrs = int(rows[0]["n"]), int(rows[0]["done"]), int(rows[0]["cdrs"])
            last = (f"{done}/{n} finished ({expected} expected), {cdrs} CDRs not yet "
                    "delivered to the edge")
            if n >= expected and done == n and cdrs == 0:
                return True, time.monotonic() - started, last
        except (OSError, ConnectionError) as exc:
            last = f"database: {exc}"
        if time.monotonic() - started > within_s:
            return False, time.monotonic() - started, last
        await asyncio.sleep(poll_s)
