"""``shared.site.background`` (the servers' cleanup contexts' tasks) passes on the
cancellation of whoever leaves its block, and still ends quietly in a server's shutdown.

It cancelled its task and waited for it under ``suppress(CancelledError)``, which
swallowed the leaver's own cancellation too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from shared.site import background
from tests.unit.test_shared_waits_cancel import ends_within, slow_to_end, stop_runaway, until


async def test_leaving_passes_on_its_caller_s_cancellation() -> None:
    release = asyncio.Event()
    started = asyncio.Event()
    left: list[str] = []

    async def work() -> None:
        started.set()
        await slow_to_end(release)

    async def serve() -> None:
        async with background(work(), "slow to end"):
            await asyncio.sleep(0.01)
        left.append("carried on")

    serving = asyncio.create_task(serve())
    await started.wait()
    await asyncio.sleep(0.05)                   # it has left the block and waits for work()
    serving.cancel()                            # its caller's own cancellation
    try:
        assert await ends_within(serving), "leaving did not end within 2 s"
        assert serving.cancelled(), "background() swallowed its caller's cancellation"
        assert left == []
    finally:
        release.set()
        await stop_runaway(serving)


async def test_a_server_s_shutdown_ends_its_tasks_and_goes_on() -> None:
    """As ``web.run_app`` stops on SIGTERM: its main task is cancelled, then runs the
    cleanup contexts, each a ``background()`` block followed by more cleanup (a client's
    or a pool's close)."""
    tasks: list[asyncio.Task[None]] = []
    cleaned: list[str] = []

    async def forever() -> None:
        tasks.append(asyncio.current_task())    # type: ignore[arg-type]
        await asyncio.sleep(3600)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with background(forever(), "forever"):
            yield
        cleaned.append("after the block")

    app = web.Application()
    app.cleanup_ctx.append(ctx)
    runner = web.AppRunner(app)

    async def main() -> None:                   # aiohttp.web._run_app, the sockets left out
        await runner.setup()
        try:
            await asyncio.sleep(3600)
        finally:
            await runner.cleanup()

    running = asyncio.create_task(main())
    try:
        await until(lambda: bool(tasks))
        running.cancel()
        assert await ends_within(running), "the shutdown did not end within 2 s"
        assert tasks[0].cancelled()
        assert cleaned == ["after the block"]
    finally:
        await stop_runaway(running)
