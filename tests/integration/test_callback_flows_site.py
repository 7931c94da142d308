"""Stored IVR flows as the callback site's composition root mounts them: two instances of the
site on one database (real PostgreSQL), an upload and an activation through either one's
API reaching both without a restart, the site's own checks on an upload and an activation,
and a guidance the active stored flow plays kept from deletion."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from callback_server.app import ACTIVE_FLOWS_KEY, POOL_KEY, WORKER_KEY, create_app
from callback_server.ivr_flow import FLOWS_DIR
from tests.integration.test_callback_app import settings
from tests.integration.test_callback_flows import V1
from tests.integration.test_ivr_audio import tone
from tests.integration.test_ivr_media_site import media_settings

pytestmark = pytest.mark.integration

AUTH = {"Authorization": "Bearer test"}     # deploy/callback.example.toml's acme token
#: the shipped flow with another welcome: it keeps the confirm gate the example requires
def order_welcoming_with(prompt: str) -> str:
    return (FLOWS_DIR / "order.toml").read_text().replace('"sound:cbgw/welcome-menu"',
                                                          f'"{prompt}"')


SPRING = order_welcoming_with("sound:cbgw/consult-menu")


@asynccontextmanager
async def served(app: web.Application) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(app)) as client:
        yield client


def active_version(app: web.Application) -> int | None:
    held = app[ACTIVE_FLOWS_KEY].get("acme")
    return None if held is None else held.version


async def activate(client: TestClient[Any, Any], version: int) -> None:
    """Activate the version through ``client``'s site and wait until its process has it."""
    resp = await client.post(f"/v1/ivr/flows/{version}/activate", headers=AUTH)
    assert resp.status == 200, await resp.text()
    deadline = asyncio.get_running_loop().time() + 2.0
    while active_version(client.app) != version:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)


async def test_an_activation_through_one_instance_reaches_both(
        pki_dir: Path, pg_url: str, tmp_path: Path) -> None:
    s = settings(pki_dir, pg_url, tmp_path)
    one, two = create_app(s), create_app(s, with_ari=False)   # one runs the worker
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(served(one))
        b = await stack.enter_async_context(served(two))
        assert one[WORKER_KEY].active_flows is one[ACTIVE_FLOWS_KEY]
        await asyncio.sleep(0.3)                            # both listening

        resp = await a.post("/v1/ivr/flows?file=spring.toml&author=ops", data=SPRING,
                            headers=AUTH)
        assert resp.status == 201, await resp.text()
        version = (await resp.json())["version"]
        resp = await b.post(f"/v1/ivr/flows/{version}/activate", headers=AUTH)
        assert resp.status == 200, await resp.text()

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while not active_version(one) == active_version(two) == version:
            assert loop.time() < deadline, "an instance did not see the activation in 2 s"
            await asyncio.sleep(0.02)
        held = one[ACTIVE_FLOWS_KEY].get("acme")
        assert held is not None and held.flow.node("main").prompt == (
            "sound:cbgw/consult-menu",)

        # the site refuses what check refuses: the example requires the confirm gate, and
        # a prompt must be there in the merchant's language
        for text, refused in (
                (V1, "flow 'spring' has no confirm_callback gate"),
                (order_welcoming_with("sound:cbgw/spring-sale"),
                 "flow 'order' plays prompts in 'ja' not in the system prompts ([callback] "
                 "prompts_dir): spring-sale")):
            resp = await b.post("/v1/ivr/flows?file=spring.toml", data=text, headers=AUTH)
            err = (await resp.json())["error"]
            assert resp.status == 400 and err["id"] == "invalid-flow", err
            assert err["message"].startswith(f"spring.toml: {refused}"), err
            assert err["file"] == "spring.toml"
        paths = (await (await a.get("/openapi.json")).json())["paths"]
        assert {"/v1/ivr/flows", "/v1/ivr/flows/validate", "/v1/ivr/flows/{version}",
                "/v1/ivr/flows/{version}/activate"} <= set(paths)


async def test_a_guidance_the_active_stored_flow_plays_is_kept_and_checked_on_activation(
        pki_dir: Path, pg_url: str, tmp_path: Path) -> None:
    app = create_app(media_settings(pki_dir, pg_url, tmp_path), with_ari=False)
    async with served(app) as client:
        resp = await client.put("/v1/media/guidance/spring", headers=AUTH,
                                data=tone(tmp_path / "spring.mp3", 1.0).read_bytes())
        assert resp.status == 201, await resp.text()
        plays_it = order_welcoming_with("sound:cbgw-guidance/acme/spring")
        versions = []                   # (the module's database: numbers go on from before)
        for text in (plays_it, SPRING + "# spring\n"):
            resp = await client.post("/v1/ivr/flows", data=text, headers=AUTH)
            assert resp.status == 201, await resp.text()
            versions.append((await resp.json())["version"])
        guided, plain = versions

        await activate(client, guided)
        resp = await client.delete("/v1/media/guidance/spring", headers=AUTH)
        err = (await resp.json())["error"]
        assert resp.status == 409 and err["id"] == "guidance-in-use", err
        assert f"flow order version {guided}" in err["message"]

        await activate(client, plain)
        assert (await client.delete("/v1/media/guidance/spring", headers=AUTH)).status == 204
        # the guided version plays a guidance that is gone now: activating it is refused
        resp = await client.post(f"/v1/ivr/flows/{guided}/activate", headers=AUTH)
        err = (await resp.json())["error"]
        assert resp.status == 400 and err["id"] == "invalid-flow", err
        assert "plays sound:cbgw-guidance/acme/spring, which is not uploaded" in err["message"]
        assert active_version(app) == plain


async def test_a_group_in_use_is_kept_and_a_deleted_ones_records_stay(
        pki_dir: Path, pg_url: str, tmp_path: Path) -> None:
    """DELETE /v1/advisor-groups/{id} on the site: refused naming the active stored flow
    and the node ringing the group, and a consultation in progress through it; deleted
    once neither is so, its memberships with it."""
    app = create_app(settings(pki_dir, pg_url, tmp_path), with_ari=False)
    async with served(app) as client:
        async def post(path: str, body: Any) -> Any:
            resp = await client.post(path, json=body, headers=AUTH)
            assert resp.status == 201, await resp.text()
            return await resp.json()

        advisor = await post("/v1/advisors", {
            "display_name": "星野", "code": "0777", "price_per_minute_yen": 200,
            "contact": {"kind": "pstn", "number": "090-1111-3333"}})
        rung = await post("/v1/advisor-groups", {"name": "all", "members": [advisor["id"]]})
        spare = await post("/v1/advisor-groups", {"name": "予備", "members": [advisor["id"]]})
        resp = await client.post("/v1/ivr/flows?file=consult.toml", headers=AUTH,
                                 data=(FLOWS_DIR / "consult.toml").read_text())
        assert resp.status == 201, await resp.text()
        consult = (await resp.json())["version"]
        await activate(client, consult)

        resp = await client.delete(f"/v1/advisor-groups/{rung['id']}", headers=AUTH)
        err = (await resp.json())["error"]
        assert resp.status == 409 and err["id"] == "group-in-use", err
        assert f"flow consult version {consult} node anyone rings it" in err["message"]

        pool = app[POOL_KEY]
        await pool.execute(
            "INSERT INTO consult_live (consultation_id, callback_id, merchant_id,"
            " customer_channel, presence_id, snapshot) VALUES ('c-live', 'cb-1', 'acme',"
            " 'ch-1', 'c-live', $1)", {"group_id": spare["id"]})
        resp = await client.delete(f"/v1/advisor-groups/{spare['id']}", headers=AUTH)
        err = (await resp.json())["error"]
        assert resp.status == 409 and "consultation c-live in progress" in err["message"]
        await pool.execute("DELETE FROM consult_live WHERE consultation_id = 'c-live'")

        resp = await client.delete(f"/v1/advisor-groups/{spare['id']}", headers=AUTH)
        assert resp.status == 200 and (await resp.json())["name"] == "予備"
        assert (await client.get(f"/v1/advisor-groups/{spare['id']}",
                                 headers=AUTH)).status == 404
        assert (await client.delete(f"/v1/advisor-groups/{spare['id']}",
                                    headers=AUTH)).status == 404
        resp = await client.get(f"/v1/advisors/{advisor['id']}", headers=AUTH)
        assert (await resp.json())["groups"] == [rung["id"]]
