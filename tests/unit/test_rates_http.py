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
