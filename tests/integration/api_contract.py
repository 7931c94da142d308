"""Contract and fuzz runs against a served application: schemathesis (the OpenAPI document
against the server) and a raw fuzz of every registered route (nothing answers 5xx).

Both run in a worker thread with ``requests`` while the aiohttp test server serves on the
test's event loop (``await asyncio.to_thread(...)``). A :class:`SigningSession` signs each
request to ``/v1/link/`` over the raw bytes it sends, as the peer site's relay does, and
gives the other routes the token of their API.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.link import LINK_PREFIX, OPERATOR_PREFIX
from shared.openapi import document
from shared.signing import (
    HEADER_ID,
    HEADER_KEY_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    Signer,
)
from tests.integration.test_openapi_routes import routes_of

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
_SETTINGS = {"deadline": None, "database": None, "derandomize": True,
             "suppress_health_check": list(HealthCheck),
             "phases": [Phase.explicit, Phase.generate, Phase.shrink]}


class SigningSession(requests.Session):
    """Signs link messages over their raw body (unless the request carries its own
    signature headers); other routes get the token of the longest matching path prefix in
    ``tokens`` (unless the request carries its own)."""

    def __init__(self, signer: Signer, tokens: Mapping[str, str]) -> None:
        super().__init__()
        self.signer = signer
        self.tokens = dict(sorted(tokens.items(), key=lambda kv: -len(kv[0])))

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        path = request.path_url
        if self.signs(path) and HEADER_SIGNATURE not in request.headers:
            body = request.body or b""
            raw = body.encode() if isinstance(body, str) else body
            assert isinstance(raw, bytes)
            request.headers.update(self.signer.headers(request.method or "POST", path, raw))
        elif "Authorization" not in request.headers:
            token = self.token_for(path)
            if token is not None:
                request.headers["Authorization"] = f"Bearer {token}"
        return super().send(request, **kwargs)

    @staticmethod
    def signs(path: str) -> bool:
        """A link message (the outbox operator's routes under the prefix take a token)."""
        return path.startswith(LINK_PREFIX) and not path.startswith(OPERATOR_PREFIX)

    def token_for(self, path: str) -> str | None:
        return next((t for prefix, t in self.tokens.items() if path.startswith(prefix)), None)


def run_schemathesis(base_url: str, session: SigningSession, *, max_examples: int = 50
                     ) -> dict[str, str]:
    """Every operation of the server's own ``/openapi.json``: its request body examples,
    then positive and negative cases; the failures by operation (empty: the server keeps
    its document)."""
    document = session.get(base_url + "/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    failures: dict[str, str] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in streams(document):
            continue
        declared = document["paths"][operation.path][operation.method.lower()]
        has_input = "parameters" in declared or "requestBody" in declared
        # the API's valid token, over one the generator made up for the security scheme
        token = session.token_for(operation.path) \
            if declared["security"] and not session.signs(operation.path) else None
        credentials = None if token is None else {"Authorization": f"Bearer {token}"}
        examples = declared.get("requestBody", {}).get("content", {}).get(
            "application/json", {}).get("examples", {})
        for name, example in examples.items():  # accepted bodies: their replies are checked
            try:
                operation.Case(body=example["value"], media_type="application/json") \
                    .call_and_validate(base_url=base_url, session=session, checks=CHECKS,
                                       headers=credentials, timeout=10)
            except Exception as exc:
                failures[f"{operation.label} (example {name})"] = str(exc)[:3000]
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_input \
            else (GenerationMode.POSITIVE,)   # nothing to make invalid
        for mode in modes:
            # half as many invalid cases: the raw fuzz sends more of those
            examples = max_examples if mode is GenerationMode.POSITIVE else max_examples // 2
            try:
                _check_operation(base_url, session, operation.as_strategy(mode), credentials,
                                 examples)
            except Exception as exc:  # every failure, of every operation, is reported
                failures[f"{operation.label} ({mode})"] = str(exc)[:3000]
    return failures


def _check_operation(base_url: str, session: SigningSession, cases: st.SearchStrategy[Any],
                     credentials: dict[str, str] | None, max_examples: int) -> None:
    @settings(max_examples=max_examples, **_SETTINGS)  # type: ignore[arg-type]
    @given(case=cases)
    def check(case: Any) -> None:
        case.call_and_validate(base_url=base_url, session=session, checks=CHECKS,
                               headers=credentials, timeout=10)

    check()


@dataclass(frozen=True)
class Served:
    base_url: str
    session: SigningSession
    app: web.Application


@asynccontextmanager
async def serving(app: web.Application, session: SigningSession,
                  seed: Sequence[tuple[str, bytes]]) -> AsyncIterator[Served]:
    """``app`` on a test server, after the signed link messages ``seed`` (path, body) were
    accepted (rows to read back, pages with a next cursor)."""
    async with TestClient(TestServer(app)) as client:
        client: TestClient[Any, Any]
        for path, raw in seed:
            resp = await client.post(path, data=raw,
                                     headers=session.signer.headers("POST", path, raw))
            assert resp.status < 300, await resp.text()
        yield Served(str(client.make_url("")).rstrip("/"), session, app)
    session.close()


async def assert_keeps_its_document(served: Served) -> None:
    failures = await asyncio.to_thread(run_schemathesis, served.base_url, served.session)
    assert failures == {}, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


def streams(document: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(method, path) of the operations that answer an event stream: left out of both runs
    (a valid request stays open)."""
    return {(method.upper(), path) for path, item in document["paths"].items()
            for method, op in item.items()
            if any("text/event-stream" in reply.get("content", {})
                   for reply in op["responses"].values())}


async def assert_no_5xx(served: Served) -> None:
    routes = sorted(routes_of(served.app) - streams(document(served.app)))
    failures = await asyncio.to_thread(fuzz_routes, served.base_url, routes, served.session)
    assert failures == {}, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


# --- raw fuzz of every registered route -----------------------------------------------

_TEXT = st.text(max_size=40)
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | _TEXT,
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(_TEXT, inner, max_size=4), max_leaves=20)
_BODY = st.one_of(
    st.binary(max_size=200),
    _JSON.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
    st.dictionaries(st.sampled_from(["edge_call_id", "merchant_id", "caller", "received_at",
                                     "hungup_at", "kind", "messages", "by", "expires_at",
                                     "scope", "kind", "collected_at"]), _JSON)
    .map(lambda v: json.dumps(v).encode()))
#: header bytes a client can send on one line (no CR, LF or NUL; no leading blank)
_HEADER = st.binary(max_size=40).map(lambda b: b.translate(None, b"\r\n\0").lstrip())
#: signature headers of a link request (else the session signs it), each plausible or not
_SIGNATURE = st.fixed_dictionaries({
    HEADER_ID: st.just(b"msg-1") | _HEADER,
    HEADER_TIMESTAMP: st.builds(lambda: str(int(time.time())).encode()) | _HEADER,
    HEADER_KEY_ID: st.sampled_from([b"edge-sign-1", b"callback-sign-1"]) | _HEADER,
    HEADER_SIGNATURE: st.just(b"v1a,AAAA") | _HEADER})
_QUERY_NAMES = ["limit", "cursor", "since", "until", "reason", "number", "at", "duration",
                "distribution", "origin", "announce_s", "announce_mode", "inbound_tariff"]


def fuzz_routes(base_url: str, routes: list[tuple[str, str]], session: SigningSession, *,
                max_examples: int = 50) -> dict[str, str]:
    """Each ``(method, path template)`` with arbitrary path parameters, query, token bytes,
    signature headers and body; the failures (a 5xx, or an error body that is not
    ``{"error": ...}``) by route. Link requests without made-up signature headers are
    signed, so their bodies reach the handlers."""
    failures: dict[str, str] = {}
    for method, template in routes:
        try:
            _fuzz_route(base_url, method, template, session, max_examples)
        except Exception as exc:
            failures[f"{method} {template}"] = str(exc)[:3000]
    return failures


def _fuzz_route(base_url: str, method: str, template: str, session: SigningSession,
                max_examples: int) -> None:
    names = [part[1:-1] for part in template.split("/") if part.startswith("{")]

    @settings(max_examples=max_examples, **_SETTINGS)  # type: ignore[arg-type]
    @given(params=st.fixed_dictionaries({n: _TEXT.filter(bool) for n in names}),
           query=st.dictionaries(st.sampled_from(_QUERY_NAMES) | _TEXT, _TEXT, max_size=4),
           token=st.none() | _HEADER, body=st.none() | _BODY,
           signature=st.none() | _SIGNATURE)
    def check(params: dict[str, str], query: dict[str, str], token: bytes | None,
              body: bytes | None, signature: dict[str, bytes] | None) -> None:
        path = template
        for name, value in params.items():
            path = path.replace("{" + name + "}", quote(value, safe=""))
        headers: dict[str, Any] = {}
        if signature is not None and session.signs(path):
            headers.update(signature)
        if token is not None:
            headers["Authorization"] = b"Bearer " + token
        resp = session.request(method, base_url + path, params=query, data=body,
                               headers=headers, timeout=10)
        assert resp.status_code < 500, (resp.status_code, resp.text[:500])
        if resp.status_code >= 400 and resp.headers.get("content-type", "").startswith(
                "application/json"):
            assert set(resp.json()) == {"error"}, resp.text[:500]

    check()
