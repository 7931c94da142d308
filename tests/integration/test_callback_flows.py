"""Merchants' stored IVR flows against real PostgreSQL: versions over the API, invalid uploads
naming file, line and node, activation reaching running processes (NOTIFY) without a
restart, a round keeping the flow it started with, the CLI."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from callback_server.active_flows import ActiveFlows
from callback_server.flows_cli import main as flows_cli
from callback_server.flows_http import install
from callback_server.flows_store import FlowStore
from callback_server.ivr_flow import FLOWS_DIR, Flow, load_named
from callback_server.ivr_services import prerender, site_speech
from callback_server.routing import Routing
from callback_server.store import CallbackStore
from callback_server.testing import FakeAri, FixedRater
from callback_server.worker import Worker, WorkerSettings
from ivr_platform.media_config import MediaSettings
from shared import ari
from shared.db import create_pool
from shared.language import Language
from tests.integration import callback_db
from tests.integration.test_callback_http import MERCHANTS, TOKEN, make_app
from tests.integration.test_callback_worker import ROUTES, intake, wait_for
from tests.integration.test_guard_cli import config  # noqa: F401  (a fixture)

pytestmark = pytest.mark.integration

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
ACME = MERCHANTS[0]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BENTO = {"Authorization": "Bearer bento"}
pool, clean = callback_db.fixtures(MERCHANTS)


def flow(name: str, first: str, second: str) -> str:
    return f"""\
name = "{name}"
start = "main"

[nodes.main]
type = "menu"
prompt = ["{first}"]
choices = {{ "1" = "after", "9" = "main" }}
on_fail = "bye"

[nodes.after]
type = "say"
prompt = ["{second}"]
next = "bye"

[nodes.bye]
type = "hangup"
"""


V1 = flow("spring", "sound:cbgw/welcome-menu", "sound:cbgw/thanks")
V2 = flow("summer", "sound:cbgw/confirm", "sound:cbgw/goodbye")


@pytest.fixture
async def flows_clean(clean: asyncpg.Pool) -> asyncpg.Pool:
    await clean.execute("TRUNCATE ivr_flow_active, ivr_flow_versions, callback_round_flows")
    return clean


@pytest.fixture
async def client(flows_clean: asyncpg.Pool, aiohttp_client: ClientFactory
                 ) -> TestClient[Any, Any]:
    app = make_app(None)
    install(app, lambda _: flows_clean)
    return await aiohttp_client(app)


async def reply(resp: Any, status: int) -> Any:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    return await resp.json()


async def test_uploads_are_versions_and_one_is_active(client: TestClient[Any, Any]) -> None:
    up = await reply(await client.post("/v1/ivr/flows?file=spring.toml&author=ana", data=V1,
                                       headers=AUTH), 201)
    assert {k: up[k] for k in ("merchant_id", "version", "name", "filename", "created_by",
                               "active")} == {
        "merchant_id": "acme", "version": 1, "name": "spring", "filename": "spring.toml",
        "created_by": "ana", "active": False}
    assert up["sha256"] == hashlib.sha256(V1.encode()).hexdigest() and "source" not in up
    again = await reply(await client.post("/v1/ivr/flows", data=V1, headers=AUTH), 200)
    assert again == up                              # the same text is the same version
    assert (await reply(await client.post("/v1/ivr/flows", data=V2, headers=AUTH),
                        201))["version"] == 2
    listed = await reply(await client.get("/v1/ivr/flows", headers=AUTH), 200)
    assert listed["active"] is None and [v["version"] for v in listed["items"]] == [2, 1]

    on = await reply(await client.post("/v1/ivr/flows/1/activate?author=ana", headers=AUTH),
                     200)
    assert on["version"] == 1 and on["active"] is True
    await reply(await client.post("/v1/ivr/flows/2/activate", headers=AUTH), 200)
    listed = await reply(await client.get("/v1/ivr/flows", headers=AUTH), 200)
    assert listed["active"] == 2 and [v["active"] for v in listed["items"]] == [True, False]
    one = await reply(await client.get("/v1/ivr/flows/1", headers=AUTH), 200)
    assert one["source"] == V1 and one["active"] is False     # kept, for rollback
    assert (await reply(await client.post("/v1/ivr/flows/1/activate", headers=AUTH),
                        200))["active"] is True

    # another merchant sees none of it
    assert (await reply(await client.get("/v1/ivr/flows", headers=BENTO), 200))["items"] == []
    for method, path, auth in (("GET", "/v1/ivr/flows/1", BENTO),
                               ("POST", "/v1/ivr/flows/1/activate", BENTO),
                               ("POST", "/v1/ivr/flows/7/activate", AUTH)):
        err = await reply(await client.request(method, path, headers=auth), 404)
        assert err["error"]["id"] == "not-found"
    assert (await reply(await client.get("/v1/ivr/flows", headers={}), 401)
            )["error"]["id"] == "auth-missing"


async def test_an_invalid_upload_is_400_naming_file_line_and_node(
        client: TestClient[Any, Any], flows_clean: asyncpg.Pool) -> None:
    bad = V1.replace('next = "bye"', 'next = "main"\nvolume = 3')
    for path in ("/v1/ivr/flows?file=spring.toml", "/v1/ivr/flows/validate?file=spring.toml"):
        err = (await reply(await client.post(path, data=bad, headers=AUTH), 400))["error"]
        assert err == {"id": "invalid-flow", "file": "spring.toml", "line": 14,
                       "node": "after", "message": "spring.toml:14: node 'after': unknown "
                                                   "keys for a say node: volume"}
    looping = V1.replace('next = "bye"', 'next = "after"')     # says itself for ever
    err = (await reply(await client.post("/v1/ivr/flows", data=looping, headers=AUTH),
                       400))["error"]
    assert (err["node"], err["line"]) == ("after", 10)
    assert err["message"].endswith("loop without exit: from after no path reaches a hangup, "
                                   "operator, transfer or return node")
    err = (await reply(await client.post("/v1/ivr/flows", data=b"\xff\xfe", headers=AUTH),
                       400))["error"]
    assert err["id"] == "invalid-flow" and "not UTF-8" in err["message"]
    err = (await reply(await client.post("/v1/ivr/flows", data="x" * 300_000, headers=AUTH),
                       413))["error"]
    assert err["id"] == "flow-too-large"
    err = (await reply(await client.post("/v1/ivr/flows?file=a/b", data=V1, headers=AUTH),
                       400))["error"]
    assert (err["id"], err["field"]) == ("invalid-field", "file")
    ok = await reply(await client.post("/v1/ivr/flows/validate", data=V1, headers=AUTH), 200)
    assert ok == {"valid": True, "name": "spring", "start": "main",
                  "nodes": ["main", "after", "bye"]}
    assert await flows_clean.fetchval("SELECT count(*) FROM ivr_flow_versions") == 0


async def test_versions_are_immutable(flows_clean: asyncpg.Pool) -> None:
    version, _ = await FlowStore(flows_clean).upload("acme", V1, "spring.toml", "ana")
    for sql in ("UPDATE ivr_flow_versions SET source = 'x'", "DELETE FROM ivr_flow_versions"):
        with pytest.raises(asyncpg.RestrictViolationError, match="immutable"):
            await flows_clean.execute(sql)
    assert (await FlowStore(flows_clean).get("acme", 1)) == version


@asynccontextmanager
async def following(pg_url: str, sweep_s: float) -> AsyncIterator[ActiveFlows]:
    """An ActiveFlows on its own pool and listening connection, as another process has."""
    own = await create_pool(pg_url, min_size=1, max_size=2)
    flows = ActiveFlows(own, pg_url, sweep_s=sweep_s)
    task = asyncio.create_task(flows.run())
    try:
        yield flows
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await own.close()


def version_of(flows: ActiveFlows) -> int | None:
    held = flows.get("acme")
    return None if held is None else held.version


async def test_an_activation_reaches_every_process_at_once(flows_clean: asyncpg.Pool,
                                                           pg_url: str) -> None:
    store = FlowStore(flows_clean)
    await store.upload("acme", V1, "spring.toml", "ana")
    await store.upload("acme", V2, "summer.toml", "ana")
    # the sweep is 60 s: what arrives within 2 s came by NOTIFY
    async with following(pg_url, 60.0) as one, following(pg_url, 60.0) as two:
        await asyncio.sleep(0.3)                            # both LISTEN
        assert version_of(one) is None and version_of(two) is None
        await store.activate("acme", 2, "ana")
        await wait_for(lambda: version_of(one) == version_of(two) == 2, limit_s=2.0)
        await store.activate("acme", 1, "ana")              # rollback
        await wait_for(lambda: version_of(one) == version_of(two) == 1, limit_s=2.0)
        held = one.get("acme")
        assert held is not None and held.flow.name == "spring"


async def test_an_activated_flows_fixed_say_text_is_rendered_before_it_is_active(
        flows_clean: asyncpg.Pool, tmp_path: Path) -> None:
    speech = site_speech(MediaSettings(guidance_dir=tmp_path))
    assert speech is not None
    seen: list[bool] = []

    async def prepare(merchant: str, flow: Flow) -> None:
        await prerender(speech, flow, Language.JAPANESE)
        seen.append(await flows_clean.fetchval("SELECT count(*) FROM ivr_flow_active") == 0)

    store = FlowStore(flows_clean, prepare=prepare)
    text = V1.replace('prompt = ["sound:cbgw/thanks"]', 'text = "ご利用ありがとうございます。"')
    await store.upload("acme", text, "spring.toml", "ana")
    assert speech.cached("ご利用ありがとうございます。", Language.JAPANESE) is None
    await store.activate("acme", 1, "ana")
    assert speech.cached("ご利用ありがとうございます。", Language.JAPANESE) is not None
    assert seen == [True]                                   # before new rounds run it


async def test_the_sweep_catches_what_no_notification_said(flows_clean: asyncpg.Pool,
                                                           pg_url: str) -> None:
    store = FlowStore(flows_clean)
    await store.upload("acme", V1, "spring.toml", "ana")
    flows = ActiveFlows(flows_clean, pg_url)
    await store.activate("acme", 1, "ana")                  # nobody listening
    assert version_of(flows) is None
    assert await flows.refresh() == 1 and version_of(flows) == 1
    assert await flows.refresh() == 0                       # nothing new: nothing read


@asynccontextmanager
async def worker_with(pool: asyncpg.Pool, pg_url: str, active: ActiveFlows
                      ) -> AsyncIterator[FakeAri]:
    """A worker running rounds on a fake Asterisk, following ``active``."""
    fake = FakeAri()
    ready = asyncio.Event()
    ready.set()
    worker = Worker(store=CallbackStore(pool, owner="w1"), db_url=pg_url,
                    merchants={"acme": ACME}, flows={"order": load_named("order")},
                    routes=Routing(None, ROUTES), client=fake, router=fake.router,
                    rater=FixedRater(), ari_ready=ready, active_flows=active,
                    settings=WorkerSettings(sweep_s=30, drain_s=0.5))
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(0.2)                                # LISTEN is up
    try:
        yield fake
    finally:
        await worker.shutdown()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def answered_call(pool: asyncpg.Pool, fake: FakeAri, plays: int) -> str:
    """A new request's round dialled and answered; its first prompt is play ``plays``."""
    callback_id = await intake(pool, f"edge-{uuid.uuid4().hex[:8]}", ACME)
    await wait_for(lambda: f"{callback_id}-01" in fake.channels)
    fake.router.dispatch(ari.StasisStart(ari.Channel(id=f"{callback_id}-01")))
    await wait_for(lambda: len(fake.named("play")) == plays)
    return callback_id


async def test_a_new_round_runs_the_activated_flow_a_running_one_keeps_its_own(
        flows_clean: asyncpg.Pool, pg_url: str) -> None:
    store = FlowStore(flows_clean)
    await store.upload("acme", V1, "spring.toml", "ana")
    await store.upload("acme", V2, "summer.toml", "ana")
    await store.activate("acme", 1, "ana")
    async with following(pg_url, 60.0) as active, \
            worker_with(flows_clean, pg_url, active) as fake:
        await wait_for(lambda: version_of(active) == 1)
        first = await answered_call(flows_clean, fake, 1)
        assert fake.named("play")[0][:2] == (f"{first}-01", ("sound:cbgw/welcome-menu",))

        await store.activate("acme", 2, "ana")              # while the first call runs
        await wait_for(lambda: version_of(active) == 2, limit_s=2.0)
        second = await answered_call(flows_clean, fake, 2)
        assert fake.named("play")[1][:2] == (f"{second}-01", ("sound:cbgw/confirm",))

        # the first call goes on in the flow it started with
        fake.router.dispatch(ari.ChannelDtmfReceived(ari.Channel(id=f"{first}-01"), "1"))
        await wait_for(lambda: len(fake.named("play")) == 3)
        assert fake.named("play")[2][:2] == (f"{first}-01", ("sound:cbgw/thanks",))
    callbacks = CallbackStore(flows_clean, owner="support")
    for callback_id, name, version in ((first, "spring", 1), (second, "summer", 2)):
        got = await callbacks.get(callback_id)
        assert got is not None
        assert [(f["attempt_no"], f["ivr_flow"], f["ivr_flow_version"])
                for f in got["flows"]] == [(1, name, version)]


async def test_a_merchant_without_an_active_version_runs_its_configured_flow(
        flows_clean: asyncpg.Pool, pg_url: str) -> None:
    await FlowStore(flows_clean).upload("acme", V1, "spring.toml", "ana")   # not active
    async with following(pg_url, 60.0) as active, \
            worker_with(flows_clean, pg_url, active) as fake:
        callback_id = await answered_call(flows_clean, fake, 1)
        assert fake.named("play")[0][1] == ("sound:cbgw/confirm-callback",)   # order.toml
    got = await CallbackStore(flows_clean, owner="support").get(callback_id)
    assert got is not None and got["flows"][0]["ivr_flow"] == "order"
    assert got["flows"][0]["ivr_flow_version"] is None


async def test_the_cli_uploads_lists_shows_activates_and_names_errors(
        config: Path, pg_url: str, flows_clean: asyncpg.Pool, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CALLBACK__DATABASE__URL", pg_url)

    async def run(*args: str, status: int = 0) -> Any:
        code = await asyncio.to_thread(flows_cli, ["--config", str(config), "--merchant",
                                                   "acme", "--author", "ops", *args])
        out = capsys.readouterr()
        assert code == status, out
        return json.loads(out.out) if status == 0 else out.err

    # the example config requires the confirm gate: a flow without one is refused
    spring = tmp_path / "spring.toml"
    spring.write_text(V1)
    err = await run("upload", str(spring), status=2)
    assert err.startswith(f"error: {spring}: flow 'spring' has no confirm_callback gate")
    bad = tmp_path / "bad.toml"
    bad.write_text((FLOWS_DIR / "order.toml").read_text().replace("max_length = 12",
                                                                   "max_length = 99"))
    err = await run("validate", str(bad), status=2)
    assert err.startswith(f"error: {bad}:31: node 'item_code': max_length: expected")

    order = tmp_path / "order.toml"
    order.write_text((FLOWS_DIR / "order.toml").read_text())
    assert (await run("validate", str(order)))["name"] == "order"
    up = await run("upload", str(order))
    assert (up["version"], up["created"], up["created_by"]) == (1, True, "ops")
    assert (await run("upload", str(order)))["created"] is False
    assert (await run("activate", "1"))["active"] is True
    assert (await run("list"))["active"] == 1
    assert (await run("show", "1"))["source"] == order.read_text()
    assert "no flow version 5" in await run("show", "5", status=2)


MAIN = """\
name = "main"
start = "main"

[nodes.main]
type = "subflow"
flow = "survey"
next = "bye"

[nodes.bye]
type = "hangup"
"""
SURVEY = """\
name = "survey"
start = "ask"

[nodes.ask]
type = "say"
prompt = ["sound:cbgw/thanks"]
next = "done"

[nodes.done]
type = "return"
"""


async def test_sub_flows_are_the_merchants_stored_flows_checked_at_upload(
        client: TestClient[Any, Any], flows_clean: asyncpg.Pool, pg_url: str) -> None:
    err = (await reply(await client.post("/v1/ivr/flows?file=main.toml", data=MAIN,
                                         headers=AUTH), 400))["error"]
    assert (err["id"], err["file"], err["line"], err["node"]) == (
        "invalid-flow", "main.toml", 6, "main")
    assert err["message"].endswith("flow: no flow 'survey'")
    dry = await client.post("/v1/ivr/flows/validate?file=main.toml", data=MAIN, headers=AUTH)
    assert (await reply(dry, 400))["error"]["node"] == "main"
    await reply(await client.post("/v1/ivr/flows?file=survey.toml", data=SURVEY,
                                  headers=AUTH), 201)
    assert (await reply(await client.post("/v1/ivr/flows", data=MAIN, headers=BENTO),
                        400))["error"]["message"].endswith("no flow 'survey'")   # acme's
    main = await reply(await client.post("/v1/ivr/flows?file=main.toml", data=MAIN,
                                         headers=AUTH), 201)
    calls_main = SURVEY.replace('type = "return"', 'type = "subflow"\nflow = "main"\n'
                                'next = "end"\n\n[nodes.end]\ntype = "return"')
    err = (await reply(await client.post("/v1/ivr/flows?file=survey.toml", data=calls_main,
                                         headers=AUTH), 400))["error"]
    assert "'survey' is already running (survey -> main -> survey)" in err["message"]
    await reply(await client.post(f"/v1/ivr/flows/{main['version']}/activate",
                                  headers=AUTH), 200)
    flows = ActiveFlows(flows_clean, pg_url)
    await flows.refresh()
    stored = flows.get("acme")
    assert stored is not None and stored.flow.subflow("survey").node("done").type == "return"
