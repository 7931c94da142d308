"""Rate decks imported once, on the callback site, reach the edge over the signed link.

Both composition roots run (no Asterisk): the callback site's app with its outbox relay,
the edge's app served over mutual TLS with the test PKI, each on its own real PostgreSQL
database. Decks are imported with ``python -m routing_rates ... --distribute`` on the
callback site's database only; the edge stores what arrives and its rating service
switches at the effective time.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

import shared
from callback_server.app import POOL_KEY as CALLBACK_POOL
from callback_server.app import ROUTING_KEY
from callback_server.app import create_app as create_callback
from callback_server.config import CallbackSettings
from edge_server.app import DECIDER_KEY
from edge_server.app import create_app as create_edge
from edge_server.config import EdgeSettings
from edge_server.decide import RatesDecider
from edge_server.flow_messages import AnnounceMode, RequestDecision
from edge_server.http import POOL_KEY
from routing_rates import deck_receiver, distribute, importer, store
from routing_rates.carriers import DEMO_CARRIERS, load_carriers
from routing_rates.cli import PLIVO_DECK, main
from routing_rates.profile import load_profile
from routing_rates.service import RatingService
from shared.db import create_pool, migrate_url, package_migrations
from shared.http import ApiError
from shared.link import LinkClient, LinkRejected, accept_once
from shared.money import FxTable
from shared.outbox import encode
from shared.phone import E164
from shared.site import link_client
from tests import prom
from tests.conftest import REPO, drop_database, fresh_database
from tests.faults.linklab import free_port, serve

pytestmark = pytest.mark.integration

MOBILE = E164("819012345678")
HEADER = "prefix,destination,rate,connect,initial,increment\n"


@dataclass
class Sites:
    callback_url: str
    edge_url: str
    callback_pool: asyncpg.Pool
    edge_pool: asyncpg.Pool
    edge_rates: RatingService
    edge_decider: RatesDecider
    callback_rates: RatingService
    link: LinkClient            # signs as the callback site, over its pinned mutual TLS

    def cli(self, *args: str) -> Awaitable[int]:
        """``python -m routing_rates`` on the callback site's database."""
        return asyncio.to_thread(main, ["--database-url", self.callback_url, *args])


def _config(site: str, pki_dir: Path, tmp_path: Path) -> Path:
    text = (REPO / f"deploy/{site}.example.toml").read_text().replace("../var/pki", str(pki_dir))
    path = tmp_path / f"{site}.toml"
    path.write_text(text)
    return path


@pytest.fixture
async def sites(pki_dir: Path, pg_server_url: str, tmp_path: Path,
                request: pytest.FixtureRequest) -> AsyncIterator[Sites]:
    tag = f"t{os.getpid()}_{request.node.name[:30]}"
    cb_url = await fresh_database(pg_server_url, f"{tag}_cb")
    edge_url = await fresh_database(pg_server_url, f"{tag}_edge")
    port = free_port()
    edge_env = {"EDGE__DATABASE__URL": edge_url, "EDGE__ARI__URL": "http://127.0.0.1:9",
                "EDGE__RATES__ENABLED": "true",
                "EDGE__PEER__ROUTES": '[{name = "internet", url = "https://127.0.0.1:9"}]'}
    cb_env = {"CALLBACK__DATABASE__URL": cb_url, "CALLBACK__ARI__URL": "http://127.0.0.1:9",
              "CALLBACK__RATES__ENABLED": "true",
              "CALLBACK__PEER__ROUTES":
                  f'[{{name = "internet", url = "https://127.0.0.1:{port}"}}]'}
    edge_app = create_edge(EdgeSettings.load(_config("edge", pki_dir, tmp_path),
                                             environ=edge_env), with_ari=False)
    cb_settings = CallbackSettings.load(_config("callback", pki_dir, tmp_path), environ=cb_env)
    cb_app = create_callback(cb_settings, with_ari=False)
    edge = await serve(edge_app, pki_dir, port, site="edge")
    callback = web.AppRunner(cb_app)
    await callback.setup()  # the composition root starts: database, rates, relay
    link = link_client(cb_settings.signing, cb_settings.tls, cb_settings.peer)
    await link.start()
    decider = edge_app[DECIDER_KEY]
    assert isinstance(decider, RatesDecider) and isinstance(decider.rates, RatingService)
    callback_rates = cb_app[ROUTING_KEY].service
    assert callback_rates is not None
    try:
        yield Sites(cb_url, edge_url, cb_app[CALLBACK_POOL], edge_app[POOL_KEY], decider.rates,
                    decider, callback_rates, link)
    finally:
        await link.close()
        await callback.cleanup()
        await edge.cleanup()
        await drop_database(pg_server_url, f"{tag}_cb")
        await drop_database(pg_server_url, f"{tag}_edge")


def _deck(path: Path, mobile_rate: str, extra_rows: int = 0) -> Path:
    lines = [HEADER, f"8190,JP mobile,{mobile_rate},0,60,60\n", "81,JP fixed,0.0385,0,60,60\n"]
    lines += [f"1{n:07d},Somewhere {n},0.{n % 9000 + 1000:04d},0,60,60\n"
              for n in range(extra_rows)]
    path.write_text("".join(lines))
    return path


async def _until(check: Callable[[], Awaitable[Any]], within_s: float, what: str) -> Any:
    deadline = time.monotonic() + within_s
    while not (value := await check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)
    return value


async def _edge_deck(sites: Sites, tariff: str, version: int, within_s: float = 30.0,
                     ) -> asyncpg.Record:
    async def held() -> asyncpg.Record | None:
        row: asyncpg.Record | None = await sites.edge_pool.fetchrow(
            "SELECT * FROM rates_decks WHERE origin = 'link' AND tariff_id = $1 "
            "AND origin_version = $2", tariff, version)
        return row
    return await _until(held, within_s, f"{tariff} version {version} at the edge")


async def _latest(pool: asyncpg.Pool, tariff: str) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM rates_decks WHERE tariff_id = $1 "
                              "ORDER BY id DESC LIMIT 1", tariff)
    assert row is not None
    return row


def _carrier_b_rate(rates: RatingService, at: datetime) -> Decimal | None:
    routes, dropped = rates.quote(MOBILE, at)
    rate = next((q.rate.amount for q in routes if q.carrier_id == "carrier-b"), None)
    assert rate is not None or any(d.carrier_id == "carrier-b" for d in dropped)
    return rate


async def test_an_activated_version_reaches_the_edge_and_both_switch_at_its_time(
        sites: Sites, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await sites.cli("carriers", "load") == 0
    assert await sites.cli("import", "ntt-freedial",
                           str(REPO / "routing_rates/data/ntt-freedial.csv"), "--no-progress",
                           "--distribute", "--lead-s", "3") == 0
    assert await sites.cli("import", "carrier-b", str(_deck(tmp_path / "b1.csv", "0.0800")),
                           "--profile", "generic", "--no-progress", "--distribute",
                           "--lead-s", "6") == 0
    v1 = await _latest(sites.callback_pool, "carrier-b")
    # one transaction: the activation and its message(s)
    assert await sites.callback_pool.fetchval(
        "SELECT count(*) FROM outbox WHERE kind = 'rate_deck' AND "
        "convert_from(body, 'UTF8') LIKE $1",
        f'%"version":{v1["id"]},%') >= 1
    edge_v1 = await _edge_deck(sites, "carrier-b", v1["id"])
    assert edge_v1["effective_from"] == v1["effective_from"] > datetime.now(UTC)
    assert edge_v1["content_sha256"] == v1["content_sha256"]
    async with sites.edge_pool.acquire() as e, sites.callback_pool.acquire() as c:
        assert await distribute.deck_hash(e, edge_v1["id"]) \
            == await distribute.deck_hash(c, v1["id"]) == v1["content_sha256"]
    # not in force yet on either site: the edge decides without carrier-b, and says so.
    # Both tariffs known first: the outbox delivers concurrently, so carrier-b's deck can
    # reach the edge before ntt-freedial's, and deciding needs the inbound tariff
    await _until(lambda: _async({"carrier-b", "ntt-freedial"}
                                <= sites.edge_rates.snapshot.carriers.keys()), 30,
                 "the edge's rating service to know carrier-b and ntt-freedial")
    counted = prom.sample("cbgw_edge_decisions_no_deck_total", merchant="acme",
                          carrier="carrier-b")
    now = datetime.now(UTC)
    before = sites.edge_rates.decide(MOBILE, now, merchant="acme")
    await sites.edge_decider.decide(RequestDecision(MOBILE, "acme", AnnounceMode.EARLY_MEDIA),
                                    now)
    if now < v1["effective_from"]:
        assert {"carrier": "carrier-b", "reason": "no-deck",
                "detail": "no deck version in force on this site (none received yet)"} \
            in before.explain["dropped"]
        assert prom.sample("cbgw_edge_decisions_no_deck_total", merchant="acme",
                           carrier="carrier-b") == counted + 1
    await _until(lambda: _async(datetime.now(UTC) > v1["effective_from"]), 10, "v1's time")
    assert _carrier_b_rate(sites.edge_rates, datetime.now(UTC)) == Decimal("0.0800")

    # the next version, explicitly timed: the edge holds it before, switches at its time.
    # Nothing waits for that time, so its lead is long enough for a loaded machine's
    # import, link and preload (8 s was not, at load averages of 20-40)
    effective = (datetime.now(UTC) + timedelta(seconds=40)).replace(microsecond=0)
    assert await sites.cli("import", "carrier-b", str(_deck(tmp_path / "b2.csv", "0.0500")),
                           "--profile", "generic", "--no-progress", "--distribute",
                           "--lead-s", "3", "--effective", effective.isoformat()) == 0
    v2 = await _latest(sites.callback_pool, "carrier-b")
    edge_v2 = await _edge_deck(sites, "carrier-b", v2["id"])
    assert edge_v2["effective_from"] == effective
    assert edge_v2["content_sha256"] == v2["content_sha256"] != v1["content_sha256"]
    await _until(lambda: _async(sites.edge_rates.snapshot_at(effective).deck_id("carrier-b")
                                == edge_v2["id"]), 30, "v2 preloaded at the edge")
    assert datetime.now(UTC) < effective, "the test machine is too slow for this lead"
    just_before, just_after = effective - timedelta(milliseconds=1), effective
    assert _carrier_b_rate(sites.edge_rates, just_before) == Decimal("0.0800")
    assert _carrier_b_rate(sites.edge_rates, just_after) == Decimal("0.0500")
    old = sites.edge_rates.decide(MOBILE, just_before, merchant="acme")
    new = sites.edge_rates.decide(MOBILE, just_after, merchant="acme")
    assert old.route is not None and new.route is not None
    assert (old.route.deck_id, new.route.deck_id) == (edge_v1["id"], edge_v2["id"])
    assert new.callback_cost.amount < old.callback_cost.amount
    # the callback site's own service switches at the same instant
    assert await sites.callback_pool.fetchval(
        "SELECT effective_from FROM rates_decks WHERE id = $1", v2["id"]) == effective
    await _until(lambda: _async(sites.callback_rates.snapshot_at(effective).deck_id(
        "carrier-b") == v2["id"]), 30, "v2 preloaded at the callback site")
    assert _carrier_b_rate(sites.callback_rates, just_before) == Decimal("0.0800")
    assert _carrier_b_rate(sites.callback_rates, just_after) == Decimal("0.0500")

    # the edge's operator sees where each version came from and when it starts
    capsys.readouterr()
    listed = await asyncio.to_thread(main, ["--database-url", sites.edge_url, "--site", "edge",
                                            "--json", "decks", "list", "--tariff", "carrier-b"])
    assert listed == 0
    shown = json.loads(capsys.readouterr().out)
    assert [(d["origin"], d["origin_version"], d["effective_from"]) for d in shown] == [
        ("link", v1["id"], v1["effective_from"].isoformat()),
        ("link", v2["id"], effective.isoformat())]


async def _async(value: Any) -> Any:
    return value


async def test_redelivery_is_acknowledged_and_bad_messages_are_refused(
        sites: Sites, tmp_path: Path) -> None:
    assert await sites.cli("carriers", "load") == 0
    assert await sites.cli("import", "carrier-b", str(_deck(tmp_path / "b.csv", "0.0800")),
                           "--profile", "generic", "--no-progress", "--distribute",
                           "--lead-s", "2") == 0
    v1 = await _latest(sites.callback_pool, "carrier-b")
    held = await _edge_deck(sites, "carrier-b", v1["id"])
    [message] = await sites.callback_pool.fetch(
        "SELECT message_id, body FROM outbox WHERE kind = 'rate_deck'")
    body = json.loads(message["body"])
    decks = await sites.edge_pool.fetchval("SELECT count(*) FROM rates_decks")

    async def post(payload: dict[str, Any], mid: str) -> tuple[int, dict[str, Any]]:
        try:
            result = await sites.link.post(distribute.PATH, encode(payload), mid,
                                           kind="rate_deck")
        except LinkRejected as exc:
            return exc.status, exc.body
        return result.status, result.body

    # the same message again (same id): the first answer; a new id: acknowledged as held
    status, answer = await post(body, str(message["message_id"]))
    assert (status, answer["status"], answer["deck_id"]) == (200, "stored", held["id"])
    status, answer = await post(body, "7d4c1f0e-0000-4000-8000-000000000001")
    assert (status, answer["status"], answer["deck_id"]) == (200, "held", held["id"])
    assert await sites.edge_pool.fetchval("SELECT count(*) FROM rates_decks") == decks
    assert await sites.edge_pool.fetchval("SELECT count(*) FROM rates_deck_parts") == 0

    # malformed: 400 invalid-field naming the field, nothing stored
    for field, value in (("data", "not base64!"), ("part", 3), ("sha256", "x"),
                         ("carrier", {"id": "Bad Id"}), ("effective_from", "tomorrow")):
        status, answer = await post(body | {field: value, "version": 99},
                                    f"7d4c1f0e-0000-4000-8000-0000000001{len(field):02d}")
        assert status == 400 and answer["error"]["id"] == "invalid-field", answer
        assert answer["error"]["field"] == field
    # rows that do not hash to the stated hash: 422, nothing stored
    status, answer = await post(body | {"version": 98, "sha256": "0" * 64},
                                "7d4c1f0e-0000-4000-8000-000000000201")
    assert (status, answer["error"]["id"]) == (422, "rate-deck-hash-mismatch")
    assert await sites.edge_pool.fetchval("SELECT count(*) FROM rates_decks") == decks
    assert await sites.edge_pool.fetchval(
        "SELECT count(*) FROM inbound_messages WHERE message_id LIKE '7d4c1f0e-%'") == 1


async def test_a_real_deck_of_72554_rows_crosses_the_link(sites: Sites) -> None:
    """Plivo's published deck, as carrier-a: about 20 messages of at most 32 KiB of gzip."""
    assert await sites.cli("carriers", "load") == 0
    started = time.monotonic()
    assert await sites.cli("import", "carrier-a", str(PLIVO_DECK), "--no-progress",
                           "--distribute", "--lead-s", "5") == 0
    deck = await _latest(sites.callback_pool, "carrier-a")
    assert deck["row_count"] == 72_554
    parts = await sites.callback_pool.fetchval(
        "SELECT count(*) FROM outbox WHERE kind = 'rate_deck'")
    largest = await sites.callback_pool.fetchval(
        "SELECT max(length(body)) FROM outbox WHERE kind = 'rate_deck'")
    assert parts > 1 and largest < 64 * 1024
    held = await _edge_deck(sites, "carrier-a", deck["id"], within_s=120)
    took = time.monotonic() - started
    assert held["row_count"] == 72_554 and held["origin"] == "link"
    assert held["content_sha256"] == deck["content_sha256"]
    assert held["effective_from"] == deck["effective_from"]
    async with sites.edge_pool.acquire() as e:
        assert await distribute.deck_hash(e, held["id"]) == deck["content_sha256"]
    print(f"\n72,554 rows: {parts} messages (largest {largest:,} bytes), imported, sent and "
          f"stored at the edge in {took:.1f} s")


async def _pending_at_the_edge(sites: Sites, tmp_path: Path, ahead: timedelta,
                               ) -> tuple[asyncpg.Record, asyncpg.Record, datetime]:
    """A carrier-b deck imported with --distribute, in force ``ahead`` from now, and the
    edge's copy once it is there: (callback deck, edge deck, effective time)."""
    assert await sites.cli("carriers", "load") == 0
    later = (datetime.now(UTC) + ahead).replace(microsecond=0)
    assert await sites.cli("import", "carrier-b", str(_deck(tmp_path / "b.csv", "0.0800")),
                           "--profile", "generic", "--no-progress", "--distribute",
                           "--lead-s", "2", "--effective", later.isoformat()) == 0
    deck = await _latest(sites.callback_pool, "carrier-b")
    held = await _edge_deck(sites, "carrier-b", deck["id"])
    assert held["effective_from"] == later
    return deck, held, later


async def test_the_callback_site_distributes_by_default_and_not_with_no_distribute(
        sites: Sites, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The callback site owns the decks: a plain ``import`` there goes to the edge (in force
    after the lead); ``--no-distribute`` (a site without an edge) is in force at once and
    sends nothing; the edge never sends one."""
    assert await sites.cli("carriers", "load") == 0
    started = datetime.now(UTC)
    assert await sites.cli("import", "carrier-b", str(_deck(tmp_path / "b1.csv", "0.0800")),
                           "--profile", "generic", "--no-progress", "--lead-s", "2") == 0
    assert capsys.readouterr().out.rstrip().endswith("; sent to the edge")
    sent = await _latest(sites.callback_pool, "carrier-b")
    assert sent["effective_from"] >= started + timedelta(seconds=2)
    assert (await _edge_deck(sites, "carrier-b", sent["id"]))["content_sha256"] \
        == sent["content_sha256"]
    assert await sites.cli("import", "carrier-c", str(_deck(tmp_path / "c.csv", "0.0900")),
                           "--profile", "generic", "--no-progress", "--no-distribute") == 0
    assert "sent to the edge" not in capsys.readouterr().out
    kept = await _latest(sites.callback_pool, "carrier-c")
    assert kept["effective_from"] <= datetime.now(UTC)
    assert await sites.callback_pool.fetchval(
        "SELECT count(*) FROM outbox WHERE kind = 'rate_deck' AND "
        "convert_from(body, 'UTF8') LIKE $1", f'%"version":{kept["id"]},%') == 0
    edge = ["--database-url", sites.edge_url, "--site", "edge"]
    assert await asyncio.to_thread(main, [*edge, "import", "carrier-c", str(tmp_path / "c.csv"),
                                          "--profile", "generic", "--no-progress",
                                          "--distribute"]) == 2
    assert "--distribute: only an import or activation on the callback site" \
        in capsys.readouterr().err


async def test_a_newer_activation_moves_the_edge_copy_and_an_older_one_does_not(
        sites: Sites, tmp_path: Path) -> None:
    deck, held, later = await _pending_at_the_edge(sites, tmp_path, timedelta(hours=2))
    [first] = await sites.callback_pool.fetch("SELECT body FROM outbox WHERE kind = 'rate_deck'")
    sooner = later - timedelta(hours=1)
    assert await sites.cli("decks", "activate", str(deck["id"]), "--distribute", "--lead-s",
                           "2", "--at", sooner.isoformat()) == 0

    async def moved() -> bool:
        return bool(await sites.edge_pool.fetchval(
            "SELECT effective_from = $1 FROM rates_decks WHERE id = $2", sooner, held["id"]))
    await _until(moved, 30, "the edge's copy to move to the new time")
    # the first activation once more (a new message id): acknowledged, nothing moves back
    result = await sites.link.post(distribute.PATH, first["body"],
                                   "7d4c1f0e-0000-4000-8000-000000000301", kind="rate_deck")
    assert (result.status, result.body["status"]) == (200, "held")
    assert result.body["effective_from"] == sooner.isoformat()
    assert await sites.edge_pool.fetchval(
        "SELECT count(*) FROM rates_decks WHERE tariff_id = 'carrier-b'") == 1
    # an activation sooner than the lead is refused on the callback site, nothing sent
    messages = await sites.callback_pool.fetchval("SELECT count(*) FROM outbox")
    assert await sites.cli("decks", "activate", str(deck["id"]), "--distribute", "--lead-s",
                           "7200", "--at", sooner.isoformat()) == 2
    assert await sites.callback_pool.fetchval("SELECT count(*) FROM outbox") == messages


async def test_parts_in_any_order_concurrently_and_twice_make_one_deck(
        pg_server_url: str, tmp_path: Path) -> None:
    """The parts of one version, delivered last first, each twice under two message ids,
    all at once: one deck, the same hash, no part left behind."""
    tag = f"t{os.getpid()}_parts"
    async with _two_databases(pg_server_url, tag) as (callback, edge):
        async with callback.acquire() as conn:
            await store.upsert_tariffs(conn, load_carriers(DEMO_CARRIERS))
            result = await importer.import_deck(
                conn, "carrier-b", _deck(tmp_path / "big.csv", "0.0800", extra_rows=5_000),
                load_profile("generic"),
                distribution=distribute.Distribution(lead_s=2, chunk_bytes=4_096))
        assert result.deck is not None
        bodies = [r["body"] for r in await callback.fetch(
            "SELECT body FROM outbox WHERE kind = 'rate_deck' ORDER BY body")]
        assert len(bodies) >= 4

        last_first = list(reversed(bodies)) * 2
        answers = await asyncio.gather(*(_deliver(edge, f"m-{n}", b)
                                         for n, b in enumerate(last_first)))
        statuses = sorted(a["status"] for _, a in answers)
        assert statuses.count("stored") == 1
        assert set(statuses) <= {"stored", "partial", "held"}
        [row] = await edge.fetch("SELECT id, content_sha256 FROM rates_decks")
        async with callback.acquire() as c, edge.acquire() as e:
            assert await distribute.deck_hash(e, row["id"]) == row["content_sha256"] \
                == await distribute.deck_hash(c, result.deck.id)
        assert await edge.fetchval("SELECT count(*) FROM rates_deck_parts") == 0
        assert await edge.fetchval("SELECT row_count FROM rates_decks") == 5_002


async def test_a_version_cancelled_before_its_time_is_withdrawn_at_the_edge(
        sites: Sites, tmp_path: Path) -> None:
    deck, held, later = await _pending_at_the_edge(sites, tmp_path, timedelta(minutes=50))
    assert await sites.cli("decks", "cancel", str(deck["id"])) == 0

    async def cancelled() -> bool:
        return await sites.edge_pool.fetchval(
            "SELECT state FROM rates_decks WHERE id = $1", held["id"]) == "cancelled"
    await _until(cancelled, 30, "the edge's copy to be cancelled")
    await _until(lambda: _async(sites.edge_rates.snapshot_at(later).deck_id("carrier-b")
                                is None), 10, "the edge's rating service to drop it")


@asynccontextmanager
async def _two_databases(pg_server_url: str, tag: str,
                         ) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    """A callback site's and an edge's database with the link and rates tables (no apps):
    the tests hand the messages over themselves."""
    sets = [package_migrations("link", shared.__file__), store.migrations()]
    pools = []
    try:
        for site in ("cb", "edge"):
            url = await fresh_database(pg_server_url, f"{tag}_{site}")
            await migrate_url(url, sets)
            pools.append(await create_pool(url, min_size=2, max_size=12))
        yield pools[0], pools[1]
    finally:
        for pool in pools:
            await pool.close()
        for site in ("cb", "edge"):
            await drop_database(pg_server_url, f"{tag}_{site}")


async def _deliver(pool: asyncpg.Pool, mid: str, body: bytes | dict[str, Any]
                   ) -> tuple[int, dict[str, Any]]:
    """One message as the edge's route takes it: parsed, then accepted once."""
    message = deck_receiver.parse_message(json.loads(body) if isinstance(body, bytes)
                                          else body)
    async with pool.acquire() as conn, conn.transaction():
        return await accept_once(conn, mid, distribute.KIND,
                                 lambda c: deck_receiver.receive(c, message))


async def test_a_withdrawal_before_the_parts_and_one_after_the_version_came_into_force(
        pg_server_url: str, tmp_path: Path) -> None:
    tag = f"t{os.getpid()}_withdraw"
    async with _two_databases(pg_server_url, tag) as (callback, edge):
        async with callback.acquire() as conn:
            await store.upsert_tariffs(conn, load_carriers(DEMO_CARRIERS))
            pending = await importer.import_deck(
                conn, "carrier-b", _deck(tmp_path / "b1.csv", "0.0800"),
                load_profile("generic"), distribution=distribute.Distribution(lead_s=3600))
            assert pending.deck is not None
            await distribute.cancel(conn, pending.deck.id)
        rows = await callback.fetch(
            "SELECT message_id, body FROM outbox ORDER BY convert_from(body, 'UTF8') "
            "LIKE '%rate_deck_cancel%' DESC")
        assert [json.loads(r["body"])["kind"] for r in rows] == ["rate_deck_cancel",
                                                                 "rate_deck"]
        # the withdrawal overtakes the version: the parts arriving after it store nothing
        answers = [await _deliver(edge, str(r["message_id"]), r["body"]) for r in rows]
        assert [(s, a["status"]) for s, a in answers] == [(200, "cancelled")] * 2
        assert await edge.fetchval("SELECT count(*) FROM rates_decks") == 0
        assert await edge.fetchval("SELECT count(*) FROM rates_deck_parts") == 0

        # a version in force here already cannot be withdrawn: 422, the operator decides
        async with callback.acquire() as conn:
            now = await importer.import_deck(
                conn, "carrier-b", _deck(tmp_path / "b2.csv", "0.0700"),
                load_profile("generic"), distribution=distribute.Distribution(lead_s=0))
            assert now.deck is not None
            [part] = await conn.fetch("SELECT message_id, body FROM outbox WHERE convert_from("
                                      "body, 'UTF8') LIKE $1", f'%"version":{now.deck.id},%')
        status, answer = await _deliver(edge, str(part["message_id"]), part["body"])
        assert (status, answer["status"]) == (200, "stored")
        _, late = distribute.withdrawal(now.deck, datetime.now(UTC))
        with pytest.raises(ApiError) as refused:
            await _deliver(edge, "withdraw-late", late)
        assert (refused.value.status, refused.value.error_id) == (422, "rate-deck-in-force")
        assert await edge.fetchval("SELECT state FROM rates_decks WHERE origin_version = $1",
                                   now.deck.id) == "scheduled"


async def test_a_version_the_edge_has_not_received_is_never_assumed(
        pg_server_url: str, tmp_path: Path) -> None:
    """Each site's rating service on its own database; the link's messages handed over by
    the test. Before carrier-b's first version reaches the edge, the edge decides without
    carrier-b (dropped no-deck) while the callback site prices it. The callback site then
    activates v2, in force there at once: until v2's parts reach the edge, the edge keeps
    pricing carrier-b at v1, at any time asked about (v2's time and an hour later); once
    they arrive, it switches to v2."""
    tag = f"t{os.getpid()}_unreceived"
    fx = FxTable.from_mapping("JPY", {"USD": "150"})
    now = distribute.Distribution(lead_s=0)

    async def deliver_version(version: int) -> None:
        rows = await callback.fetch(
            "SELECT message_id, body FROM outbox WHERE kind = 'rate_deck' "
            "AND convert_from(body, 'UTF8') LIKE $1", f'%"version":{version},%')
        assert rows
        for r in rows:
            status, _ = await _deliver(edge, str(r["message_id"]), r["body"])
            assert status == 200

    async def imported(tariff: str, path: Path, profile: str | None = None) -> int:
        async with callback.acquire() as conn:
            result = await importer.import_deck(
                conn, tariff, path, load_profile(profile) if profile else None,
                distribution=now)
        assert result.deck is not None
        return result.deck.id

    def carrier_b(rates: RatingService, at: datetime) -> tuple[Decimal | None, int | None]:
        routes, dropped = rates.quote(MOBILE, at)
        route = next((q for q in routes if q.carrier_id == "carrier-b"), None)
        if route is None:
            assert any(d.carrier_id == "carrier-b" and d.reason == "no-deck" for d in dropped)
            return None, None
        return route.rate.amount, route.deck_id

    async with _two_databases(pg_server_url, tag) as (callback, edge):
        for pool in (callback, edge):   # both sites know the carriers
            async with pool.acquire() as conn:
                await store.upsert_tariffs(conn, load_carriers(DEMO_CARRIERS))
        await deliver_version(await imported(
            "ntt-freedial", REPO / "routing_rates/data/ntt-freedial.csv"))
        v1 = await imported("carrier-b", _deck(tmp_path / "b1.csv", "0.0800"), "generic")
        edge_rates = await RatingService.start(edge, fx=fx)
        cb_rates = await RatingService.start(callback, fx=fx)
        try:
            at = datetime.now(UTC)
            assert carrier_b(cb_rates, at) == (Decimal("0.0800"), v1)
            assert carrier_b(edge_rates, at) == (None, None)
            decision = edge_rates.decide(MOBILE, at)
            assert {"carrier": "carrier-b", "reason": "no-deck",
                    "detail": "no deck version in force on this site (none received yet)"} \
                in decision.explain["dropped"]

            await deliver_version(v1)
            await _until(lambda: _async(carrier_b(edge_rates, datetime.now(UTC))[0]), 10,
                         "v1 in force at the edge")
            edge_v1 = await edge.fetchval(
                "SELECT id FROM rates_decks WHERE origin_version = $1", v1)
            assert carrier_b(edge_rates, datetime.now(UTC)) == (Decimal("0.0800"), edge_v1)

            v2 = await imported("carrier-b", _deck(tmp_path / "b2.csv", "0.0500"), "generic")
            v2_from = await callback.fetchval(
                "SELECT effective_from FROM rates_decks WHERE id = $1", v2)
            await _until(lambda: _async(carrier_b(cb_rates, datetime.now(UTC))[1] == v2), 10,
                         "v2 in force at the callback site")
            await asyncio.sleep(0.5)    # a reload at the edge has had its chance
            for when in (v2_from, datetime.now(UTC), datetime.now(UTC) + timedelta(hours=1)):
                assert carrier_b(edge_rates, when) == (Decimal("0.0800"), edge_v1), when
                decided = edge_rates.decide(MOBILE, when)
                assert decided.route is not None and decided.route.deck_id == edge_v1
            assert await edge.fetchval(
                "SELECT count(*) FROM rates_decks WHERE origin_version = $1", v2) == 0

            await deliver_version(v2)
            edge_v2 = await _until(lambda: edge.fetchval(
                "SELECT id FROM rates_decks WHERE origin_version = $1", v2), 10, "v2 stored")
            await _until(lambda: _async(carrier_b(edge_rates, datetime.now(UTC))
                                        == (Decimal("0.0500"), edge_v2)), 10,
                         "the edge to switch to v2")
        finally:
            await edge_rates.close()
            await cb_rates.close()
