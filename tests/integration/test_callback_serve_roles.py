"""``callback_server serve`` as deployed: a full server and extra intake-only processes
(``--role intake``) on one port (``[http] reuse_port``), each a real process."""

from __future__ import annotations

import asyncio
import json
import os
import pstats
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
from prometheus_client.parser import text_string_to_metric_families

from shared import metrics, pki
from shared.signing import Signer, SigningKey
from tests import prom
from tests.faults.linklab import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _config(pki_dir: Path, tmp_path: Path) -> Path:
    text = (REPO / "deploy/callback.example.toml").read_text().replace("../var/pki",
                                                                        str(pki_dir))
    path = tmp_path / "callback.toml"
    path.write_text(text)
    return path


def _env(db_url: str, port: int, *, reuse_port: bool = True,
         metrics_dir: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != metrics.ENV_DIR}
    if metrics_dir is not None:
        env["CALLBACK__HTTP__METRICS_DIR"] = str(metrics_dir)
    return {**env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
            "CALLBACK__DATABASE__URL": db_url,
            "CALLBACK__ARI__URL": "http://127.0.0.1:9",        # no Asterisk: nothing dials
            "CALLBACK__RATES__ENABLED": "false",
            "CALLBACK__PEER__ROUTES": '[{name = "internet", url = "http://127.0.0.1:9"}]',
            "CALLBACK__HTTP__PORT": str(port),
            "CALLBACK__HTTP__REUSE_PORT": "true" if reuse_port else "false"}


@pytest.fixture
def servers(pki_dir: Path, pg_url: str, tmp_path: Path) -> Iterator[tuple[int, list[Any]]]:
    """One full server, then two intake processes, all on one port, sharing the metrics
    directory ``tmp_path / "metrics"``."""
    config, port = _config(pki_dir, tmp_path), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, role in enumerate(("all", "intake", "intake")):
            procs.append(_serve(config, role, _env(pg_url, port, metrics_dir=tmp_path / "metrics"),
                                tmp_path / f"server-{i}.log"))
            if i == 0:
                time.sleep(1.0)  # its migrations first (the others would wait on their lock)
        yield port, procs
    finally:
        for proc in procs:
            _stop(proc)


def _serve(config: Path, role: str, env: dict[str, str], log_path: Path
           ) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "callback_server", "serve", "--config", str(config),
             "--role", role], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
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
        servers: tuple[int, list[Any]], pki_dir: Path, pg_url: str, tmp_path: Path) -> None:
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
    # all six on one of the three processes has odds of 1 in 243), counts all 30, which
    # the three processes wrote each in its own files of the metrics directory
    await _scrapes_until(port, pki_dir, "cbgw_guard_accepted_total", 30.0, 6, 30.0)
    assert all(proc.poll() is None for proc in procs)
    directory = tmp_path / "metrics"
    assert {p.pid for p in procs} <= {int(f.stem.rsplit("_", 1)[1])
                                      for f in directory.glob("counter_*.db")}

    # an intake process stops: its counts stay in the sum, its live gauges leave
    _stop(procs[1])
    assert not list(directory.glob(f"gauge_live*_{procs[1].pid}.db"))
    assert (directory / f"counter_{procs[1].pid}.db").exists()
    await _scrapes_until(port, pki_dir, "cbgw_guard_accepted_total", 30.0, 4, 30.0)
    text = await _scrape(port, pki_dir)
    lag_pids = {s.labels["pid"] for f in text_string_to_metric_families(text)
                for s in f.samples if s.name == "cbgw_event_loop_lag_seconds"}
    assert lag_pids == {str(procs[0].pid), str(procs[2].pid)}
    # when the certificate served and the CA trusted expire, as the processes loaded them
    for which, served in (("site", pki_dir / "callback.pem"), ("ca", pki_dir / "ca.pem")):
        assert prom.scraped(text, "cbgw_tls_certificate_expiry_timestamp_seconds",
                            certificate=which) == pki.not_after(served).timestamp()

    # the whole site stops and starts again: a new run, whose counters start at zero
    for proc in procs:
        _stop(proc)
    config = tmp_path / "callback.toml"
    procs.append(_serve(config, "all", _env(pg_url, port, metrics_dir=directory),
                        tmp_path / "server-again.log"))
    await _health_by_pid(port, pki_dir, 1, within_s=60.0)
    assert prom.scraped(await _scrape(port, pki_dir), "cbgw_guard_accepted_total") == 0.0
    assert {int(f.stem.rsplit("_", 1)[1]) for f in directory.glob("*.db")} == {procs[-1].pid}


async def _scrape(port: int, pki_dir: Path) -> str:
    connector = aiohttp.TCPConnector(ssl=_client_ssl(pki_dir), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session, \
            session.get(f"https://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


async def _scrapes_until(port: int, pki_dir: Path, name: str, value: float, in_a_row: int,
                         within_s: float) -> None:
    """Scrape ``/metrics`` over new connections until ``in_a_row`` answers in a row have
    ``name`` at ``value``."""
    deadline = time.monotonic() + within_s
    seen = 0
    while seen < in_a_row:
        assert time.monotonic() < deadline, f"/metrics never showed {name} {value} {in_a_row}x"
        if prom.scraped(await _scrape(port, pki_dir), name) == value:
            seen += 1
        else:
            seen = 0
            await asyncio.sleep(0.5)


def test_the_intake_role_needs_a_metrics_directory(pki_dir: Path, tmp_path: Path) -> None:
    config = _config(pki_dir, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "callback_server", "serve", "--config", str(config),
         "--role", "intake"], cwd=REPO, capture_output=True, text=True, timeout=60,
        env=_env("postgresql://x@127.0.0.1:9/x", free_port()))
    assert proc.returncode == 2
    assert (f"{config}: [http] metrics_dir (or PROMETHEUS_MULTIPROC_DIR) is needed for "
            "--role intake") in proc.stderr


def test_a_metrics_directory_that_cannot_be_made_is_a_config_error(
        pki_dir: Path, tmp_path: Path) -> None:
    config = _config(pki_dir, tmp_path)
    (tmp_path / "a-file").write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "callback_server", "serve", "--config", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
        env=_env("postgresql://x@127.0.0.1:9/x", free_port(),
                 metrics_dir=tmp_path / "a-file" / "metrics"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"config error: {config}: [http] metrics_dir (or PROMETHEUS_MULTIPROC_DIR) "
        f"{tmp_path / 'a-file' / 'metrics'}: Not a directory")


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


async def test_a_server_run_with_cbgw_profile_writes_its_profile_when_it_stops(
        pki_dir: Path, pg_url: str, tmp_path: Path) -> None:
    """``CBGW_PROFILE=FILE``: the server runs under cProfile on asyncio's own loop (its
    coroutines' frames in the profile) and writes the statistics to FILE at SIGTERM
    (``{site}`` in it: the site's name)."""
    port, profile = free_port(), tmp_path / "callback.prof"
    env = {**_env(pg_url, port, reuse_port=False),
           "CBGW_PROFILE": str(tmp_path / "{site}.prof")}
    proc = _serve(_config(pki_dir, tmp_path), "all", env, tmp_path / "server.log")
    try:
        await _health_by_pid(port, pki_dir, 1, within_s=60.0)
    finally:
        _stop(proc)
    assert proc.returncode == 0, (tmp_path / "server.log").read_text()[-2000:]
    functions = {(Path(file).name, name)
                 for file, _, name in pstats.Stats(str(profile)).stats}  # type: ignore[attr-defined]
    assert ("base_events.py", "_run_once") in functions          # asyncio's loop, not uvloop
    assert ("site.py", "connect_database") in functions     # the server's start, profiled
