"""Requests an HTTP client library will not send: raw header bytes over a plain socket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp.test_utils import TestClient

#: JSON nested deeper than the parser's recursion limit
DEEP_JSON = b"[" * 3000 + b"]" * 3000
#: instants that overflow when normalised to UTC
EDGE_TIMES = ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00")


async def raw_request(client: TestClient[Any, Any], method: str, path: str,
                      headers: bytes, body: bytes = b"") -> tuple[int, Any]:
    """``method path`` with raw header lines (CRLF-separated) and ``body``; the status and
    the JSON body."""
    server = client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: test\r\n".encode() + headers
                     + f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                     .encode() + body)
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
    head, _, payload = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(payload)


async def raw_get(client: TestClient[Any, Any], path: str, header: bytes
                  ) -> tuple[int, Any]:
    """``GET path`` with one raw header line."""
    return await raw_request(client, "GET", path, header)
