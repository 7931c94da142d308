"""Every route each server registers is in its ``/openapi.json``, and every operation of
the document is a route: the composition roots as the servers build them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from jsonschema_rs import Draft202012Validator
from schemathesis.specs.openapi.definitions import OPENAPI_31

from callback_server.app import create_app as create_callback_app
from callback_server.app import create_intake_app
from callback_server.config import CallbackSettings
from edge_server.app import create_app as create_edge_app
from edge_server.config import EdgeSettings
from edge_server.http import create_http_app
from routing_rates.deck_receiver import RATE_DECK_EXAMPLES, parse_part
from shared.link import encode_batch
from shared.openapi import document
from shared.site import verifier_for
from tests.integration.test_callback_http import body
from tests.integration.test_edge_app import free_port, write_config
from tests.integration.test_edge_http import request_info

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
UNUSED_DB = "postgresql://nobody@127.0.0.1:9/none"
#: the OpenAPI 3.1 schema of a document (as schemathesis ships it)
OPENAPI_31_DOCUMENT = Draft202012Validator(OPENAPI_31)


def callback_settings(pki: Path, tmp_path: Path) -> CallbackSettings:
    text = (REPO / "deploy/callback.example.toml").read_text().replace("../var/pki", str(pki))
    path = tmp_path / "callback.toml"
    path.write_text(text)
    return CallbackSettings.load(path, environ={"CALLBACK__DATABASE__URL": UNUSED_DB,
                                                "CALLBACK__RATES__ENABLED": "true",
                                                "CALLBACK__BILLING__STRIPE__API_KEY":
                                                    "sk_test_routes"})


def routes_of(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route; HEAD only where the path has no GET (HTTP gives every
    GET its HEAD)."""
    routes = {(r.method, r.resource.canonical) for r in app.router.routes()
              if r.resource is not None}
    return {(m, p) for m, p in routes if not (m == "HEAD" and ("GET", p) in routes)}


def documented(app: web.Application) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document(app)["paths"].items()
            for method in item}


def apps(pki: Path, tmp_path: Path) -> dict[str, web.Application]:
    edge = EdgeSettings.load(write_config(tmp_path, pki, UNUSED_DB, free_port()))
    callback = callback_settings(pki, tmp_path)
    assert callback.rates.enabled
    return {"edge": create_edge_app(edge, with_ari=False),
            "callback": create_callback_app(callback, with_ari=False),
            "callback intake": create_intake_app(callback)}


def test_every_route_is_documented_and_every_operation_is_a_route(
        pki_dir: Path, tmp_path: Path) -> None:
    for name, app in apps(pki_dir, tmp_path).items():
        routes, operations = routes_of(app), documented(app)
        assert routes - operations == set(), f"{name}: routes without an Operation"
        assert operations - routes == set(), f"{name}: operations without a route"
        assert ("GET", "/openapi.json") in routes
        OPENAPI_31_DOCUMENT.validate(document(app))  # raises, naming what is wrong


def test_the_callback_site_documents_its_guard_rates_and_intake_routes(
        pki_dir: Path, tmp_path: Path) -> None:
    paths = document(apps(pki_dir, tmp_path)["callback"])["paths"]
    for path in ("/v1/link/callbacks", "/v1/link/callbacks/batch", "/v1/callbacks/{callback_id}",
                 "/v1/guard/lists/{list}/{number}", "/metrics", "/v1/rates/decide",
                 "/v1/billing/accounts/{account}/card-topups", "/v1/billing/stripe/webhook"):
        assert path in paths
    intake = paths["/v1/link/callbacks"]["post"]
    assert {p["name"] for p in intake["parameters"]} >= {
        "webhook-id", "webhook-timestamp", "webhook-signature"}
    assert intake["responses"]["401"]["x-error-ids"] == [
        "signature-missing", "signature-timestamp", "signature-unknown-key",
        "signature-invalid"]
    assert "destination-refused" in intake["responses"]["422"]["x-error-ids"]
    click = paths["/v1/consultations"]["post"]          # web click-to-call (GET: records)
    assert click["responses"]["409"]["x-error-ids"] == ["advisor-unavailable"]
    assert {p["name"] for p in click["parameters"]} == {"Idempotency-Key"}
    guard = paths["/v1/guard/caps/reset"]["post"]
    assert guard["security"] == [{"operatorToken": []}]
    assert guard["responses"]["403"]["x-error-ids"] == ["operator-api-disabled"]
    for page in ("/card/{token}", "/topup/{token}"):     # the customer's pages: HTML
        replies = paths[page]["get"]["responses"]
        assert {s: list(r["content"]) for s, r in replies.items()} == {
            "200": ["text/html"], "404": ["text/html"], "410": ["text/html"],
            "503": ["text/html"], "400": ["application/json"]}
    for path in ("/v1/billing/card-setup/{token}/confirm",
                 "/v1/billing/topup-links/{token}/confirm",
                 "/v1/billing/accounts/{account}/topup-links"):
        assert "post" in paths[path]
    assert set(paths["/web/{name}"]["get"]["responses"]["200"]["content"]) == {
        "text/javascript", "text/css"}


async def test_each_server_serves_its_document(pki_dir: Path, tmp_path: Path) -> None:
    edge = EdgeSettings.load(write_config(tmp_path, pki_dir, UNUSED_DB, free_port()))
    app = create_http_app(merchants=edge.merchants, verifier=verifier_for(edge.signing))
    async with TestClient(TestServer(app)) as client:
        client: TestClient[Any, Any]
        resp = await client.get("/openapi.json")
        body = await resp.json()
        assert resp.status == 200 and body["openapi"].startswith("3.1")
        assert body == document(app)
        assert (await client.head("/openapi.json")).status == 200  # a GET has its HEAD
        assert set(body["paths"]) == {"/v1/link/events", "/v1/link/events/batch",
                                      "/v1/link/rate-decks",
                                      "/v1/requests", "/v1/cdrs", "/v1/calls",
                                      "/v1/consultations", "/v1/billing-records", "/healthz",
                                      "/v1/sip-endpoints", "/v1/sip-endpoints/{user}",
                                      "/openapi.json"}


def request_body_schema(app: web.Application, method: str, path: str) -> dict[str, Any]:
    schema: dict[str, Any] = document(app)["paths"][path][method]["requestBody"]["content"][
        "application/json"]["schema"]
    return schema


def test_the_documented_request_bodies_take_what_the_handlers_take(
        pki_dir: Path, tmp_path: Path) -> None:
    """The bodies the HTTP tests send and the handlers accept are valid by the document
    (Draft 2020-12, formats asserted), and the handlers' own refusals by shape are not."""
    roots = apps(pki_dir, tmp_path)
    edge, callback = roots["edge"], roots["callback"]
    event = Draft202012Validator(request_body_schema(edge, "post", "/v1/link/events"),
                                 validate_formats=True)
    assert event.is_valid(request_info("cb-doc"))
    for bad in ({"kind": "bogus"}, {"collected_at": "yesterday"}, {"merchant_id": None},
                {"fields": {"item_code": 1234}}):
        assert not event.is_valid({**request_info("cb-doc"), **bad})
    deck = Draft202012Validator(request_body_schema(edge, "post", "/v1/link/rate-decks"),
                                validate_formats=True)
    deck_part = RATE_DECK_EXAMPLES["rate_deck"]
    assert deck.is_valid(deck_part) and parse_part(deck_part).rows == 1
    for bad in ({"kind": "cdr"}, {"sha256": "x"}, {"part": -1}, {"parts": 0},
                {"effective_from": "soon"}, {"encoding": "zip"}, {"carrier": {"id": "x"}}):
        assert not deck.is_valid({**deck_part, **bad})
    intake = Draft202012Validator(
        request_body_schema(callback, "post", "/v1/link/callbacks"), validate_formats=True)
    assert intake.is_valid(json.loads(body()))
    for bad in ({"edge_call_id": ""}, {"received_at": "yesterday"}, {"announce_mode": "loud"},
                {"merchant_id": "ACME!"}, {"caller": 819012345678}):
        assert not intake.is_valid({**json.loads(body()), **bad})
    batch = Draft202012Validator(
        request_body_schema(callback, "post", "/v1/link/callbacks/batch"))
    assert batch.is_valid(json.loads(encode_batch([("m1", body("e1")), ("m2", body("e2"))])))
    assert not batch.is_valid({"messages": []})


def test_every_request_body_example_is_valid_by_its_schema(pki_dir: Path,
                                                          tmp_path: Path) -> None:
    examples = 0
    for app in apps(pki_dir, tmp_path).values():
        for path, item in document(app)["paths"].items():
            for method, op in item.items():
                media = op.get("requestBody", {}).get("content", {}).get("application/json", {})
                for name, example in media.get("examples", {}).items():
                    valid = Draft202012Validator(media["schema"], validate_formats=True)
                    assert valid.is_valid(example["value"]), (method, path, name)
                    examples += 1
    assert examples >= 5
