"""Where a hung test was stuck, in its failure's one-line summary.

Every test of a session shares one event loop (``asyncio_default_*_loop_scope =
"session"``). When a test or its fixture waits on something that never comes,
pytest-timeout fails it with the main thread's stack, which is only the loop's
``select()``: it says nothing of what the test was awaiting. So, shortly before
pytest-timeout fires, a watchdog thread reads the loop's tasks that a test or
fixture is running and the default executor's busy threads, and the failure's
summary line says where each was (:func:`install`, called from ``conftest.py``).

The session's loop also gets a larger default executor (:func:`widen_executor`):
in a test session it carries the ``asyncio.to_thread`` calls of every server and
test in the process (a test's blocking waits for its SIPp phones beside the
sites' own), where a production process carries one site's.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

#: how long before pytest-timeout fires the watchdog looks
LEAD_S = 10.0
#: threads of the session loop's default executor
EXECUTOR_THREADS = 32
_REPO = Path(__file__).resolve().parents[2]
_TESTS = _REPO / "tests"
_DUMP = pytest.StashKey[str]()
_WATCH = pytest.StashKey[threading.Timer]()


class _Loop:
    loop: asyncio.AbstractEventLoop | None = None


def widen_executor(loop: asyncio.AbstractEventLoop) -> None:
    """The session loop's default executor, wider, and remembered for the watchdog."""
    _Loop.loop = loop
    loop.set_default_executor(ThreadPoolExecutor(EXECUTOR_THREADS,
                                                 thread_name_prefix="asyncio"))


def _timeout_of(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None:
        value = marker.args[0] if marker.args else marker.kwargs.get("timeout", 0)
    else:
        value = item.config.getoption("timeout", None) or item.config.getini("timeout")
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


def start(item: pytest.Item) -> None:
    """At the start of ``item``'s setup: look at ``LEAD_S`` before its timeout."""
    timeout = _timeout_of(item)
    if timeout <= LEAD_S:
        return
    started = time.monotonic()

    def look() -> None:
        item.stash[_DUMP] = f"at {time.monotonic() - started:.0f} s: {where_stuck()}"

    watch = threading.Timer(timeout - LEAD_S, look)
    watch.daemon = True
    watch.start()
    item.stash[_WATCH] = watch


def stop(item: pytest.Item) -> None:
    watch = item.stash.get(_WATCH, None)
    if watch is not None:
        watch.cancel()


def annotate(item: pytest.Item, report: pytest.TestReport) -> None:
    """A failed report of a test the watchdog saw still running: its summary line says
    where it was."""
    dump = item.stash.get(_DUMP, None)
    if dump is None or not report.failed:
        return
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        crash.message = f"{crash.message} [stuck {dump}]"
    report.sections.append(("stuck", dump))


def where_stuck() -> str:
    parts = [f"task {chain}" for chain in _test_tasks()]
    parts += [f"thread {name} in {frames}" for name, frames in _busy_executor_threads()]
    return "; ".join(parts) or "no test task pending and no executor thread busy"


def _test_tasks() -> list[str]:
    loop = _Loop.loop
    if loop is None:
        return []
    try:
        tasks = asyncio.all_tasks(loop)
    except RuntimeError:  # the set changed while it was copied: once more
        tasks = asyncio.all_tasks(loop)
    chains = []
    for task in tasks:
        frames = _await_chain(task.get_coro())
        if any(Path(f.f_code.co_filename).is_relative_to(_TESTS) for f, _ in frames):
            chains.append(_describe(frames))
    return chains[:6]


def _await_chain(coro: Any) -> list[tuple[types.FrameType, str]]:
    """The frames a coroutine is suspended in, outermost first, then what the innermost
    awaits (a future, another task) as text."""
    out: list[tuple[types.FrameType, str]] = []
    seen = 0
    while coro is not None and seen < 64:
        seen += 1
        frame = (getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
                 or getattr(coro, "gi_frame", None))
        awaited = (getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
                   or getattr(coro, "gi_yieldfrom", None))
        if frame is not None:
            out.append((frame, "" if awaited is not None else "(running)"))
        if type(awaited).__name__ == "async_generator_asend" and frame is not None:
            # an async fixture's generator, stepped by pytest-asyncio: the running one
            # among the awaiting frame's locals
            awaited = next((v for v in frame.f_locals.values()
                            if isinstance(v, types.AsyncGeneratorType) and v.ag_running),
                           None)
        if isinstance(awaited, asyncio.Task):
            coro = awaited.get_coro()
        elif isinstance(awaited, asyncio.Future):
            if out:
                out[-1] = (out[-1][0], f"awaits {awaited!r}"[:160])
            break
        else:
            coro = awaited
    return out


def _describe(frames: list[tuple[types.FrameType, str]]) -> str:
    shown = [f for f in frames if _ours(f[0].f_code.co_filename)] or frames
    if frames and shown[-1] is not frames[-1]:
        shown.append(frames[-1])
    return " > ".join(f"{_short(f.f_code.co_filename)}:{f.f_lineno} {f.f_code.co_name}"
                      + (f" {note}" if note else "") for f, note in shown[-8:])


def _busy_executor_threads() -> list[tuple[str, str]]:
    names = {t.ident: t.name for t in threading.enumerate()}
    busy = []
    for ident, frame in sys._current_frames().items():
        name = names.get(ident, "")
        if not name.startswith("asyncio"):
            continue
        stack: list[types.FrameType] = []
        f: types.FrameType | None = frame
        while f is not None:
            stack.append(f)
            f = f.f_back
        if stack and stack[0].f_code.co_name == "_worker":
            continue  # idle: waiting for work in the queue's get (C code)
        ours = [s for s in stack if _ours(s.f_code.co_filename)][:3] or stack[:3]
        busy.append((name, " < ".join(f"{_short(s.f_code.co_filename)}:{s.f_lineno} "
                                      f"{s.f_code.co_name}" for s in ours)
                     + _work_of(stack)))
    return busy[:8]


def _work_of(stack: list[types.FrameType]) -> str:
    """What an executor thread was given to run (``asyncio.to_thread`` wraps it in
    ``functools.partial(context.run, func, ...)``)."""
    for frame in stack:
        work = frame.f_locals.get("self") if frame.f_code.co_name == "run" else None
        fn = getattr(work, "fn", None)
        if fn is None:
            continue
        while isinstance(fn, functools.partial):
            fn = fn.args[0] if fn.func.__name__ == "run" and fn.args else fn.func
        return f" (running {getattr(fn, '__qualname__', repr(fn))[:80]})"
    return ""


def _ours(filename: str) -> bool:
    path = Path(filename)
    return path.is_relative_to(_REPO) and ".venv" not in path.parts


def _short(filename: str) -> str:
    path = Path(filename)
    if path.is_relative_to(_REPO) and ".venv" not in path.parts:
        return str(path.relative_to(_REPO))
    return path.name
