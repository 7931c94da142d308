"""The fault-lab tools themselves: the delaying proxy and the namespace lab."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest

from tests.faults import netlab
from tests.faults.netlab import NetLab, NetlabError
from tests.faults.proxy import DelayProxy


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()


async def _round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      data: bytes) -> float:
    started = time.monotonic()
    writer.write(data)
    await writer.drain()
    assert await reader.readexactly(len(data)) == data
    return time.monotonic() - started


async def test_proxy_adds_latency_both_ways_and_keeps_order(echo_port: int) -> None:
    async with DelayProxy(("127.0.0.1", 0), ("127.0.0.1", echo_port), delay_s=0.060) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        rtts = [await _round_trip(reader, writer, f"ping {i} ".encode() * 50) for i in range(5)]
        big = bytes(range(256)) * 4096  # 1 MiB: ordered, intact
        rtts.append(await _round_trip(reader, writer, big))
        writer.close()
        await writer.wait_closed()
        assert all(0.115 <= rtt < 0.400 for rtt in rtts), rtts
        assert proxy.stats.bytes_up == proxy.stats.bytes_down >= len(big)


async def test_proxy_pause_holds_traffic_until_resume(echo_port: int) -> None:
    async with DelayProxy(("127.0.0.1", 0), ("127.0.0.1", echo_port), delay_s=0.010) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        await _round_trip(reader, writer, b"before")
        proxy.pause()
        writer.write(b"during")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(6), 0.5)
        # a new connection during the partition is not connected upstream either
        r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)
        w2.write(b"new")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r2.readexactly(3), 0.3)
        proxy.resume()
        assert await asyncio.wait_for(reader.readexactly(6), 1.0) == b"during"
        assert await asyncio.wait_for(r2.readexactly(3), 1.0) == b"new"
        writer.close()
        w2.close()
        await writer.wait_closed()
        await w2.wait_closed()


async def test_proxy_cut_and_reject(echo_port: int) -> None:
    async with DelayProxy(("127.0.0.1", 0), ("127.0.0.1", echo_port)) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        await _round_trip(reader, writer, b"x")
        assert proxy.cut() == 1
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 1.0)
        writer.close()
        proxy.pause(reject=True)
        r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            w2.write(b"y")
            await w2.drain()
            await asyncio.wait_for(r2.readexactly(1), 1.0)
        w2.close()
        proxy.resume()
        r3, w3 = await asyncio.open_connection("127.0.0.1", proxy.port)
        await _round_trip(r3, w3, b"z")
        w3.close()
        await w3.wait_closed()


def test_netlab_refuses_to_run_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netlab.os, "geteuid", lambda: 1000)
    with pytest.raises(NetlabError, match=r"tests/faults/netlab .* needs root"):
        NetLab("cbgwt")


def _connect(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def test_netlab_namespace_veth_partition_and_cleanup() -> None:
    lab = NetLab("cbgwt")  # fails (never skips) when not root, naming the component
    try:
        ns = lab.namespace("site")
        link = lab.veth("l1", None, "10.203.1.1/30", ns, "10.203.1.2/30")
        server = lab.popen(ns, [sys.executable, "-c",
                                "import socket,time\n"
                                "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,"
                                "socket.SO_REUSEADDR,1)\n"
                                "s.bind(('0.0.0.0', 18080)); s.listen(16)\n"
                                "print('up', flush=True)\n"
                                "while True:\n c,_=s.accept(); c.close()\n"],
                           stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "up"
        assert _connect(link.ip_b, 18080)
        assert not _connect("127.0.0.1", 18080, 0.2)  # it lives in its own namespace
        lab.link_down("l1")
        assert not _connect(link.ip_b, 18080, 0.5)
        lab.link_up("l1")
        deadline = time.monotonic() + 5
        while not _connect(link.ip_b, 18080) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _connect(link.ip_b, 18080)
    finally:
        lab.destroy()
    assert "cbgwt-site" not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                              text=True, check=True).stdout
    assert subprocess.run(["ip", "link", "show", "cbgwtl1a"], capture_output=True,
                          check=False).returncode != 0
    assert server.poll() is not None
