"""``shared.http.started``: a part's store from the app, or 503 with Retry-After until it
has started (the one answer every domain's routes give before the database is up)."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from shared.http import ApiError, started

STORE_KEY = web.AppKey("store", str)


def request_on(app: web.Application) -> web.Request:
    return make_mocked_request("GET", "/", app=app)


def test_the_started_part_is_returned() -> None:
    app = web.Application()
    app[STORE_KEY] = "the store"
    assert started(request_on(app), STORE_KEY, "things-unavailable") == "the store"


def test_before_it_started_the_answer_is_503_with_the_parts_id_and_retry_after() -> None:
    with pytest.raises(ApiError) as refused:
        started(request_on(web.Application()), STORE_KEY, "things-unavailable")
    assert (refused.value.status, refused.value.error_id, refused.value.fields) == \
        (503, "things-unavailable", {"retry_after_s": 5})
