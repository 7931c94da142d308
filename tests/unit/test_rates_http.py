from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from routing_rates.carriers import Carrier
from routing_rates.http import routes
from routing_rates.index import Row
from routing_rates.service import RatingService
from shared.openapi import add_operations
from tests.unit.test_rates_decision import FX, INBOUND, NTT, usd


def _app() -> web.Application:
    a = Carrier("carrier-a", "A", dial_string="PJSIP/{digits}@carrier-a")
    rates = RatingService.from_rows([a, INBOUND], {
        "carrier-a": [Row("8190", "JP mobile", usd("0.1398"))], "ntt-freedial": NTT}, FX)
    app = web.Application()
    add_operations(app, routes(rates))
    return app


async def test_quote_and_decide(aiohttp_client: Any) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(_app())
    resp = await client.get("/v1/rates/quote", params={"number": "09012345678"})
    assert resp.status == 200
    body = await resp.json()
    assert body["routes"][0]["carrier"] == "carrier-a"
    assert body["routes"][0]["endpoint"] == "PJSIP/819012345678@carrier-a"
    resp = await client.get("/v1/rates/decide", params={"number": "+819012345678",
                                                        "duration": "300"})
    body = await resp.json()
    assert resp.status == 200
    assert body["callback"] is True and body["reason"] == "callback-cheaper"
    assert body["direct_cost"] == {"amount": "150.0", "currency": "JPY"}


async def test_errors_are_json_with_stable_ids(aiohttp_client: Any) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(_app())
    cases = [("/v1/rates/quote", {}, 400, "rates-number-missing"),
             ("/v1/rates/quote", {"number": "abc"}, 400, "rates-number-invalid"),
             ("/v1/rates/quote", {"number": "09012345678", "distribution": "x"}, 400,
              "rates-distribution-unknown"),
             ("/v1/rates/decide", {"number": "09012345678", "duration": "-1"}, 400,
              "rates-parameter-invalid"),
             ("/v1/rates/decide", {"number": "09012345678", "inbound_tariff": "x"}, 404,
              "rates-tariff-unknown"),
             *[(path, {"number": "09012345678", "at": at}, 400, "rates-time-invalid")
               for path in ("/v1/rates/quote", "/v1/rates/decide")
               for at in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00",
                          "9999-12-31T23:59:59Z", "2026-11-22T10:00:00")]]
    for path, params, status, error_id in cases:
        resp = await client.get(path, params=params)
        assert resp.status == status, (path, params)
        assert (await resp.json())["error"]["id"] == error_id


CALLS = [{"time": "2026-12-01T09:00:00+09:00", "caller": "09012345678", "talk_s": 10},
         {"time": "2026-12-01T10:00:00+09:00", "caller": "09012345678", "talk_s": 600}]


async def test_simulate_replays_the_calls(aiohttp_client: Any) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(_app())
    resp = await client.post("/v1/rates/simulate", json={"calls": CALLS, "worst": 5})
    assert resp.status == 200
    body = await resp.json()
    # kept: 10 + 300 JPY; called back: 0.1398 USD x 150 a minute, 60/60: 20.97 + 209.70
    assert (body["keep"], body["callback"], body["project"]) == \
        ("310.0000", "230.6700", "230.6700")
    # both calls decided alike (called back): cheaper in total than keeping both, so no
    # regret; the short one alone would have been cheaper kept
    assert (body["regret"], body["regret_calls"]) == ("0.0000", 0)
    assert (body["hindsight"], body["hindsight_calls"]) == ("10.9700", 1)
    assert body["worst"] == [{"call": 0, "hindsight": "10.9700"}]
    assert body["by_class"]["mobile"] == {"calls": 2, "keep": "310.0000",
                                          "project": "230.6700", "saving": "79.3300"}
    assert sum(h["calls"] for h in body["by_hour"]) == 2


async def test_simulate_refuses_bad_bodies_with_the_field(aiohttp_client: Any) -> None:
    client: TestClient[Any, Any] = await aiohttp_client(_app())
    bad_time = [{**CALLS[0], "time": "2026-12-01T09:00:00"}]
    cases = [({"calls": []}, 400, "rates-parameter-invalid", "calls must be"),
             ({"calls": bad_time}, 400, "rates-parameter-invalid", "calls[0]: "),
             ({"calls": [{**CALLS[0], "talk_s": -1}]}, 400, "rates-parameter-invalid",
              "calls[0]: talk_s"),
             ({"calls": [{**CALLS[0], "talk_s": True}]}, 400, "rates-parameter-invalid",
              "calls[0]: "),
             ({"calls": CALLS, "extra": 1}, 400, "rates-parameter-invalid", "extra"),
             ({"calls": CALLS, "announce_mode": "x"}, 400, "rates-parameter-invalid",
              "announce_mode"),
             ({"calls": CALLS, "inbound_tariff": "carrier-a"}, 404, "rates-tariff-unknown",
              "carrier-a")]
    for body, status, error_id, message in cases:
        resp = await client.post("/v1/rates/simulate", json=body)
        assert resp.status == status, body
        error = (await resp.json())["error"]
        assert error["id"] == error_id and message in error["message"], (body, error)
