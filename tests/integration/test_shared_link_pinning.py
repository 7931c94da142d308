"""The link's peers are pinned, with real certificates made by ``shared.pki`` (one private CA
issuing the edge's, the callback site's and a third site's): the callback site takes link
requests only from the edge's certificate, and the edge's client talks only to a server
presenting the callback site's certificate. The site's own certificate, or another site's,
is refused, even with a valid signature."""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from shared import pki
from shared.config import LinkRoute
from shared.link import LinkClient, LinkUnavailable, certificate_names, pin_peer
from shared.link_policy import HealthSettings, LinkPolicy
from shared.signing import Signer, SigningKey
from tests.conftest import REPO
from tests.faults.linklab import free_port, prepare_pool, receiver_app, serve, verifier

pytestmark = pytest.mark.integration

NO_PROBES = LinkPolicy(health=HealthSettings(interval_s=0))


@pytest.fixture(scope="module")
def three_sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki3")
    pki.init(directory, ["edge", "callback", "other"])
    return directory


@pytest.fixture
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await prepare_pool(pg_url)
    yield p
    await p.close()


def client_ctx(pki_dir: Path, site: str | None) -> ssl.SSLContext:
    if site is None:
        return pki.client_context(pki_dir / "ca.pem")
    return pki.client_context(pki_dir / "ca.pem", pki_dir / f"{site}.pem",
                              pki_dir / f"{site}.key")


async def post_as(pki_dir: Path, site: str | None, url: str) -> tuple[int, dict[str, object]]:
    """A validly signed link message over mutual TLS with ``site``'s client certificate."""
    body = json.dumps({"n": 7}).encode()
    headers = Signer([SigningKey.load(pki_dir / "edge-sign-1.key")]).headers(
        "POST", "/v1/link/test", body, message_id=str(uuid.uuid4()))
    headers["content-type"] = "application/json"
    connector = aiohttp.TCPConnector(ssl=client_ctx(pki_dir, site))
    async with aiohttp.ClientSession(connector=connector) as session, \
            session.post(url + "/v1/link/test", data=body, headers=headers) as resp:
        return resp.status, await resp.json()


def test_site_certificates_are_issued_for_the_site_name(three_sites: Path) -> None:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((three_sites / "callback.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["callback", "localhost"]
    assert cert.subject.rfc4514_string() == "CN=callback"


@pytest.mark.parametrize("require_client_cert", [True, False], ids=["required", "optional"])
async def test_the_server_takes_only_its_peers_client_certificate(
        three_sites: Path, pool: asyncpg.Pool, require_client_cert: bool) -> None:
    app = receiver_app(pool, verifier(three_sites))
    pin_peer(app, "edge")
    port = free_port()
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = pki.server_context(three_sites / "callback.pem", three_sites / "callback.key",
                             three_sites / "ca.pem", require_client_cert=require_client_cert)
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    url = f"https://localhost:{port}"
    try:
        status, body = await post_as(three_sites, "edge", url)
        assert status == 202, body
        for stranger in ("callback", "other"):  # the site's own certificate, another site's
            status, body = await post_as(three_sites, stranger, url)
            assert status == 403, body
            assert body["error"]["id"] == "peer-not-allowed"  # type: ignore[index]
        if require_client_cert:
            with pytest.raises(aiohttp.ClientError):
                await post_as(three_sites, None, url)
        else:
            status, body = await post_as(three_sites, None, url)
            assert status == 403 and body["error"]["id"] == "peer-not-allowed"  # type: ignore[index]
    finally:
        await runner.cleanup()


def link_to(pki_dir: Path, url: str, identity: str | None) -> LinkClient:
    signer = Signer([SigningKey.load(pki_dir / "edge-sign-1.key")])
    return LinkClient([LinkRoute("r", url)], signer, client_ctx(pki_dir, "edge"),
                      policy=NO_PROBES, connect_timeout_s=2.0, peer_identity=identity)


@pytest.mark.parametrize("server_site", ["callback", "edge", "other"])
async def test_the_client_talks_only_to_its_peers_server_certificate(
        three_sites: Path, pool: asyncpg.Pool, server_site: str) -> None:
    """A route that reaches the site itself (a wrong URL) or a third site is refused in the
    TLS handshake: nothing is sent, and the message stays in the outbox to be retried."""
    port = free_port()
    runner = await serve(receiver_app(pool, verifier(three_sites)), three_sites, port,
                         site=server_site)
    link = link_to(three_sites, f"https://127.0.0.1:{port}", "callback")
    try:
        if server_site == "callback":
            delivery = await link.post("/v1/link/test", b'{"n": 8}', str(uuid.uuid4()))
            assert delivery.status == 202
        else:
            with pytest.raises(LinkUnavailable, match="certificate|hostname"):
                await link.post("/v1/link/test", b'{"n": 9}', str(uuid.uuid4()))
            assert await pool.fetchval("SELECT count(*) FROM effects WHERE n = 9") == 0
    finally:
        await link.close()
        await runner.cleanup()


def test_certificate_names_reads_cn_and_dns_names() -> None:
    cert = {"subject": ((("commonName", "edge"),),),
            "subjectAltName": (("DNS", "edge"), ("DNS", "localhost"),
                               ("IP Address", "127.0.0.1"))}
    assert certificate_names(cert) == {"edge", "localhost"}
    assert certificate_names(None) == set() and certificate_names({}) == set()


@pytest.mark.parametrize(("site", "peer"), [("edge", "callback"), ("callback", "edge")])
def test_each_site_pins_the_other_by_default_and_the_config_can_name_it(
        site: str, peer: str, three_sites: Path, tmp_path: Path) -> None:
    from callback_server.config import CallbackSettings
    from edge_server.config import EdgeSettings
    from shared.config import ConfigError

    load = EdgeSettings.load if site == "edge" else CallbackSettings.load
    text = (REPO / f"deploy/{site}.example.toml").read_text().replace("../var/pki",
                                                                       str(three_sites))
    path = tmp_path / f"{site}.toml"
    path.write_text(text)
    assert load(path).peer.identity == peer
    prefix = site.upper()
    assert load(path, {f"{prefix}__PEER__IDENTITY": "other"}).peer.identity == "other"
    with pytest.raises(ConfigError, match="peer.identity"):
        load(path, {f"{prefix}__PEER__IDENTITY": "Not A Name"})
