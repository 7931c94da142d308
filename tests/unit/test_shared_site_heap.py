"""shared.site.settle_heap_on_startup: after the app's start-ups, start-up's objects are
frozen out of the cyclic collector and the thresholds are the server's."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web

from shared.site import GC_THRESHOLDS, settle_heap_on_startup


@pytest.fixture
def restored_gc() -> Iterator[None]:
    """The test process's collector as it was (the hook changes process-wide state)."""
    thresholds = gc.get_threshold()
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


async def test_settles_after_the_start_ups_and_sets_the_thresholds(restored_gc: None) -> None:
    seen: dict[str, object] = {}
    loaded: list[object] = []

    async def rates_ctx(_: web.Application) -> AsyncIterator[None]:
        # what a composition root's start-up builds: long-lived containers
        loaded.extend({"prefix": str(i)} for i in range(1000))
        seen["frozen during start-up"] = gc.get_freeze_count()
        yield

    app = web.Application()
    app.cleanup_ctx.append(rates_ctx)
    settle_heap_on_startup(app)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        assert seen["frozen during start-up"] == 0
        assert gc.get_freeze_count() >= len(loaded)
        assert gc.get_threshold() == GC_THRESHOLDS
    finally:
        await runner.cleanup()
