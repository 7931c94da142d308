"""The whole two-site system on loopback, as real processes.

Used by ``make demo``, the end-to-end loop tests and the latency benchmark::

    async with Stack(workdir) as stack:      # PKI, PostgreSQL, both Asterisks, both servers
        with stack.carriers(a="uas_reject_503.xml", b="uas_answer_dtmf.xml", digits="1"):
            call = stack.customer_call(caller="09012345678")
            ...

Everything is started the way production starts it: keys by the PKI CLI,
schemas by the servers' own migrations, rate decks by the ``routing_rates``
CLI, servers as ``python -m edge_server serve`` / ``python -m callback_server
serve`` subprocesses with generated TOML configs. Each run gets fresh
databases, so runs never see each other's rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import aiohttp
import asyncpg

from shared import pki
from shared.db import embedded_url, fresh_database, init_connection
from shared.signing import Signer, SigningKey

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.harness import asterisk as ast_harness  # noqa: E402
from tests.harness import sipp as sipp_harness  # noqa: E402

EDGE_HTTP_PORT = 8443
CALLBACK_HTTP_PORT = 9443
TOLL_FREE = "0120123456"
CALL_CENTER_TOKEN = "demo-call-center-token"
#: the edge renders the merchants' closed messages into its Asterisk's sounds/<this>
CLOSED_PROMPTS = "cbgw-hours"


# The stack listens on fixed loopback ports and drives the two shared Asterisk
# instances, so only one stack runs on a machine at a time; others wait here.
LOCK_PATH = Path(os.environ.get("CBGW_STACK_LOCK", "/tmp/cbgw-stack.lock"))


def _exclusive(path: Path) -> IO[bytes]:
    handle = open(path, "ab")  # held open (and locked) for the stack's lifetime
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


class StackError(RuntimeError):
    """A component of the stack did not come up (the message names it)."""


@dataclass
class MerchantOptions:
    """One tenant of the stack: its toll-free number and call-back policy."""

    id: str = "acme"
    name: str = "ACME Mail Order"
    number: str = TOLL_FREE
    announce_mode: str = "early_media"
    pre_callback_delay_s: str = "3"
    max_attempts: int = 3
    retry_backoff_s: tuple[int, ...] = (30, 120, 600)
    ring_timeout_s: int = 30
    api_token: str = CALL_CENTER_TOKEN
    #: the merchant's ``[merchants.hours]`` tables, as TOML (empty: always open)
    hours: str = ""
    #: the numbers advisors call to go online / offline (none unless given; written before
    #: ``hours``, whose tables would take them)
    presence_online_number: str | None = None
    presence_offline_number: str | None = None
    ivr_flow: str = "order"        # callback_server/flows/<name>.toml

    def toml(self) -> str:
        presence = "".join(f'{key} = "{number}"\n' for key, number in (
            ("presence_online_number", self.presence_online_number),
            ("presence_offline_number", self.presence_offline_number)) if number)
        return f"""
[[merchants]]
id = "{self.id}"
name = "{self.name}"
numbers = ["{self.number}"]
callback_caller_id = "{self.number}"
announce_mode = "{self.announce_mode}"
inbound_tariff = "ntt-freedial"
pre_callback_delay_s = {self.pre_callback_delay_s}
max_attempts = {self.max_attempts}
retry_backoff_s = [{", ".join(str(b) for b in self.retry_backoff_s)}]
ring_timeout_s = {self.ring_timeout_s}
ivr_flow = "{self.ivr_flow}"
operator = "operator"
api_token_sha256 = "{hashlib.sha256(self.api_token.encode()).hexdigest()}"
{presence}{self.hours}"""


@dataclass
class Stack:
    workdir: Path
    merchants: tuple[MerchantOptions, ...] = (MerchantOptions(),)
    db_prefix: str = "cbgw_stack"
    log_level: str = "INFO"
    extra_env: Mapping[str, str] = field(default_factory=dict)
    #: one site's server's own environment on top (e.g. ``{"edge": {...}}``)
    server_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: TOML appended to the callback site's config (e.g. ``[[notify.channels]]`` tables)
    callback_config: str = ""
    #: on exit, stop the Asterisks this process started (the demo leaves nothing running;
    #: an Asterisk found running is left alone). Tests keep theirs for the next module
    #: and stop them at the session's end (tests/conftest.py).
    stop_asterisks: bool = False
    stopped_asterisks: list[str] = field(default_factory=list)

    edge_db_url: str = ""
    callback_db_url: str = ""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    started_at: float = 0.0

    # ---- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Stack:
        self._lock = await asyncio.to_thread(_exclusive, LOCK_PATH)
        try:
            return await self._start()
        except BaseException:
            await self._release()
            raise

    async def _start(self) -> Stack:
        self.started_at = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki_dir = self.workdir / "pki"
        pki.init(self.pki_dir, ["edge", "callback"])
        await self._databases()
        await asyncio.to_thread(self._rates)
        self.edge_site = await asyncio.to_thread(ast_harness.ensure_running, "edge")
        self.callback_site = await asyncio.to_thread(ast_harness.ensure_running, "callback")
        await ast_harness.reset(self.edge_site)
        await ast_harness.reset(self.callback_site)
        self._write_configs()
        for name in ("edge", "callback"):
            (self.workdir / f"{name}.log").unlink(missing_ok=True)
        try:
            self._spawn("edge", "edge_server", self.workdir / "edge.toml")
            self._spawn("callback", "callback_server", self.workdir / "callback.toml")
            await self._wait_healthy("edge", EDGE_HTTP_PORT)
            await self._wait_healthy("callback", CALLBACK_HTTP_PORT)
        except BaseException:
            self.stop_servers()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.stop_servers()
        finally:
            await self._release()

    async def _release(self) -> None:
        """Stop the Asterisks we started (if asked) while still holding the lock: once
        it is released, another run may be using them."""
        try:
            if self.stop_asterisks:
                self.stopped_asterisks = await asyncio.to_thread(ast_harness.stop_started)
        finally:
            self._lock.close()

    def stop_servers(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()

    # ---- databases and rates ---------------------------------------------------------

    async def _databases(self) -> None:
        server: str = os.environ.get("DATABASE_URL") or ""
        if not server:
            server = await asyncio.to_thread(embedded_url, "postgres")
        self.edge_db_url = await fresh_database(server, f"{self.db_prefix}_edge")
        self.callback_db_url = await fresh_database(server, f"{self.db_prefix}_callback")

    def _rates(self) -> None:
        """Load carriers, carrier decks and the inbound tariff into both sites' databases."""
        for url in (self.edge_db_url, self.callback_db_url):
            self.run_cli(["-m", "routing_rates", "--database-url", url, "demo-setup"],
                         name="routing_rates")

    def run_cli(self, args: list[str], *, name: str) -> str:
        proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True,
                              text=True, timeout=300, env=self._env())
        if proc.returncode != 0:
            raise StackError(f"{name} {' '.join(args[:4])}... failed ({proc.returncode}):\n"
                             f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        return proc.stdout

    # ---- servers --------------------------------------------------------------------

    def _write_configs(self) -> None:
        tenants = "".join(m.toml() for m in self.merchants)
        for site, example in (("edge", "edge.example.toml"),
                              ("callback", "callback.example.toml")):
            text = (REPO / "deploy" / example).read_text()
            text = text.split("[[merchants]]", 1)[0]
            text = text.replace("../var/pki/", f"{self.pki_dir}/")
            if site == "edge":   # closed messages are rendered where its Asterisk reads
                host, inner = ast_harness.sounds_dir("edge", CLOSED_PROMPTS)
                header = "\n[edge.hours]\n"
                if header not in text:
                    raise StackError(f"deploy/{example} has no [edge.hours] table")
                text = text.replace(header, f'{header}prompts_dir = "{host}"\n'
                                            f'asterisk_prompts_dir = "{inner}"\n')
            own = self.callback_config if site == "callback" else ""
            (self.workdir / f"{site}.toml").write_text(text + tenants + own)

    def _env(self, site: str | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
            "EDGE__DATABASE__URL": self.edge_db_url,
            "CALLBACK__DATABASE__URL": self.callback_db_url,
            "LOG_LEVEL": self.log_level,
            "LOG_FORMAT": "json",       # whatever the caller's shell says: tests parse it
            # the callback Asterisk's log of answers (deploy/asterisk/callback/cel.conf)
            "CALLBACK__CALLBACK__ANSWER_LOG": str(ast_harness.answer_log("callback")),
        })
        env.update(self.extra_env)
        env.update(self.server_env.get(site or "", {}))
        return env

    async def restart_server(self, name: str, *, kill: bool = False) -> None:
        """Stop one site's server (SIGKILL if ``kill``: a crash) and start it again."""
        proc = self.processes[name]
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 15)
        module = f"{name}_server"
        self._spawn(name, module, self.workdir / f"{name}.toml")
        await self._wait_healthy(name, EDGE_HTTP_PORT if name == "edge" else CALLBACK_HTTP_PORT)

    def _spawn(self, name: str, module: str, config: Path) -> None:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as log:    # a restarted server keeps its past
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", module, "serve", "--config", str(config)],
                cwd=REPO, env=self._env(name), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    @property
    def edge_url(self) -> str:
        return f"https://127.0.0.1:{EDGE_HTTP_PORT}"

    @property
    def callback_url(self) -> str:
        return f"https://127.0.0.1:{CALLBACK_HTTP_PORT}"

    def client_ssl(self) -> ssl.SSLContext:
        """A TLS client context trusting the stack's CA (with the edge's client cert)."""
        return pki.client_context(self.pki_dir / "ca.pem", self.pki_dir / "edge.pem",
                                  self.pki_dir / "edge.key")

    async def post_link(self, session: aiohttp.ClientSession, path: str,
                        payload: Mapping[str, Any]) -> tuple[int, Any]:
        """POST a message to the callback site signed with the edge's key, as the edge
        would: for tests of what the callback site does with validly signed input."""
        body = json.dumps(payload).encode()
        signer = Signer([SigningKey.load(self.pki_dir / "edge-sign-1.key")])
        headers = signer.headers("POST", path, body)
        headers["content-type"] = "application/json"
        async with session.post(self.callback_url + path, data=body, headers=headers) as resp:
            return resp.status, await resp.json()

    async def _wait_healthy(self, name: str, port: int, timeout_s: float = 30.0) -> None:
        ctx = self.client_ssl()
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
            while time.monotonic() < deadline:
                proc = self.processes[name]
                if proc.poll() is not None:
                    raise StackError(f"{name} server exited with {proc.returncode}:\n"
                                     f"{self.log_tail(name)}")
                try:
                    async with session.get(f"https://127.0.0.1:{port}/healthz") as resp:
                        body = await resp.json()
                        if resp.status == 200 and body.get("ari") == "connected":
                            return
                        last = f"HTTP {resp.status} {body}"
                except (aiohttp.ClientError, OSError) as exc:
                    last = str(exc)
                await asyncio.sleep(0.2)
        raise StackError(f"{name} server not healthy after {timeout_s} s ({last}):\n"
                         f"{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # ---- SIPp roles -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def carriers(self, *, a: str = "uas_answer_dtmf.xml", b: str = "uas_reject_503.xml",
                       digits: str | None = None, operator: str = "uas_answer_hold.xml",
                       pcap_options: Mapping[str, int] | None = None,
                       timeout_s: int = 120
                       ) -> AsyncIterator[dict[str, sipp_harness.SippRole]]:
        """Carrier A, carrier B and the operator, as SIPp roles, qualified and ready.

        The carrier that answers is the customer's phone on the call-back; ``digits``
        are the keys it presses (RFC 4733). With the demo decks carrier B is the
        cheapest for Japanese mobiles, so it is tried first. Each trunk is qualified
        (OPTIONS) before this yields: Asterisk refuses to dial an unqualified trunk.
        ``pcap_options`` shape the media every role plays (``make_dtmf_pcap``: e.g.
        ``tail_ms``, PCMU silence after the keys, so a phone keeps sending audio).
        ``timeout_s``: how long the roles run at most (SIPp's hard cap; calls longer than
        two minutes need more).
        """
        with contextlib.ExitStack() as stack:
            roles = {
                "carrier-a": stack.enter_context(
                    sipp_harness.role(a, "carrier-a", self.workdir, digits=digits,
                                      pcap_options=pcap_options, timeout_s=timeout_s)),
                "carrier-b": stack.enter_context(
                    sipp_harness.role(b, "carrier-b", self.workdir, digits=digits,
                                      pcap_options=pcap_options, timeout_s=timeout_s)),
                "operator": stack.enter_context(
                    sipp_harness.role(operator, "operator", self.workdir,
                                      pcap_options=pcap_options, timeout_s=timeout_s)),
            }
            for trunk in ("carrier-a", "carrier-b"):
                await ast_harness.qualify(self.callback_site, trunk)
            await ast_harness.qualify(self.edge_site, "operator")
            yield roles

    def customer_call(self, caller: str = "09012345678", *, dialled: str = TOLL_FREE,
                      privacy: str = "none", pai: str | None = None,
                      remote: tuple[str, int] = sipp_harness.EDGE_SIP
                      ) -> sipp_harness.SippRole:
        """The customer's call to ``remote`` (the edge Asterisk, or Kamailio in front of
        a scaled-out edge: ``Sites.edge_sip``)."""
        return sipp_harness.customer_call(self.workdir, dialled=dialled, caller=caller,
                                          privacy=privacy, pai=pai, remote=remote)

    # ---- reading results ---------------------------------------------------------------

    async def fetch(self, site: str, query: str, *args: Any) -> list[asyncpg.Record]:
        url = self.edge_db_url if site == "edge" else self.callback_db_url
        conn = await asyncpg.connect(url)
        try:
            await init_connection(conn)
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    async def wait_for_row(self, site: str, query: str, *args: Any,
                           timeout_s: float = 30.0) -> asyncpg.Record:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = await self.fetch(site, query, *args)
            if rows:
                return rows[0]
            await asyncio.sleep(0.1)
        raise StackError(f"no row in {site} DB after {timeout_s} s for: {query}\n"
                         f"--- edge log ---\n{self.log_tail('edge')}\n"
                         f"--- callback log ---\n{self.log_tail('callback')}")
