"""One bad message of a ``POST /v1/link/callbacks/batch`` fails alone, a real PostgreSQL and
the real group commit: the good messages of its batch are stored and acknowledged; the bad one
gets its own 500 ``internal-error`` answer (so the edge retries it once the cause is fixed) and
its traceback is logged. One raises before the group commit (in the raw-caller screen, the
seam the guard fills), one inside its shared transaction (a foreign key)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from callback_server.http import RAW_CALLER_SCREEN_KEY, attach_store, create_http_app
from callback_server.store import CallbackStore
from callback_server.testing import merchant
from shared.http import ApiError
from shared.signing import Verifier
from tests.integration import callback_db
from tests.integration.test_callback_http import (
    BATCH_PATH,
    PEER_KEY,
    ClientFactory,
    batch,
    body,
    results_of,
)

pytestmark = pytest.mark.integration

ACME = merchant("acme")
#: configured on the site but never synced to its database: storing a request for it breaks
#: the batch's transaction (a foreign key), a failure inside the shared group commit
GHOST = merchant("ghost")

pool, clean = callback_db.fixtures([ACME])


async def screen_with_a_bug(app: web.Application, data: Any, message_id: str | None
                           ) -> ApiError | None:
    """A raw-caller screen that raises for one caller (a bug in it, for that message)."""
    if isinstance(data, dict) and data.get("caller") == "+819012341002":
        raise ZeroDivisionError("a screen bug")
    return None


@pytest.fixture
async def client(clean: asyncpg.Pool, aiohttp_client: ClientFactory) -> TestClient[Any, Any]:
    app = create_http_app(merchants=[ACME, GHOST],
                          verifier=Verifier({PEER_KEY.key_id: PEER_KEY.public()}))
    app[RAW_CALLER_SCREEN_KEY] = screen_with_a_bug
    attach_store(app, CallbackStore(clean, owner="http"))
    return await aiohttp_client(app)


async def test_a_message_that_raises_fails_alone_and_the_rest_are_stored(
        client: TestClient[Any, Any], clean: asyncpg.Pool,
        caplog: pytest.LogCaptureFixture) -> None:
    messages = [
        (str(uuid.uuid4()), body("iso-good-1", caller="+819012341001")),
        (str(uuid.uuid4()), body("iso-screen-bug", caller="+819012341002")),
        (str(uuid.uuid4()), body("iso-good-2", caller="+819012341003")),
        (str(uuid.uuid4()), body("iso-ghost", merchant_id="ghost", caller="+819012341004")),
        (str(uuid.uuid4()), body("iso-good-3", caller="+819012341005")),
    ]
    raw, headers = batch(messages)
    caplog.set_level(logging.INFO)
    results = await results_of(await client.post(BATCH_PATH, data=raw, headers=headers))
    assert [r["message_id"] for r in results] == [mid for mid, _ in messages]
    assert [r["status"] for r in results] == [202, 500, 202, 500, 202]
    for bad in (results[1], results[3]):
        assert bad["body"]["error"]["id"] == "internal-error"
    assert all(results[i]["body"]["status"] == "queued" for i in (0, 2, 4))
    stored = {r["edge_call_id"] for r in await clean.fetch(
        "SELECT edge_call_id FROM callback_requests")}
    assert stored == {"iso-good-1", "iso-good-2", "iso-good-3"}
    answered = {r["message_id"] for r in await clean.fetch(
        "SELECT message_id FROM inbound_messages")}
    assert answered == {messages[i][0] for i in (0, 2, 4)}  # the bad ones may come again
    traced = {type(r.exc_info[1]).__name__ for r in caplog.records
              if r.exc_info and r.levelno >= logging.ERROR}
    assert "ZeroDivisionError" in traced and "ForeignKeyViolationError" in traced
    # the good ones are not a repeat when the batch comes again; the bad ones still fail alone
    again = await results_of(await client.post(BATCH_PATH, data=raw, headers=headers))
    assert [(r["status"], r["body"]) for r in again] == [
        (r["status"], r["body"]) for r in results]
