"""The edge's HTTP API against its own /openapi.json (schemathesis) and a raw fuzz of every
route: real PostgreSQL, signed link requests, the merchant's token; nothing answers 5xx."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator

import asyncpg
import pytest

from edge_server.http import POOL_KEY, create_http_app
from edge_server.sip_endpoints import SipEndpoints
from edge_server.sip_http import SIP_ENDPOINTS_KEY
from shared import outbox_operator
from shared.link import OPERATOR_PREFIX
from shared.metrics_http import install as install_metrics
from shared.signing import Signer, Verifier
from tests.integration.api_contract import (
    Served,
    SigningSession,
    assert_keeps_its_document,
    assert_no_5xx,
    serving,
)
from tests.integration.test_edge_http import (  # noqa: F401 (the pool fixture)
    ACME_TOKEN,
    MERCHANTS,
    PEER_KEY,
    pool,
    request_info,
)
from tests.unit.test_advisors_records import answered

pytestmark = pytest.mark.integration

OPERATOR = "edge-operator-token"


@pytest.fixture
async def served(pool: asyncpg.Pool,  # noqa: F811 (test_edge_http's, on this module's db)
                 ) -> AsyncIterator[Served]:
    app = create_http_app(merchants=MERCHANTS,
                          verifier=Verifier({PEER_KEY.key_id: PEER_KEY.public()}))
    app[POOL_KEY] = pool
    app[SIP_ENDPOINTS_KEY] = SipEndpoints(pool)
    install_metrics(app, lambda _: pool)
    outbox_operator.add_routes(app)
    app[outbox_operator.OPERATOR_KEY] = outbox_operator.OutboxOperator(
        pool, hashlib.sha256(OPERATOR.encode()).hexdigest())
    reports = [("/v1/link/events",
                json.dumps(request_info(f"cb-contract-{i}", minute=i)).encode())
               for i in range(3)]
    reports.append(("/v1/link/events",
                    json.dumps({"kind": "consultation", **answered().to_json()}).encode()))
    session = SigningSession(Signer([PEER_KEY]), {"/v1/": ACME_TOKEN, OPERATOR_PREFIX: OPERATOR})
    async with serving(app, session, reports) as served:
        yield served


async def test_the_edge_keeps_its_openapi_document(served: Served) -> None:
    await assert_keeps_its_document(served)


async def test_no_route_of_the_edge_answers_5xx_to_arbitrary_input(served: Served) -> None:
    await assert_no_5xx(served)
