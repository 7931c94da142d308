"""A merchant's maximum cost per minute: the edge keeps the call when no carrier is within
it and says why; the callback site's ranking never dials above it (not even the static
routes)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from callback_server.config import StaticRoute
from callback_server.dialer_messages import Route
from callback_server.routing import Routing
from edge_server.decide import RatesDecider
from edge_server.flow_messages import AnnounceMode, Decided, RequestDecision
from routing_rates.carriers import Carrier
from routing_rates.index import Row
from routing_rates.service import RatingService
from routing_rates.tariff import Terms
from shared.money import FxTable, Money
from shared.phone import E164
from tests import prom

D = Decimal
FX = FxTable.from_mapping("JPY", {"USD": "150"})
AT = datetime(2026, 12, 4, 3, tzinfo=UTC)
MOBILE = E164("819012345678")
STATIC = (StaticRoute("static", "PJSIP/{digits}@static"),)


def _service() -> RatingService:
    def usd(rate: str) -> Terms:
        return Terms(D(rate), 60, 60, 60, D(0), D(0), "USD", 4)

    carriers = [Carrier(c, c, dial_string=f"PJSIP/{{digits}}@{c}") for c in ("a", "b")]
    carriers.append(Carrier("ntt-freedial", "NTT", kind="inbound", currency="JPY",
                            timezone="Asia/Tokyo"))
    return RatingService.from_rows(carriers, {
        "a": [Row("8190", "m", usd("0.1398"))],          # 20.97 JPY/min
        "b": [Row("8190", "m", usd("0.1368"))],          # 20.52 JPY/min
        "ntt-freedial": [Row("81", "fixed", Terms(D(10), 20, 20, 20, D(0), D(0), "JPY", 1))],
    }, FX)


async def test_the_edge_keeps_the_call_when_no_carrier_is_within_the_maximum() -> None:
    cmd = RequestDecision(MOBILE, "capped", AnnounceMode.EARLY_MEDIA)
    before = prom.sample("cbgw_edge_decisions_total", merchant="capped", decision="keep",
                         reason="no-carrier-within-max-rate")
    decider = RatesDecider(_service(), {}, max_rates={"capped": Money.of("20", "JPY")})
    assert await decider.decide(cmd, AT) == Decided(False, "no-carrier-within-max-rate")
    assert prom.sample("cbgw_edge_decisions_total", merchant="capped", decision="keep",
                       reason="no-carrier-within-max-rate") == before + 1
    other = RequestDecision(MOBILE, "free", AnnounceMode.EARLY_MEDIA)
    assert await decider.decide(other, AT) == Decided(True, "callback-cheaper")


async def test_the_callback_ranking_never_dials_above_the_maximum() -> None:
    routing = Routing(_service(), STATIC)
    assert [r.carrier_id for r in await routing.routes(MOBILE, AT)] == ["b", "a"]
    assert await routing.routes(MOBILE, AT, Money.of("20.6", "JPY")) == (
        Route("b", "PJSIP/819012345678@b"),)
    assert await routing.routes(MOBILE, AT, Money.of("0.13", "USD")) == ()  # not static
    unknown = E164("442071234567")          # no carrier prices it: the static routes
    assert await routing.routes(unknown, AT, Money.of("20", "JPY")) == (
        Route("static", "PJSIP/442071234567@static"),)
