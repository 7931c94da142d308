"""The composition root: the server starts and serves with Asterisk unreachable."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from callback_server.app import WORKER_KEY, create_app
from callback_server.config import CallbackSettings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def settings(pki: Path, db_url: str, tmp_path: Path) -> CallbackSettings:
    text = (REPO / "deploy/callback.example.toml").read_text().replace("../var/pki", str(pki))
    path = tmp_path / "callback.toml"
    path.write_text(text)
    return CallbackSettings.load(path, environ={
        "CALLBACK__DATABASE__URL": db_url,
        "CALLBACK__ARI__URL": "http://127.0.0.1:9",        # nothing listens: unreachable
        "CALLBACK__RATES__ENABLED": "false",
        "CALLBACK__PEER__ROUTES": '[{name = "internet", url = "http://127.0.0.1:9"}]',
    })


async def test_starts_and_says_so_when_asterisk_is_unreachable(
        pki_dir: Path, pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    app = create_app(settings(pki_dir, pg_url, tmp_path))
    async with TestClient(TestServer(app)) as client:
        client: TestClient[Any, Any]
        resp = await client.get("/healthz")
        body = await resp.json()
        assert resp.status == 200 and body["database"] == "ok"
        assert body["ari"] == "connecting"
        assert app[WORKER_KEY].calls == {}
    assert any("not reachable" in r.getMessage() for r in caplog.records)


def test_example_config_loads(pki_dir: Path, tmp_path: Path) -> None:
    s = settings(pki_dir, "postgresql://x@127.0.0.1/x", tmp_path)
    assert s.merchants[0].id == "acme" and "order" in s.flows
    assert [r.carrier_id for r in s.callback.static_routes] == ["carrier-a", "carrier-b"]
    assert s.ari.app == "callback"
