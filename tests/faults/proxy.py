"""A small asyncio TCP proxy that adds one-way latency and can partition a link.

This kernel has no ``netem`` qdisc, so WAN latency (about 120 ms of round-trip
time between Tokyo and the US) is added in user space::

    proxy = DelayProxy(("127.0.0.1", 0), ("127.0.0.1", 9443), delay_s=0.060)
    await proxy.start()            # proxy.port is the listening port
    proxy.pause()                  # partition: nothing flows, in either direction
    proxy.resume()                 # healed: held bytes and connections flow on
    proxy.cut()                    # abort every open connection (both sides see a reset)
    proxy.delay_s = 0.150          # change latency at run time
    await proxy.close()

Each direction of each connection is its own ordered pipe: a chunk read at
time *t* is written at *t + delay_s*. Reading never waits for writing, so the
delay adds latency without limiting throughput (no bandwidth model).

A pause emulates a partition the way TCP experiences one: a connection made
during the pause is accepted but not connected upstream, and bytes in flight
are held, not dropped (TCP would retransmit them). Whether the endpoints give
up meanwhile is up to their own timeouts. ``pause(reject=True)`` instead
refuses new connections (reset) like a host that is down.

Also a command line tool for the demo and benchmarks::

    python -m tests.faults.proxy --listen 127.0.0.1:19443 --target 127.0.0.1:9443 \\
        --delay-ms 60          # SIGUSR1 pauses, SIGUSR2 resumes, SIGHUP cuts
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger("faults.proxy")

Address = tuple[str, int]
_CHUNK = 64 * 1024


@dataclass
class ProxyStats:
    accepted: int = 0
    connected: int = 0
    failed: int = 0
    cut: int = 0
    bytes_up: int = 0      # client -> target
    bytes_down: int = 0    # target -> client


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None and not writer.transport.is_closing():
                writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class DelayProxy:
    def __init__(self, listen: Address, target: Address, *, delay_s: float = 0.0,
                 name: str = "proxy") -> None:
        self.listen = listen
        self.target = target
        self.delay_s = delay_s
        self.name = name
        self.stats = ProxyStats()
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._reject = False
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("proxy not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def paused(self) -> bool:
        return not self._flowing.is_set()

    async def start(self) -> DelayProxy:
        self._server = await asyncio.start_server(self._accept, self.listen[0], self.listen[1],
                                                  reuse_address=True)
        log.info("%s: %s:%d -> %s:%d, one-way delay %.0f ms", self.name, self.listen[0],
                 self.port, self.target[0], self.target[1], self.delay_s * 1000)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._handlers):
            task.cancel()
        for task in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> DelayProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def pause(self, *, reject: bool = False) -> None:
        """Partition: hold every byte and every new connection (or reset new ones)."""
        self._flowing.clear()
        self._reject = reject
        log.info("%s: paused (%s)", self.name, "reject" if reject else "blackhole")

    def resume(self) -> None:
        self._reject = False
        self._flowing.set()
        log.info("%s: resumed", self.name)

    def cut(self) -> int:
        """Abort every open connection; returns how many."""
        conns = list(self._conns)
        for conn in conns:
            conn.abort()
        self._conns.clear()
        self.stats.cut += len(conns)
        if conns:
            log.info("%s: cut %d connections", self.name, len(conns))
        return len(conns)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        if self._reject:
            writer.transport.abort()
            return
        task = asyncio.create_task(self._serve(reader, writer))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer)
        self._conns.add(conn)
        try:
            await asyncio.sleep(self.delay_s)  # the SYN crosses the link
            await self._flowing.wait()
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError as exc:
                self.stats.failed += 1
                log.debug("%s: upstream connect failed: %s", self.name, exc)
                writer.transport.abort()
                return
            self.stats.connected += 1
            conn.upstream = up_writer
            conn.tasks = [asyncio.create_task(self._pipe(reader, up_writer, up=True)),
                          asyncio.create_task(self._pipe(up_reader, writer, up=False))]
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        finally:
            self._conns.discard(conn)
            conn.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    up: bool) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def pump() -> None:
            try:
                while data := await reader.read(_CHUNK):
                    queue.put_nowait((loop.time() + self.delay_s, data))
            except (ConnectionError, OSError):
                pass
            queue.put_nowait((loop.time() + self.delay_s, b""))

        pumping = asyncio.create_task(pump())
        try:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._flowing.wait()
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    break
                writer.write(data)
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumping


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def _main(args: argparse.Namespace) -> None:
    proxy = DelayProxy(_address(args.listen), _address(args.target),
                       delay_s=args.delay_ms / 1000, name=args.name)
    await proxy.start()
    print(f"listening {args.listen.rpartition(':')[0]}:{proxy.port}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, proxy.pause)
    loop.add_signal_handler(signal.SIGUSR2, proxy.resume)
    loop.add_signal_handler(signal.SIGHUP, proxy.cut)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await proxy.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.proxy",
                                     description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--listen", required=True, help="HOST:PORT (port 0: any free port)")
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--delay-ms", type=float, default=60.0, help="one-way delay")
    parser.add_argument("--name", default="proxy")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
