"""Per-kind link policy: config, route health, and delivery over two proxied routes.

Two delaying proxies (``internet`` and ``leased``) front one mutual-TLS
receiver backed by PostgreSQL, so a route can be partitioned (paused) or
refused without touching the other.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.client_reqrep import ConnectionKey

from shared.config import ConfigError, LinkRoute, load, root
from shared.link import LinkClient, LinkUnavailable, connection_refused
from shared.link_policy import (
    DEFAULT_PASSES_IN_FLIGHT,
    HealthSettings,
    KindPolicy,
    LinkMode,
    LinkPolicy,
    PeerSettings,
    RouteBook,
)
from shared.outbox import Outbox, OutboxRelay
from tests.faults.linklab import (
    REQUESTS_KEY,
    effect_counts,
    free_port,
    prepare_pool,
    receiver_app,
    serve,
    verifier,
)
from tests.faults.proxy import DelayProxy

PEER_TOML = """
[peer]
routes = [{name = "internet", url = "https://cb.example:9443/"},
          {name = "leased", url = "https://10.20.0.2:9443"}]

[peer.policy]
default = "primary_backup"
cdr = "both"
billing = {mode = "pinned", route = "leased"}
request_info = {mode = "primary_backup", order = ["leased", "internet"]}

[peer.health]
interval_s = 2.5
timeout_s = 1
rise = 3
"""


def _peer(tmp_path: Path, text: str) -> PeerSettings:
    path = tmp_path / "site.toml"
    path.write_text(text)
    source = load(path, "TEST", {})
    peer = PeerSettings.parse(root(source).section("peer"))
    source.check_unknown()
    return peer


def test_peer_section_parses_routes_policy_and_health(tmp_path: Path) -> None:
    peer = _peer(tmp_path, PEER_TOML)
    assert peer.routes == (LinkRoute("internet", "https://cb.example:9443"),
                           LinkRoute("leased", "https://10.20.0.2:9443"))
    p = peer.policy
    assert p.for_kind("callback_request") == KindPolicy(LinkMode.PRIMARY_BACKUP)
    assert p.for_kind("cdr").mode is LinkMode.BOTH
    assert p.for_kind("billing") == KindPolicy.pinned("leased")
    assert p.for_kind("request_info").routes == ("leased", "internet")
    assert p.health == HealthSettings(interval_s=2.5, timeout_s=1.0, rise=3)


def test_peer_section_without_policy_is_primary_backup_with_probes(tmp_path: Path) -> None:
    peer = _peer(tmp_path, '[[peer.routes]]\nname = "a"\nurl = "https://a:1"\n')
    assert peer.policy.for_kind("anything") == KindPolicy()
    assert peer.policy.health.enabled


def test_the_relays_window_is_configured_in_the_peer_section(tmp_path: Path) -> None:
    route = '[[peer.routes]]\nname = "a"\nurl = "https://a:1"\n'
    assert _peer(tmp_path, route).passes_in_flight == DEFAULT_PASSES_IN_FLIGHT == 16
    assert _peer(tmp_path, "[peer]\npasses_in_flight = 24\n" + route).passes_in_flight == 24
    with pytest.raises(ConfigError,
                       match=r"site.toml:2: peer.passes_in_flight: 0 is outside 1\.\.64"):
        _peer(tmp_path, "[peer]\npasses_in_flight = 0\n" + route)


@pytest.mark.parametrize(("policy", "message"), [
    ('billing = {mode = "pinned", route = "satellite"}', "unknown route 'satellite'"),
    ('billing = "pinned"', "pinned needs exactly one route"),
    ('cdr = "sometimes"', "expected one of primary_backup, both, pinned"),
    ('cdr = {mode = "both", routes = ["a"]}', r"routes: unknown key \(did you mean route\?\)"),
    ("cdr = 3", "expected a mode string"),
])
def test_bad_policies_are_refused_with_the_line(tmp_path: Path, policy: str,
                                                message: str) -> None:
    text = PEER_TOML.replace('cdr = "both"', policy).replace(
        'billing = {mode = "pinned", route = "leased"}', "" if "billing" in policy else
        'billing = {mode = "pinned", route = "leased"}')
    with pytest.raises(ConfigError, match=message) as err:
        _peer(tmp_path, text)
    assert "site.toml:" in str(err.value)


def test_route_book_fails_over_and_back_on_probes() -> None:
    now = [100.0]
    routes = [LinkRoute("internet", "https://a"), LinkRoute("leased", "https://b")]
    policy = LinkPolicy(kinds={"billing": KindPolicy.pinned("leased"),
                               "cdr": KindPolicy(LinkMode.BOTH)},
                        health=HealthSettings(interval_s=1, timeout_s=1, fall=2, rise=2))
    book = RouteBook(routes, policy, clock=lambda: now[0])
    names = lambda kind=None: [r.name for r in book.plan(kind)[1]]  # noqa: E731
    assert names() == ["internet", "leased"]
    book.probed("internet", False, "timeout")
    assert names() == ["internet", "leased"]  # one failed probe is not enough (fall=2)
    book.probed("internet", False, "timeout")
    assert names() == ["leased", "internet"]
    assert names("billing") == ["leased"]
    assert book.plan("cdr")[0] is LinkMode.BOTH
    book.probed("internet", True)
    assert names() == ["leased", "internet"]  # rise=2
    book.probed("internet", True)
    assert names() == ["internet", "leased"]  # failback
    book.failed("internet", "reset")  # failed deliveries count like failed probes
    assert names() == ["internet", "leased"]
    book.failed("internet", "reset")
    assert names() == ["leased", "internet"]
    now[0] += 3600  # with probing on, time alone does not bring it back
    assert names() == ["leased", "internet"]


def test_a_refused_connection_takes_a_route_down_at_once_a_timeout_does_not() -> None:
    routes = [LinkRoute("internet", "https://a"), LinkRoute("leased", "https://b")]
    book = RouteBook(routes, LinkPolicy(health=HealthSettings(fall=3, rise=2)))
    names = lambda: [r.name for r in book.plan(None)[1]]  # noqa: E731
    book.failed("internet", "TimeoutError")
    book.probed("internet", False, "TimeoutError")
    assert names() == ["internet", "leased"]  # a slow machine: two of three
    book.probed("internet", True)
    book.failed("internet", "ECONNREFUSED", refused=True)
    assert names() == ["leased", "internet"]  # nothing listens there: down now
    alone = RouteBook(routes[:1], LinkPolicy(health=HealthSettings(fall=3, rise=2)))
    alone.failed("internet", "ECONNREFUSED", refused=True)
    assert [r.name for r in alone.plan(None)[1]] == ["internet"]  # still the only way


@pytest.mark.parametrize(("exc", "refused"), [
    (ConnectionRefusedError(111, "refused"), True),
    (aiohttp.ClientConnectorError(ConnectionKey("h", 1, True, True, None, None, None),
                                  OSError(errno.ECONNREFUSED, "refused")), True),
    (aiohttp.ClientConnectorError(ConnectionKey("h", 1, True, True, None, None, None),
                                  OSError(errno.ETIMEDOUT, "timed out")), False),
    (TimeoutError(), False),
    (aiohttp.ServerDisconnectedError(), False),
])
def test_which_errors_say_the_route_is_not_there(exc: BaseException, refused: bool) -> None:
    assert connection_refused(exc) is refused


def test_route_book_without_probes_uses_quarantine() -> None:
    now = [0.0]
    routes = [LinkRoute("internet", "https://a"), LinkRoute("leased", "https://b")]
    policy = LinkPolicy(health=HealthSettings(interval_s=0))
    book = RouteBook(routes, policy, quarantine_s=15, clock=lambda: now[0])
    for _ in range(policy.health.fall):
        book.failed("internet", "reset")
    assert book.plan(None)[1][0].name == "leased"
    now[0] = 16
    assert book.plan(None)[1][0].name == "internet"


# --- delivery over two proxied routes ------------------------------------------------------


@dataclass
class Lab:
    pool: asyncpg.Pool
    app: web.Application
    internet: DelayProxy
    leased: DelayProxy
    pki_dir: Path

    def client(self, policy: LinkPolicy, **kw: float) -> LinkClient:
        from tests.faults.linklab import link_client

        return link_client(self.pki_dir, [("internet", f"https://127.0.0.1:{self.internet.port}"),
                                          ("leased", f"https://127.0.0.1:{self.leased.port}")],
                           policy=policy, **kw)


@pytest.fixture(scope="module")
async def lab(pg_url: str, pki_dir: Path) -> AsyncIterator[Lab]:
    pool = await prepare_pool(pg_url)
    app = receiver_app(pool, verifier(pki_dir))
    port = free_port()
    runner = await serve(app, pki_dir, port)
    internet = await DelayProxy(("127.0.0.1", 0), ("127.0.0.1", port), delay_s=0.02,
                                name="internet").start()
    leased = await DelayProxy(("127.0.0.1", 0), ("127.0.0.1", port), delay_s=0.005,
                              name="leased").start()
    yield Lab(pool, app, internet, leased, pki_dir)
    await internet.close()
    await leased.close()
    await runner.cleanup()
    await pool.close()


FAST_PROBES = HealthSettings(interval_s=0.2, timeout_s=1.0, fall=1, rise=2)
POLICY = LinkPolicy(kinds={"cdr": KindPolicy(LinkMode.BOTH),
                           "billing": KindPolicy.pinned("leased")}, health=FAST_PROBES)


async def _wait_for(predicate: object, within_s: float = 5.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_primary_backup_fails_over_on_partition_and_fails_back(lab: Lab) -> None:
    client = lab.client(POLICY, timeout_s=3.0, connect_timeout_s=3.0)
    await client.start()
    try:
        first = await client.post("/v1/link/test", b'{"n": 1}',
                                  "a0000000-0000-0000-0000-000000000001", kind="callback_request")
        assert first.route == "internet"
        lab.internet.pause()  # blackhole: connections hang, nothing answers
        started = time.monotonic()
        moved = await client.post("/v1/link/test", b'{"n": 2}',
                                  "a0000000-0000-0000-0000-000000000002", kind="callback_request")
        assert moved.route == "leased"
        assert time.monotonic() - started < 5.5  # one request timeout (3 s) at most
        await _wait_for(lambda: not client.route_status()["internet"].up)
        again = await client.post("/v1/link/test", b'{"n": 3}',
                                  "a0000000-0000-0000-0000-000000000003", kind="callback_request")
        assert again.route == "leased" and again.elapsed_s < 2.0  # no 3 s wait on the dead route
        lab.internet.resume()
        lab.internet.cut()  # connections held during the pause are stale now
        await _wait_for(lambda: client.route_status()["internet"].up)
        back = await client.post("/v1/link/test", b'{"n": 4}',
                                 "a0000000-0000-0000-0000-000000000004", kind="callback_request")
        assert back.route == "internet"
    finally:
        lab.internet.resume()
        await client.close()


async def test_both_sends_on_both_routes_and_the_receiver_applies_once(lab: Lab) -> None:
    client = lab.client(POLICY, timeout_s=4.0, connect_timeout_s=4.0)
    requests = lab.app[REQUESTS_KEY]
    try:
        mids = [f"b0000000-0000-0000-0000-00000000000{i}" for i in range(5)]
        for i, mid in enumerate(mids):
            d = await client.post("/v1/link/test", f'{{"n": {i}}}'.encode(), mid, kind="cdr")
            assert d.status == 202 and d.body == {"accepted": i}
        await _wait_for(lambda: all(requests[m] == 2 for m in mids))
        for mid in mids:
            assert await lab.pool.fetchval(
                "SELECT count(*) FROM effects WHERE message_id = $1", mid) == 1
        # one route partitioned: delivered by the other without waiting for it
        lab.internet.pause()
        started = time.monotonic()
        d = await client.post("/v1/link/test", b'{"n": 9}',
                              "b0000000-0000-0000-0000-000000000099", kind="cdr")
        assert d.route == "leased" and time.monotonic() - started < 2.0  # not the 4 s timeout
    finally:
        lab.internet.resume()
        await client.close()


async def test_pinned_kind_waits_for_its_route(lab: Lab) -> None:
    client = lab.client(POLICY, timeout_s=1.0)
    try:
        lab.leased.pause(reject=True)
        with pytest.raises(LinkUnavailable, match="leased"):
            await client.post("/v1/link/test", b'{"n": 1}',
                              "c0000000-0000-0000-0000-000000000001", kind="billing")
        other = await client.post("/v1/link/test", b'{"n": 2}',
                                  "c0000000-0000-0000-0000-000000000002", kind="callback_request")
        assert other.route == "internet"
        lab.leased.resume()
        d = await client.post("/v1/link/test", b'{"n": 1}',
                              "c0000000-0000-0000-0000-000000000001", kind="billing")
        assert d.route == "leased"
    finally:
        lab.leased.resume()
        await client.close()


async def test_relay_routes_each_kind_by_policy_and_records_the_route(
        lab: Lab, pg_url: str) -> None:
    await lab.pool.execute("DELETE FROM outbox")
    # no route is cut here: timeouts long enough that the first deliveries' TLS
    # handshakes, thirty at once on both sides in this one process, are not taken for a
    # route down on a slow machine (with a 1 s connect timeout both routes once timed out
    # together, and the policy rightly sent the callback requests over the leased line)
    client = lab.client(POLICY, timeout_s=10.0, connect_timeout_s=10.0)
    relay = OutboxRelay(lab.pool, pg_url, client, owner="policy", sweep_s=0.2)
    task = asyncio.create_task(relay.run())
    try:
        async with lab.pool.acquire() as conn, conn.transaction():
            for n in range(30):
                kind = ("callback_request", "cdr", "billing")[n % 3]
                await Outbox.enqueue(conn, kind=kind, path="/v1/link/test",
                                     payload={"n": 1000 + n})
        for _ in range(600):
            if not await lab.pool.fetchval(
                    "SELECT count(*) FROM outbox WHERE delivered_at IS NULL"):
                break
            await asyncio.sleep(0.05)
        rows = await lab.pool.fetch(
            "SELECT kind, last_route, count(*) AS c FROM outbox GROUP BY 1, 2 ORDER BY 1, 2")
        by = {(r["kind"], r["last_route"]): r["c"] for r in rows}
        assert by[("billing", "leased")] == 10
        assert by[("callback_request", "internet")] == 10
        assert sum(c for (k, _), c in by.items() if k == "cdr") == 10  # whichever acked first
        assert relay.delivered_by_route["leased"] >= 10
        distinct, duplicated = await effect_counts(lab.pool)
        assert duplicated == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
