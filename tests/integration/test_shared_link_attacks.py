"""Attacks on the link receiver: real mutual TLS, real PostgreSQL, the shared middleware.

Every refused request must answer 401 (or 413/408) with a JSON error id and
leave no trace: no effect row, no remembered message id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import ssl
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from shared import pki
from shared.link import BODY_TIMEOUT_KEY
from shared.signing import HEADER_SIGNATURE, HEADER_TIMESTAMP, Signer, SigningKey
from tests.faults.linklab import (
    effect_counts,
    free_port,
    prepare_pool,
    receiver_app,
    serve,
    verifier,
)

PATH = "/v1/link/test"


class ReceiverClock:
    """The receiver's clock: the wall clock, unless a test pins it to a fixed instant.

    Pinning makes a boundary exact. With the wall clock, a timestamp signed 299 s
    in the past is 300 s old once a loaded CI machine has spent a second on TLS.
    """

    def __init__(self) -> None:
        self.pinned: float | None = None

    def __call__(self) -> float:
        return time.time() if self.pinned is None else self.pinned


@dataclass
class Target:
    url: str
    port: int
    ssl: ssl.SSLContext
    signer: Signer
    pool: asyncpg.Pool
    clock: ReceiverClock


@pytest.fixture(scope="module")
async def target(pg_url: str, pki_dir: Path) -> AsyncIterator[Target]:
    pool = await prepare_pool(pg_url, max_size=20)
    clock = ReceiverClock()
    app = receiver_app(pool, dataclasses.replace(verifier(pki_dir, "edge-sign-1"), clock=clock))
    app[BODY_TIMEOUT_KEY] = 1.0
    port = free_port()
    runner = await serve(app, pki_dir, port, keepalive_timeout_s=2.0)
    ctx = pki.client_context(pki_dir / "ca.pem", pki_dir / "edge.pem", pki_dir / "edge.key")
    signer = Signer([SigningKey.load(pki_dir / "edge-sign-1.key")])
    yield Target(f"https://127.0.0.1:{port}", port, ctx, signer, pool, clock)
    await runner.cleanup()
    await pool.close()


async def _post(t: Target, path: str, body: bytes, headers: dict[str, str]
                ) -> tuple[int, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=t.ssl)) as session:
        async with session.post(t.url + path, data=body, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)


async def _assert_no_trace(t: Target, mid: str) -> None:
    assert await t.pool.fetchval("SELECT count(*) FROM effects WHERE message_id = $1", mid) == 0
    assert await t.pool.fetchval(
        "SELECT count(*) FROM inbound_messages WHERE message_id = $1", mid) == 0


def _tamper_ts(headers: dict[str, str]) -> dict[str, str]:
    return {**headers, HEADER_TIMESTAMP: str(int(headers[HEADER_TIMESTAMP]) + 1)}


@pytest.mark.parametrize("case", ["body", "path", "timestamp", "old", "unknown-key",
                                  "revoked-key", "forged-key-id", "no-signature",
                                  "bad-base64"])
async def test_forged_or_stale_requests_get_401_json_and_have_no_effect(
        target: Target, pki_dir: Path, case: str) -> None:
    mid = str(uuid.uuid4())
    body = b'{"n": 4242}'
    signer = target.signer
    path = PATH
    expected = "signature-invalid"
    if case == "body":
        headers = signer.headers("POST", PATH, body, message_id=mid)
        body = b'{"n": 4243}'
    elif case == "path":
        headers = signer.headers("POST", PATH, body, message_id=mid)
        path = "/v1/link/other"
    elif case == "timestamp":
        headers = _tamper_ts(signer.headers("POST", PATH, body, message_id=mid))
    elif case == "old":
        headers = signer.headers("POST", PATH, body, message_id=mid,
                                 timestamp=int(time.time()) - 301)
        expected = "signature-timestamp"
    elif case == "unknown-key":
        headers = Signer([SigningKey.generate("rogue-1")]).headers("POST", PATH, body,
                                                                   message_id=mid)
        expected = "signature-unknown-key"
    elif case == "revoked-key":
        # edge-sign-0 was the edge's key once; the receiver's trust list no longer has it
        headers = Signer([SigningKey.generate("edge-sign-0")]).headers("POST", PATH, body,
                                                                       message_id=mid)
        expected = "signature-unknown-key"
    elif case == "forged-key-id":
        headers = Signer([SigningKey.generate("edge-sign-1")]).headers("POST", PATH, body,
                                                                       message_id=mid)
    elif case == "no-signature":
        headers = {"webhook-id": mid}
        expected = "signature-missing"
    else:
        headers = signer.headers("POST", PATH, body, message_id=mid)
        headers[HEADER_SIGNATURE] = "v1a,!!!not-base64!!!"
    status, answer = await _post(target, path, body, headers)
    assert status == 401, answer
    assert answer["error"]["id"] == expected
    await _assert_no_trace(target, mid)


@pytest.mark.parametrize(("skew", "status"), [(-299, 202), (299, 202), (-301, 401), (301, 401)])
async def test_timestamp_skew_at_the_edge_of_the_window(target: Target, skew: int,
                                                        status: int) -> None:
    """±299 s is accepted and ±301 s refused, measured against the receiver's pinned clock."""
    now = int(time.time())
    mid = str(uuid.uuid4())
    body = f'{{"n": {5000 + skew}}}'.encode()
    headers = target.signer.headers("POST", PATH, body, message_id=mid, timestamp=now + skew)
    target.clock.pinned = now
    try:
        got, answer = await _post(target, PATH, body, headers)
    finally:
        target.clock.pinned = None
    assert got == status, answer
    if status == 401:
        assert answer["error"]["id"] == "signature-timestamp"
        await _assert_no_trace(target, mid)


async def test_revoked_key_is_refused_once_removed_from_the_trust_list(
        target: Target, pki_dir: Path) -> None:
    """The same signed request passes while the key is trusted and fails after revocation."""
    mid = str(uuid.uuid4())
    body = b'{"n": 777}'
    headers = target.signer.headers("POST", PATH, body, message_id=mid)
    pool = target.pool
    app = receiver_app(pool, verifier(pki_dir, "callback-sign-1"))  # edge-sign-1 revoked
    port = free_port()
    runner = await serve(app, pki_dir, port)
    try:
        revoked = Target(f"https://127.0.0.1:{port}", port, target.ssl, target.signer, pool,
                         target.clock)
        status, answer = await _post(revoked, PATH, body, headers)
        assert (status, answer["error"]["id"]) == (401, "signature-unknown-key")
        await _assert_no_trace(target, mid)
    finally:
        await runner.cleanup()
    status, _ = await _post(target, PATH, body, headers)  # still trusted there
    assert status == 202


async def test_replay_inside_the_window_is_a_no_op_with_the_original_answer(
        target: Target) -> None:
    mid = str(uuid.uuid4())
    body = b'{"n": 31337}'
    headers = target.signer.headers("POST", PATH, body, message_id=mid)
    first = await _post(target, PATH, body, headers)
    replays = await asyncio.gather(*(_post(target, PATH, body, headers) for _ in range(5)))
    assert first == (202, {"accepted": 31337})
    assert all(r == first for r in replays)
    assert await target.pool.fetchval(
        "SELECT count(*) FROM effects WHERE message_id = $1", mid) == 1
    # a replay with a different body under the same id fails the signature
    status, answer = await _post(target, PATH, b'{"n": 1}', headers)
    assert (status, answer["error"]["id"]) == (401, "signature-invalid")


async def _normal_latencies(t: Target, session: aiohttp.ClientSession, count: int
                            ) -> list[float]:
    latencies = []
    for i in range(count):
        body = f'{{"n": {i}}}'.encode()
        headers = t.signer.headers("POST", PATH, body)
        started = time.monotonic()
        async with session.post(t.url + PATH, data=body, headers=headers) as resp:
            assert resp.status == 202
            await resp.read()
        latencies.append(time.monotonic() - started)
        await asyncio.sleep(0.01)
    return latencies


async def test_10_mb_body_gets_413_json_quickly_and_others_are_unaffected(
        target: Target) -> None:
    big = b'{"n": 1, "pad": "' + b"x" * (10 * 1024 * 1024) + b'"}'

    async def huge(chunked: bool) -> tuple[int, Any, float]:
        headers = target.signer.headers("POST", PATH, big)
        started = time.monotonic()
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=target.ssl)) as session:
            async def stream() -> AsyncIterator[bytes]:
                for i in range(0, len(big), 256 * 1024):
                    yield big[i:i + 256 * 1024]

            data: Any = stream() if chunked else io.BytesIO(big)
            try:
                async with session.post(target.url + PATH, data=data, headers=headers) as resp:
                    return resp.status, await resp.json(), time.monotonic() - started
            except aiohttp.ClientOSError:  # server closed while we were still sending
                return 413, {"error": {"id": "body-too-large"}}, time.monotonic() - started

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=target.ssl)) as s:
        baseline = await _normal_latencies(target, s, 10)
        normal = asyncio.create_task(_normal_latencies(target, s, 30))
        results = await asyncio.gather(huge(False), huge(True), huge(False))
        during = await normal
    for status, answer, elapsed in results:
        assert status == 413, answer
        assert answer["error"]["id"] == "body-too-large"
        assert elapsed < 5.0, elapsed
    print(f"\n10 MB bodies refused in {[round(r[2] * 1000) for r in results]} ms; "
          f"normal request p50 {statistics.median(baseline) * 1000:.1f} ms before, "
          f"max {max(during) * 1000:.1f} ms during")
    assert max(during) < 0.5, during
    distinct, duplicated = await effect_counts(target.pool)
    assert duplicated == 0


async def _tls_connect(t: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", t.port, ssl=t.ssl,
                                         server_hostname="127.0.0.1")


async def test_slow_loris_does_not_block_others_and_is_disconnected(target: Target) -> None:
    """50 clients dribble request heads, 10 dribble bodies; normal requests stay fast.

    The server drops a head still incomplete after the keep-alive timeout (2 s
    here) and answers a body still incomplete after the body timeout (1 s
    here) with 408 ``body-timeout``.
    """
    heads = [await _tls_connect(target) for _ in range(50)]
    for _, w in heads:
        w.write(b"POST /v1/link/test HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    bodies = []
    for _ in range(10):
        r, w = await _tls_connect(target)
        w.write(b"POST /v1/link/test HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        bodies.append((r, w))

    async def dribble(writer: asyncio.StreamWriter, byte: bytes) -> None:
        try:
            for _ in range(20):
                writer.write(byte)
                await writer.drain()
                await asyncio.sleep(0.2)
        except (ConnectionError, OSError):
            return

    dribblers = [asyncio.create_task(dribble(w, b"X")) for _, w in heads]
    dribblers += [asyncio.create_task(dribble(w, b" ")) for _, w in bodies]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=target.ssl)) as s:
        latencies = await _normal_latencies(target, s, 40)
    # Below the 2 s head timeout: no normal request waited for a dribbler.
    assert max(latencies) < 1.5, latencies
    # the body dribblers got 408 with a JSON error id
    for r, _ in bodies:
        head = await asyncio.wait_for(r.read(4096), 3.0)
        assert head.startswith(b"HTTP/1.1 408"), head[:100]
        assert b'"body-timeout"' in head
    # the head dribblers were disconnected by the server
    started = time.monotonic()
    for r, _ in heads:
        assert await asyncio.wait_for(r.read(), 5.0) == b""
    print(f"\nslow-loris: normal requests max {max(latencies) * 1000:.1f} ms; heads closed "
          f"{time.monotonic() - started:.1f} s after the normal requests finished")
    for task in dribblers:
        task.cancel()
    for _, w in heads + bodies:
        w.close()
    await asyncio.gather(*dribblers, return_exceptions=True)


async def test_header_flood_is_refused(target: Target) -> None:
    r, w = await _tls_connect(target)
    w.write(b"POST /v1/link/test HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n")
    head = await asyncio.wait_for(r.read(4096), 3.0)
    assert head.split(b" ")[1] == b"400" and b"Too many headers" in head, head[:100]
    w.close()
