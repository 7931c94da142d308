"""deploy/prometheus/prometheus.example.yml on Debian's real Prometheus: it scrapes a served
callback site over mutual TLS with a certificate of its own from the sites' CA (the link's
pin on the edge's name does not apply to /metrics), loads the alert rules, evaluates every
one of them without an error, and holds CbgwSiteDown pending for an edge that does not
answer."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shared import pki
from tests.faults.linklab import free_port
from tests.integration.test_callback_serve_roles import (
    _config,
    _env,
    _health_by_pid,
    _serve,
    _stop,
)

pytestmark = pytest.mark.integration

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


@pytest.fixture
def callback_site(pki_dir: Path, pg_url: str, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    proc = _serve(_config(pki_dir, tmp_path), "all", _env(pg_url, port, reuse_port=False),
                  tmp_path / "server.log")
    try:
        yield port
    finally:
        _stop(proc)


@pytest.fixture
def prometheus(callback_site: int, pki_dir: Path, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: Debian's prometheus package (make deps installs "
                    "it)")
    pki.ensure_site_cert(pki_dir, "prometheus")
    edge_port, web_port = free_port(), free_port()          # no edge listens there
    config = (RULES_DIR / "prometheus.example.yml").read_text() \
        .replace("/etc/cbgw/keys", str(pki_dir)).replace("15s", "1s") \
        .replace("callback.example.com:9443", f"127.0.0.1:{callback_site}") \
        .replace("edge.example.jp:8443", f"127.0.0.1:{edge_port}")
    (tmp_path / "prometheus.yml").write_text(config)
    shutil.copy(RULES_DIR / "cbgw-alerts.yml", tmp_path)
    with open(tmp_path / "prometheus.log", "ab") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{web_port}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield f"http://127.0.0.1:{web_port}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _api(session: aiohttp.ClientSession, url: str, path: str, **params: str) -> Any:
    async with session.get(url + path, params=params) as resp:
        body = await resp.json()
        assert resp.status == 200 and body["status"] == "success", body
        return body["data"]


async def _until(what: str, within_s: float, check: Any) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        try:
            got = await check()
        except aiohttp.ClientError:
            got = None                                   # Prometheus not listening yet
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.5)


async def test_prometheus_scrapes_the_sites_and_evaluates_every_alert_rule(
        callback_site: int, prometheus: str, pki_dir: Path, tmp_path: Path) -> None:
    await _health_by_pid(callback_site, pki_dir, 1, within_s=60.0)
    async with aiohttp.ClientSession() as session:
        async def up() -> dict[str, str] | None:
            found = await _api(session, prometheus, "/api/v1/query", query="up")
            seen = {r["metric"]["job"]: r["value"][1] for r in found["result"]}
            return seen if len(seen) == 2 else None

        assert await _until("both jobs scraped", 60.0, up) == {"cbgw-callback": "1",
                                                                "cbgw-edge": "0"}, \
            (tmp_path / "prometheus.log").read_text()[-2000:]
        expiry = await _api(session, prometheus, "/api/v1/query",
                            query='cbgw_tls_certificate_expiry_timestamp_seconds'
                                  '{job="cbgw-callback", certificate="site"}')
        assert float(expiry["result"][0]["value"][1]) \
            == pki.not_after(pki_dir / "callback.pem").timestamp()

        async def evaluated() -> list[dict[str, Any]] | None:
            groups = (await _api(session, prometheus, "/api/v1/rules"))["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            never = "0001-01-01T00:00:00Z"               # Go's zero time: not evaluated yet
            return rules if rules and all(r["lastEvaluation"] != never for r in rules) \
                else None

        rules = await _until("every rule evaluated", 30.0, evaluated)
        alerting = [r for r in rules if r["type"] == "alerting"]
        assert len(alerting) == len(rules) >= 20
        assert [(r["name"], r["lastError"]) for r in rules if r["health"] != "ok"] == []

        async def site_down() -> list[dict[str, Any]] | None:
            alerts = (await _api(session, prometheus, "/api/v1/alerts"))["alerts"]
            down = [a for a in alerts if a["labels"]["alertname"] == "CbgwSiteDown"]
            return down or None

        down = await _until("CbgwSiteDown for the edge", 30.0, site_down)
        assert [(a["labels"]["job"], a["state"]) for a in down] == [("cbgw-edge", "pending")]
        assert "応答がありません" in down[0]["annotations"]["summary"]
