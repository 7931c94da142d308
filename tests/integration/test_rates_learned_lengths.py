"""Call lengths learned at the edge: the CDRs that reach the edge over the link teach
each merchant's call-length distribution, and the edge's decision flips once enough
calls say the assumed lengths were wrong (real PostgreSQL, the edge's composition root,
its signed link endpoint and its decider)."""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import NormalDist
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from edge_server.app import DECIDER_KEY, create_app
from edge_server.config import EdgeSettings
from edge_server.flow_messages import AnnounceMode, Decided, RequestDecision
from edge_server.store import edge_migrations
from routing_rates import importer, store
from routing_rates.carriers import DEMO_CARRIERS, load_carriers
from routing_rates.cli import main
from routing_rates.profile import load_profile
from shared.config import ConfigError
from shared.db import migrate
from shared.phone import E164
from shared.signing import Signer, SigningKey
from tests.integration.test_edge_app import free_port, write_config

pytestmark = pytest.mark.integration

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
CALLER = E164("819012345678")            # a mobile: NTT Free Dial bills 10 JPY per 20 s, 20/20
DATA = Path(__file__).resolve().parents[2] / "routing_rates" / "data"
# carrier-a: 0.1333 USD (20 JPY at 150) a minute, 60/60. A 25 s call costs 20 JPY called
# back and 20 JPY kept; calls of 25 s on average cost less kept (21-22 JPY against
# 24-25 JPY), calls of 400 s less called back (130 against 190 JPY).
DECK = "prefix,destination,rate,connect,initial,increment\n8190,JP mobile,0.1333,0,60,60\n"
SHORT, LONG, CALLS, LEARN_FROM = 25, 400, 120, 100


def config(directory: Path, pki: Path, db_url: str) -> Path:
    """test_edge_app's edge config with rates on and two merchants of their own."""
    path = write_config(directory, pki, db_url, free_port())
    text = path.read_text()
    assert "[rates]\nenabled = false\n" in text
    path.write_text(text.replace("[rates]\nenabled = false\n", f"""[rates]
enabled = true
fx_base = "JPY"
fx_rates = {{ USD = "150" }}
learn_min_calls = {LEARN_FROM}
learn_prior_calls = 10
learn_refresh_s = 0.1
""") + f"""
[[merchants]]           # nothing configured: the default (exponential, mean 152.5 s)
id = "quick"
name = "Quick answers"
numbers = ["0120111111"]

[[merchants]]           # configured short; its callers talk long
id = "chatty"
name = "Chatty"
numbers = ["0120222222"]
[merchants.call_lengths.mobile]
lognormal_mean_s = {SHORT}
lognormal_sigma = 0.8
""")
    return path


def talk_seconds(mean: float, sigma: float, n: int) -> list[int]:
    """``n`` log-normal quantiles with that mean (deterministic)."""
    mu = math.log(mean) - sigma * sigma / 2
    return [max(1, math.ceil(math.exp(mu + sigma * NormalDist().inv_cdf((i + 0.5) / n))))
            for i in range(n)]


def cdr(merchant: str, seconds: int, start: datetime) -> dict[str, Any]:
    call = uuid.uuid4().hex
    end = start + timedelta(seconds=seconds)
    return {"kind": "cdr", "call_id": f"leg-{call}", "callback_id": f"cb-{call}",
            "edge_call_id": f"edge-{call}", "merchant_id": merchant, "leg": "customer",
            "destination": str(CALLER), "carrier": "carrier-a",
            "started_at": (start - timedelta(seconds=8)).isoformat(),
            "answered_at": start.isoformat(), "ended_at": end.isoformat(),
            "duration_s": f"{seconds}.000", "billed_s": -(-seconds // 60) * 60,
            "hangup_cause": 16, "disposition": "answered", "carrier_cost": None,
            "direct_cost": None}


async def post(client: TestClient[Any, Any], signer: Signer, body: bytes,
               message_id: str) -> str:
    """One signed link event; its answer's status (stored, duplicate ...)."""
    headers = signer.headers("POST", "/v1/link/events", body, message_id=message_id)
    headers["content-type"] = "application/json"
    resp = await client.post("/v1/link/events", data=body, headers=headers)
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["status"])


async def post_cdrs(client: TestClient[Any, Any], signer: Signer, merchant: str,
                    lengths: list[int]) -> list[tuple[bytes, str]]:
    """Each length as a customer leg's CDR; the (body, message id) of each."""
    start = datetime(2026, 11, 1, 9, tzinfo=UTC)
    sent = []
    for i, seconds in enumerate(lengths):
        body = json.dumps(cdr(merchant, seconds, start + timedelta(minutes=i))).encode()
        message_id = str(uuid.uuid4())
        assert await post(client, signer, body, message_id) == "stored"
        sent.append((body, message_id))
    return sent


async def decide(app: web.Application, merchant: str) -> str:
    decided = await app[DECIDER_KEY].decide(
        RequestDecision(CALLER, merchant, AnnounceMode.EARLY_MEDIA), datetime.now(UTC))
    assert isinstance(decided, Decided), decided
    return decided.reason


async def until_reason(app: web.Application, merchant: str, reason: str) -> None:
    for _ in range(250):
        if await decide(app, merchant) == reason:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{merchant}: still {await decide(app, merchant)}, not {reason}")


async def test_the_edge_learns_short_and_long_calls_and_its_decision_flips(
        tmp_path: Path, pki_dir: Path, pg_url: str, aiohttp_client: ClientFactory,
        capsys: pytest.CaptureFixture[str]) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        await migrate(conn, edge_migrations(with_rates=True))
        await store.upsert_tariffs(conn, load_carriers(DEMO_CARRIERS))
        long_ago = datetime(2024, 1, 1, tzinfo=UTC)
        await importer.import_deck(conn, "ntt-freedial", DATA / "ntt-freedial.csv",
                                   effective=long_ago)
        (tmp_path / "a.csv").write_text(DECK)
        await importer.import_deck(conn, "carrier-a", tmp_path / "a.csv",
                                   load_profile("generic"), effective=long_ago)
    finally:
        await conn.close()
    path = config(tmp_path, pki_dir, pg_url)
    client = await aiohttp_client(create_app(EdgeSettings.load_checked(path)))
    app = client.server.app
    signer = Signer([SigningKey.load(pki_dir / "callback-sign-1.key")])

    # what each merchant's configuration says: quick the default (long-tailed), chatty short
    assert await decide(app, "quick") == "callback-cheaper"
    assert await decide(app, "chatty") == "direct-cheaper"

    # fewer calls than learn_min_calls: nothing changes yet
    short, long = talk_seconds(SHORT, 0.8, CALLS), talk_seconds(LONG, 0.8, CALLS)
    await post_cdrs(client, signer, "quick", short[::2][:LEARN_FROM // 2])
    await asyncio.sleep(0.3)
    assert await decide(app, "quick") == "callback-cheaper"

    # enough of them: each merchant's decision follows its callers' real call lengths
    await post_cdrs(client, signer, "quick", short[1::2])
    sent = await post_cdrs(client, signer, "chatty", long)
    await until_reason(app, "quick", "direct-cheaper")
    await until_reason(app, "chatty", "callback-cheaper")

    # a CDR delivered twice counts once: the same message again (the link's dedup) and
    # the same CDR under a new message id (the CDR's own key)
    for body, message_id in sent[:5]:
        await post(client, signer, body, message_id)
        assert await post(client, signer, body, str(uuid.uuid4())) == "duplicate"
    async with app[DECIDER_KEY].rates._pool.acquire() as c:   # type: ignore[attr-defined]
        counts = dict(await c.fetch("SELECT merchant_id, calls FROM rates_call_length_totals "
                                    "WHERE number_class = 'mobile'"))
    assert counts == {"quick": LEARN_FROM // 2 + CALLS // 2, "chatty": CALLS}

    # the CLI says where the distribution came from
    url = ["--database-url", pg_url, "--site", "edge"]
    assert await asyncio.to_thread(main, [*url, "decide", "09012345678", "--merchant", "chatty",
                 "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("CALL BACK (callback-cheaper)")
    assert f"learned from {CALLS:,} mobile calls since 2026-11-01" in out
    assert await asyncio.to_thread(main, [*url, "decide", "09012345678", "--merchant", "quick",
                 "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("KEEP THE CALL (direct-cheaper)")
    assert f"learned from {LEARN_FROM // 2 + CALLS // 2:,} mobile calls" in out


def test_check_names_a_merchants_bad_call_lengths(tmp_path: Path, pki_dir: Path) -> None:
    path = config(tmp_path, pki_dir, "postgresql://x/y")
    text = path.read_text()
    path.write_text(text.replace(f"lognormal_mean_s = {SHORT}\nlognormal_sigma = 0.8",
                                 'distribution = "nope"'))
    with pytest.raises(ConfigError, match=r"merchants\[2\]\.call_lengths: call_lengths\.mobile: "
                                          r"unknown distribution 'nope'; known: default, long"):
        EdgeSettings.load_checked(path)
    path.write_text(text.replace("[merchants.call_lengths.mobile]",
                                 '[merchants.call_lengths]\nfile = "missing.toml"\n'
                                 "[merchants.call_lengths.mobile]"))
    with pytest.raises(ConfigError, match=r"merchants\[2\]\.call_lengths: .*missing.toml"):
        EdgeSettings.load_checked(path)
