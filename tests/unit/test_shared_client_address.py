"""Who sent a request: the peer, or behind a trusted proxy the rightmost hop its
``X-Forwarded-For`` names that is not a proxy of ours; a forged header from anyone else
is ignored. The config key ``[http] trusted_proxies`` on both sites, a bad network an
error naming file, line and key. The access log names the same client, over a real
server."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from callback_server.config import CallbackSettings
from edge_server.config import EdgeSettings
from shared.access_log import AccessLogger
from shared.client_address import (
    TRUSTED_PROXIES_KEY,
    client_address,
    parse_network,
    resolve,
)
from shared.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
BALANCERS = (parse_network("10.0.0.0/24"), parse_network("2001:db8::/64"),
             parse_network("192.0.2.9"))


@pytest.mark.parametrize(("peer", "headers", "client"), [
    # no proxy of ours: the peer, whatever the header says
    ("198.51.100.4", ["1.2.3.4"], "198.51.100.4"),
    ("198.51.100.4", [], "198.51.100.4"),
    # the balancer: the hop it appended, not what the client wrote to its left
    ("10.0.0.5", ["6.6.6.6, 203.0.113.7"], "203.0.113.7"),
    ("10.0.0.5", ["6.6.6.6", "203.0.113.7"], "203.0.113.7"),     # two header lines
    # two proxies of ours in a row: past both
    ("10.0.0.5", ["6.6.6.6, 203.0.113.7, 192.0.2.9"], "203.0.113.7"),
    ("2001:db8::1", ["2001:db8:ffff::2, 2001:db8::7"], "2001:db8:ffff::2"),
    ("::ffff:10.0.0.5", [" 203.0.113.8 "], "203.0.113.8"),
    # only proxies named: the farthest of them; none named: the proxy itself
    ("10.0.0.5", ["10.0.0.6"], "10.0.0.6"),
    ("10.0.0.5", [], "10.0.0.5"),
    # garbage from a client is never its key: the hop that wrote it
    ("10.0.0.5", ["203.0.113.7, not-an-address"], "10.0.0.5"),
    ("10.0.0.5", ["203.0.113.7:4711"], "10.0.0.5"),
    (None, ["1.2.3.4"], None),
])
def test_the_client_is_the_rightmost_hop_no_trusted_proxy_wrote(
        peer: str | None, headers: list[str], client: str | None) -> None:
    assert resolve(peer, headers, BALANCERS) == client


def test_with_no_trusted_proxy_the_header_is_ignored() -> None:
    assert resolve("10.0.0.5", ["203.0.113.7"], ()) == "10.0.0.5"


def _settings(tmp_path: Path, site: str, http_lines: str) -> Any:
    text = (REPO / f"deploy/{site}.example.toml").read_text()
    assert "[http]\n" in text
    path = tmp_path / f"{site}.toml"
    path.write_text(text.replace("[http]\n", "[http]\n" + http_lines, 1))
    cls = EdgeSettings if site == "edge" else CallbackSettings
    return cls.load(path, {}), path


@pytest.mark.parametrize("site", ["edge", "callback"])
def test_trusted_proxies_on_both_sites_and_a_bad_network_names_file_line_key(
        tmp_path: Path, site: str) -> None:
    settings, _ = _settings(tmp_path, site, 'trusted_proxies = ["10.0.0.0/8", "::1"]\n')
    assert settings.http.trusted_proxies == (parse_network("10.0.0.0/8"),
                                             parse_network("::1/128"))
    default, _ = _settings(tmp_path, site, "")
    assert default.http.trusted_proxies == ()
    for bad in ("10.0.0.1/8", "10.0.0.0/33", "proxy.example.jp"):
        with pytest.raises(ConfigError) as err:
            _settings(tmp_path, site, f'trusted_proxies = ["192.0.2.0/24",\n  "{bad}"]\n')
        text = (tmp_path / f"{site}.toml").read_text()
        line = next(i for i, s in enumerate(text.splitlines(), 1) if "trusted_proxies" in s)
        assert str(err.value).startswith(
            f"{tmp_path}/{site}.toml:{line}: http.trusted_proxies: {bad!r} is not a network"
        ), str(err.value)
    with pytest.raises(ConfigError, match=r"http.trusted_proxies: expected an array"):
        _settings(tmp_path, site, 'trusted_proxies = "10.0.0.0/8"\n')


async def test_the_access_log_and_the_handlers_name_the_proxied_client(
        caplog: pytest.LogCaptureFixture) -> None:
    async def who(request: web.Request) -> web.Response:
        return web.Response(text=client_address(request))

    trusted = (parse_network("127.0.0.1"),)
    for proxies, expected in ((trusted, "203.0.113.7"), ((), "127.0.0.1")):
        app = web.Application()
        app[TRUSTED_PROXIES_KEY] = proxies
        app.router.add_get("/who", who)
        caplog.clear()
        server = TestServer(app, host="127.0.0.1")
        await server.start_server(access_log_class=AccessLogger.behind(proxies),
                                  access_log=logging.getLogger("aiohttp.access"))
        with caplog.at_level(logging.INFO, "aiohttp.access"):
            async with TestClient(server) as client:
                resp = await client.get("/who", headers={
                    "X-Forwarded-For": "6.6.6.6, 203.0.113.7"})
                assert await resp.text() == expected
        lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
        assert len(lines) == 1 and lines[0].startswith(f'{expected} "GET /who'), lines
