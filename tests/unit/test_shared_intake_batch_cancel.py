"""``Batcher.close()`` (the intakes' and the consultations' billing batchers, closed at
shutdown) passes on its caller's cancellation, and even then leaves no request waiting.

It cancelled its queue's task and waited for it under ``suppress(CancelledError)``, which
swallowed the caller's cancellation too."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest

from shared.intake_batch import Batcher, BatchFailed
from tests.unit.test_shared_waits_cancel import ends_within, slow_to_end, stop_runaway, until


class Lingering(Batcher[str, str]):
    """A batcher whose queue waits ``linger_s`` for more requests before it writes: no
    batch goes out during a test (no database), the queue's task is under way."""

    async def write(self, conn: object, batch: Sequence[tuple[str, str]]
                    ) -> Mapping[str, str | Exception]:
        raise AssertionError("no batch goes out in this test")


class SlowToStop(Lingering):
    """... and whose queue's task, once cancelled, is slow to end (until ``release``)."""

    release: asyncio.Event

    async def _run(self) -> None:
        try:
            await super()._run()
        finally:
            await slow_to_end(self.release)


LINGERING = {"pool": None, "kind": "test", "max_in_flight": 1, "linger_s": 300.0}


async def test_close_passes_on_its_caller_s_cancellation_and_fails_the_queued() -> None:
    batcher = SlowToStop(**LINGERING)       # type: ignore[arg-type]
    release = batcher.release = asyncio.Event()
    delivering = asyncio.create_task(batcher.deliver("m1", "payload"))
    await until(lambda: batcher._loop_task is not None)
    loop_task = batcher._loop_task
    assert loop_task is not None
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0.05)               # close() has cancelled the queue's task and waits
    assert not loop_task.done()
    closing.cancel()                        # its caller's own cancellation
    try:
        assert await ends_within(closing), "close() did not end within 2 s"
        assert closing.cancelled(), "close() swallowed its caller's cancellation"
        assert await ends_within(delivering), "a request was left waiting"
        with pytest.raises(BatchFailed, match="shutting down"):
            delivering.result()
    finally:
        release.set()
        await stop_runaway(closing)
        await stop_runaway(delivering)
        await stop_runaway(loop_task)
    assert await ends_within(loop_task) and loop_task.cancelled()


async def test_close_alone_ends_the_queue_s_task_and_fails_the_queued() -> None:
    batcher = Lingering(**LINGERING)        # type: ignore[arg-type]
    delivering = asyncio.create_task(batcher.deliver("m1", "payload"))
    await until(lambda: batcher._loop_task is not None)
    loop_task = batcher._loop_task
    assert loop_task is not None
    await batcher.close()
    assert loop_task.cancelled() and batcher._loop_task is None
    assert await ends_within(delivering)
    with pytest.raises(BatchFailed, match="shutting down"):
        delivering.result()
