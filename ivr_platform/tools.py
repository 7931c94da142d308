"""The external programs the IVR platform runs (Open JTalk, espeak-ng, sox, ffmpeg):
found or named by their Debian package, run with a deadline.

    ToolError        a program exited non-zero or took longer than its deadline
    └── ToolMissing  a program is not installed; the message names its Debian package
"""

from __future__ import annotations

import asyncio
import shutil


class ToolError(RuntimeError):
    """A program exited non-zero or took longer than its deadline."""


class ToolMissing(ToolError):
    """A program is not installed; the message names its Debian package."""


def need_program(program: str, package: str, error: type[ToolError] = ToolMissing) -> None:
    """``error`` naming ``apt-get install <package>`` unless ``program`` is on the PATH."""
    if shutil.which(program) is None:
        raise error(f"{program} is not installed (apt-get install {package})")


async def run(argv: list[str], timeout_s: float, error: type[ToolError] = ToolError
              ) -> tuple[bytes, bytes]:
    """Run ``argv`` (no stdin); its stdout and stderr. ``error`` when it exits non-zero
    (with the tail of what it said) or runs past ``timeout_s`` (it is killed)."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        # not asyncio.wait_for: on 3.11 it returns output that comes in the same event-loop
        # turn as the caller's cancellation and drops the cancellation
        async with asyncio.timeout(timeout_s):
            out, err = await process.communicate()
    except TimeoutError:
        await _end(process)
        raise error(f"{argv[0]} took more than {timeout_s:.0f} s") from None
    except asyncio.CancelledError:
        await _end(process)
        raise
    if process.returncode != 0:
        detail = (err or out).decode(errors="replace").strip()[-300:]
        raise error(f"{argv[0]} exited with {process.returncode}: {detail}")
    return out, err


async def _end(process: asyncio.subprocess.Process) -> None:
    """Kill the child unless it has exited (a reaped child's kill() raises
    ProcessLookupError), and reap it."""
    if process.returncode is None:
        process.kill()
    await process.wait()
