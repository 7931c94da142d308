"""The edge composition root: starts with Asterisk unreachable, serves, shuts down cleanly."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from edge_server.__main__ import main
from edge_server.app import STASIS_KEY, STORE_KEY, create_app, edge_relay
from edge_server.config import EdgeSettings
from edge_server.http import LINK_SHARE_KEY
from edge_server.link_share import LinkShare
from shared.config import ConfigError
from shared.db import create_pool, pool_holders
from shared.link_policy import HealthSettings, LinkPolicy
from shared.metrics_http import SAMPLE_EVERY_S
from shared.outbox import Outbox
from tests import prom
from tests.faults.linklab import (
    REQUESTS_KEY,
    effect_counts,
    link_client,
    prepare_pool,
    receiver_app,
    serve,
    verifier,
)

pytestmark = pytest.mark.integration

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(directory: Path, pki: Path, db_url: str, ari_port: int) -> Path:
    path = directory / "edge.toml"
    path.write_text(f"""
[database]
url = "{db_url}"
[http]
port = 0
[ari]
url = "http://127.0.0.1:{ari_port}"
username = "edge"
password = "x"
[signing]
keys = ["{pki}/edge-sign-1.key"]
[signing.trusted]
callback-sign-1 = "{pki}/callback-sign-1.pub"
[[peer.routes]]
name = "internet"
url = "http://127.0.0.1:{free_port()}"
[edge]
sweep_every_s = 1
[edge.timings]
answer_guard_s = 4.5
[rates]
enabled = false
[[merchants]]
id = "acme"
name = "ACME"
numbers = ["0120123456"]
announce_mode = "answer"
""")
    return path


async def test_server_starts_and_serves_while_asterisk_is_unreachable(
        tmp_path: Path, pki_dir: Path, pg_url: str, aiohttp_client: ClientFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    settings = EdgeSettings.load(write_config(tmp_path, pki_dir, pg_url, free_port()))
    assert settings.edge.timings.answer_guard_s == 4.5
    client = await aiohttp_client(create_app(settings))
    resp = await client.get("/healthz")
    body = await resp.json()
    assert resp.status == 200, body
    assert body["database"] == "up" and body["ari"] == "connecting"
    assert body["status"] == "degraded"
    assert "not reachable yet" in caplog.text
    app = client.server.app
    assert not app[STASIS_KEY].connected
    assert await app[STORE_KEY].pool.fetchval("SELECT count(*) FROM merchants") == 1


async def test_the_edge_serves_its_metrics(
        tmp_path: Path, pki_dir: Path, pg_url: str, aiohttp_client: ClientFactory) -> None:
    """``GET /metrics``: Prometheus text with the outbox backlog read from the database,
    the ARI websocket down (Asterisk unreachable), the pool in use and its acquires'
    waits, and the event loop's lateness."""
    settings = EdgeSettings.load(write_config(tmp_path, pki_dir, pg_url, free_port()))
    client = await aiohttp_client(create_app(settings))

    async def scrape() -> str:
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        return await resp.text()

    # the pool gauges are the process's: until this app's sampler has run with its pool
    # up they hold what an earlier test's app sampled, so wait for a sample after the
    # start (on a loaded machine a fixed sleep missed it: the first sample may come
    # before the pool is up, the next one late)
    samples = prom.scraped(await scrape(), "cbgw_event_loop_delay_seconds_count")
    deadline = asyncio.get_running_loop().time() + 40 * SAMPLE_EVERY_S
    while prom.scraped(text := await scrape(),
                       "cbgw_event_loop_delay_seconds_count") <= samples:
        assert asyncio.get_running_loop().time() < deadline, "no sample in 10 s"
        await asyncio.sleep(SAMPLE_EVERY_S / 2)
    assert prom.scraped(text, "cbgw_metrics_reading_up", reading="outbox_backlog") == 1.0
    assert prom.scraped(text, "cbgw_outbox_messages", state="dead") == 0.0
    assert "# TYPE cbgw_outbox_oldest_pending_seconds gauge" in text
    assert prom.scraped(text, "cbgw_ari_websocket_connected") == 0.0
    assert prom.scraped(text, "cbgw_db_pool_connections", state="max") \
        == settings.database.max_connections
    assert prom.scraped(text, "cbgw_db_pool_connections", state="size") >= 1
    # who holds them: the relay has claimed (its one connection, or let go of it)
    assert prom.scraped(text, "cbgw_db_pool_holders", holder="relay") in (0.0, 1.0)
    # nobody waits for a connection on an idle site, and the edge has no first queue
    assert prom.scraped(text, "cbgw_db_pool_waiting", queue="first") == 0.0
    assert prom.scraped(text, "cbgw_db_pool_waiting", queue="other") == 0.0
    # the link's messages hold at most the pool less [edge] store_reserve_connections
    assert client.server.app[LINK_SHARE_KEY].size == settings.link_connections() \
        == settings.database.max_connections - settings.edge.store_reserve_connections
    # every sample of the loop's lateness, and the wait of every pool acquire (the
    # outbox backlog's reading made one)
    assert prom.scraped(text, "cbgw_event_loop_delay_seconds_count") >= 1
    assert prom.scraped(text, "cbgw_db_pool_acquire_wait_seconds_count") >= 1


def test_config_errors_name_the_key(tmp_path: Path, pki_dir: Path) -> None:
    path = write_config(tmp_path, pki_dir, "postgresql://x/y", 1)
    text = path.read_text().replace('announce_mode = "answer"', 'announce_mode = "loud"')
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"edge.toml:\d+: merchants\[0\].announce_mode"):
        EdgeSettings.load(path)
    path.write_text(text.replace('announce_mode = "loud"', "")
                    .replace("answer_guard_s = 4.5", "answer_guard_s = 6"))
    with pytest.raises(ConfigError, match="answer_guard_s"):
        EdgeSettings.load(path)


def test_environment_overrides_the_file(tmp_path: Path, pki_dir: Path) -> None:
    path = write_config(tmp_path, pki_dir, "postgresql://x/y", 1)
    settings = EdgeSettings.load(path, {"EDGE__EDGE__CALLBACK_WHEN_UNRATED": "false",
                                        "EDGE__ARI__PASSWORD": "from-env"})
    assert settings.ari.password == "from-env"
    assert not settings.merchant_settings()[settings.merchants[0].numbers[0]] \
        .callback_when_unrated


def test_cli_keys_init_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "init", "--dir", str(tmp_path / "pki"), "--site", "edge",
                 "--site", "callback"]) == 0
    assert (tmp_path / "pki" / "edge-sign-1.key").exists()
    assert main(["keys", "init", "--dir", str(tmp_path / "pki")]) == 0  # idempotent
    assert "nothing to do" in capsys.readouterr().out
    example = Path(__file__).resolve().parents[2] / "deploy" / "edge.example.toml"
    config = tmp_path / "edge.toml"
    config.write_text(example.read_text().replace("../var/pki", str(tmp_path / "pki")))
    assert main(["check", "--config", str(config)]) == 0


async def test_the_edge_relay_holds_at_most_the_link_share_of_the_pool(
        tmp_path: Path, pki_dir: Path, pg_url: str) -> None:
    """A backlog over a slow link (answers after 0.3 s): ``[peer] passes_in_flight`` claims
    under way, each settling its answers as they come, hold at most the link's share of
    the edge's pool at once (the share's slots), so the reserve stays free for the calls;
    every message is delivered, once."""
    settings = EdgeSettings.load(write_config(tmp_path, pki_dir, pg_url, free_port()))
    assert settings.peer.passes_in_flight > 2
    receiver_pool = await prepare_pool(pg_url, max_size=10)
    await receiver_pool.execute("TRUNCATE outbox, inbound_messages, effects")
    receiver = receiver_app(receiver_pool, verifier(pki_dir), answer_delay_s=0.3)
    port = free_port()
    runner = await serve(receiver, pki_dir, port)
    client = link_client(pki_dir, [("r", f"https://127.0.0.1:{port}")],
                         policy=LinkPolicy(health=HealthSettings(interval_s=0)))
    pool = await create_pool(pg_url, max_size=20)
    share = LinkShare(2)
    relay = edge_relay(pool, pg_url, client, settings, share)
    async with pool.acquire() as conn, conn.transaction():
        for n in range(400):
            await Outbox.enqueue(conn, kind="test", path="/v1/link/test", payload={"n": n})
    most = {"in_use": 0, "relay": 0}
    task = asyncio.create_task(relay.run())
    try:
        while await pool.fetchval("SELECT count(*) FROM outbox WHERE delivered_at IS NULL"):
            for _ in range(100):
                most["in_use"] = max(most["in_use"], pool.get_size() - pool.get_idle_size())
                most["relay"] = max(most["relay"], pool_holders(pool)["relay"])
                await asyncio.sleep(0.001)
        assert await effect_counts(receiver_pool) == (400, 0)
        assert max(receiver[REQUESTS_KEY].values()) == 1
        assert 1 <= most["relay"] <= share.size
        assert most["in_use"] <= share.size + 1      # + the test's own count of the backlog
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
        await runner.cleanup()
        await pool.close()
        await receiver_pool.close()
