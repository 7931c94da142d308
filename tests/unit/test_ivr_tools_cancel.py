"""``ivr_platform.tools.run`` (Open JTalk, espeak-ng, sox, ffmpeg) on real child processes:
its caller's cancellation is never lost, not even when it comes in the same event-loop turn
as the child's exit (``asyncio.wait_for`` on 3.11 returned the output and dropped the
cancellation; then ``process.kill()`` on the reaped child raised ProcessLookupError in
its place); a cancellation or the deadline kills the child."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ivr_platform import tools
from tests.unit.test_shared_waits_cancel import ends_within, stop_runaway, until


def spy_on_children(monkeypatch: pytest.MonkeyPatch
                    ) -> list[asyncio.subprocess.Process]:
    """The children ``run`` starts (really started), in a list the test can read."""
    children: list[asyncio.subprocess.Process] = []
    real = asyncio.create_subprocess_exec

    async def started(*argv: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        child = await real(*argv, **kwargs)
        children.append(child)
        return child

    monkeypatch.setattr(asyncio, "create_subprocess_exec", started)
    return children


async def test_a_cancellation_with_the_child_s_exit_is_passed_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = asyncio.create_subprocess_exec
    cancels: list[bool] = []
    watchers: list[asyncio.Task[None]] = []

    async def started(*argv: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        child = await real(*argv, **kwargs)

        async def cancel_at_exit() -> None:
            # woken by the child's exit before run() is (it asked first): the
            # cancellation comes in the same turn as run()'s wake-up
            await child.wait()
            cancels.append(running.cancel())

        watchers.append(asyncio.create_task(cancel_at_exit()))
        return child

    monkeypatch.setattr(asyncio, "create_subprocess_exec", started)
    # the child closes its output at once (run() then waits for its exit), exits later
    running = asyncio.create_task(tools.run(["sh", "-c", "exec >&- 2>&-; sleep 0.2"], 10))
    try:
        assert await ends_within(running), "run() did not end within 2 s"
        assert cancels == [True]                    # cancelled while it was running
        if not running.cancelled():
            raise AssertionError(f"run() was cancelled, yet it ended with "
                                 f"{running.exception() or running.result()!r}")
    finally:
        await stop_runaway(running)
        for watcher in watchers:
            await stop_runaway(watcher)


async def test_a_cancellation_kills_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    children = spy_on_children(monkeypatch)
    running = asyncio.create_task(tools.run(["sleep", "30"], 60))
    try:
        await until(lambda: len(children) == 1)
        await asyncio.sleep(0.05)
        running.cancel()
        assert await ends_within(running) and running.cancelled()
        assert children[0].returncode == -9         # killed, and reaped
    finally:
        await stop_runaway(running)


async def test_the_deadline_kills_the_child_and_says_so(
        monkeypatch: pytest.MonkeyPatch) -> None:
    children = spy_on_children(monkeypatch)
    with pytest.raises(tools.ToolError, match="sleep took more than 0 s"):
        await tools.run(["sleep", "30"], 0.2)
    assert children[0].returncode == -9


async def test_the_output_or_the_failure() -> None:
    assert await tools.run(["sh", "-c", "echo out; echo err >&2"], 10) == (b"out\n", b"err\n")
    with pytest.raises(tools.ToolError, match="sh exited with 3: no"):
        await tools.run(["sh", "-c", "echo no >&2; exit 3"], 10)
