"""``callback_server serve`` as deployed: a full server and extra intake-only processes
(``--role intake``) on one port (``[http] reuse_port``), each a real process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from shared import pki
from shared.signing import Signer, SigningKey
from tests.faults.linklab import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _config(pki_dir: Path, tmp_path: Path) -> Path:
    text = (REPO / "deploy/callback.example.toml").read_text().replace("../var/pki",
                                                                        str(pki_dir))
    path = tmp_path / "callback.toml"
    path.write_text(text)
    return path


def _env(db_url: str, port: int, *, reuse_port: bool = True) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
            "CALLBACK__DATABASE__URL": db_url,
            "CALLBACK__ARI__URL": "http://127.0.0.1:9",        # no Asterisk: nothing dials
            "CALLBACK__RATES__ENABLED": "false",
            "CALLBACK__PEER__ROUTES": '[{name = "internet", url = "http://127.0.0.1:9"}]',
            "CALLBACK__HTTP__PORT": str(port),
            "CALLBACK__HTTP__REUSE_PORT": "true" if reuse_port else "false"}


@pytest.fixture
def servers(pki_dir: Path, pg_url: str, tmp_path: Path) -> Iterator[tuple[int, list[Any]]]:
    """One full server, then two intake processes, all on one port."""
    config, port = _config(pki_dir, tmp_path), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, role in enumerate(("all", "intake", "intake")):
            with open(tmp_path / f"server-{i}.log", "wb") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "callback_server", "serve", "--config", str(config),
                     "--role", role], cwd=REPO, env=_env(pg_url, port), stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True))
            if i == 0:
                time.sleep(1.0)  # its migrations first (the others would wait on their lock)
        yield port, procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _client_ssl(pki_dir: Path) -> Any:
    return pki.client_context(pki_dir / "ca.pem", pki_dir / "edge.pem", pki_dir / "edge.key")


async def _health_by_pid(port: int, pki_dir: Path, want: int, within_s: float
                         ) -> dict[int, dict[str, Any]]:
    """``/healthz`` over new connections until ``want`` processes have answered."""
    seen: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + within_s
    connector = aiohttp.TCPConnector(ssl=_client_ssl(pki_dir), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        while len(seen) < want:
            assert time.monotonic() < deadline, f"only {len(seen)} process(es) answered: {seen}"
            try:
                async with session.get(f"https://127.0.0.1:{port}/healthz") as resp:
                    body = await resp.json()
                    if resp.status == 200:
                        seen[body["pid"]] = body
            except aiohttp.ClientError:
                await asyncio.sleep(0.2)  # not listening yet
    return seen


async def test_a_full_server_and_two_intake_processes_serve_one_port(
        servers: tuple[int, list[Any]], pki_dir: Path, pg_url: str) -> None:
    port, procs = servers
    health = await _health_by_pid(port, pki_dir, 3, within_s=60.0)
    assert {pid: h["role"] for pid, h in health.items()} == {
        procs[0].pid: "all", procs[1].pid: "intake", procs[2].pid: "intake"}
    assert health[procs[1].pid]["ari"] == "not used (intake role)"

    signer = Signer([SigningKey.load(pki_dir / "edge-sign-1.key")])
    connector = aiohttp.TCPConnector(ssl=_client_ssl(pki_dir), force_close=True)
    answers = []
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(30):  # each on a new connection: the kernel spreads them
            body = json.dumps({"edge_call_id": f"roles-{i}", "merchant_id": "acme",
                               "caller": f"+8190{12340000 + i}", "dialed": "+81120123456",
                               "received_at": "2026-12-02T01:02:03Z",
                               "announce_mode": "early_media"}).encode()
            headers = signer.headers("POST", "/v1/link/callbacks", body,
                                     message_id=str(uuid.uuid4()))
            headers["content-type"] = "application/json"
            async with session.post(f"https://127.0.0.1:{port}/v1/link/callbacks",
                                    data=body, headers=headers) as resp:
                answers.append((resp.status, await resp.json()))
    assert [status for status, _ in answers] == [202] * 30, answers
    conn = await asyncpg.connect(pg_url)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM callback_requests"
                                     " WHERE edge_call_id LIKE 'roles-%'")
    finally:
        await conn.close()
    assert stored == 30
    # GET /metrics, whichever process answers (six scrapes in a row on new connections:
    # all six on one of the three processes has odds of 1 in 243), counts all 30
    await _scrapes_until(port, pki_dir, "cbgw_guard_accepted_total 30", 6, 30.0)
    assert all(proc.poll() is None for proc in procs)


async def _scrapes_until(port: int, pki_dir: Path, line: str, in_a_row: int,
                         within_s: float) -> None:
    """Scrape ``/metrics`` over new connections until ``in_a_row`` answers in a row have
    ``line``."""
    deadline = time.monotonic() + within_s
    seen = 0
    connector = aiohttp.TCPConnector(ssl=_client_ssl(pki_dir), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        while seen < in_a_row:
            assert time.monotonic() < deadline, f"/metrics never showed {line!r} {in_a_row}x"
            async with session.get(f"https://127.0.0.1:{port}/metrics") as resp:
                text = await resp.text()
            if line in text.splitlines():
                seen += 1
            else:
                seen = 0
                await asyncio.sleep(0.5)


def test_the_intake_role_needs_reuse_port(pki_dir: Path, tmp_path: Path) -> None:
    config = _config(pki_dir, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "callback_server", "serve", "--config", str(config),
         "--role", "intake"], cwd=REPO, capture_output=True, text=True, timeout=60,
        env=_env("postgresql://x@127.0.0.1:9/x", free_port(), reuse_port=False))
    assert proc.returncode == 2
    assert f"{config}: [http] reuse_port = true is needed for --role intake" in proc.stderr


def test_the_edge_has_no_intake_role(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "edge_server", "serve", "--config",
                           str(tmp_path / "edge.toml"), "--role", "intake"], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and "invalid choice: 'intake'" in proc.stderr
