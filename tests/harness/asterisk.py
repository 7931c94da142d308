"""Real Asterisk instances for tests and the demo.

Wraps ``deploy/asterisk/instance.py`` (install/start/stop, stdlib only) and
adds the async helpers tests need::

    site = ensure_running("edge")           # provision root if needed, install, start
    async with site.client() as ari:        # AriClient for the site's own app
        await reset(site)                   # hang up every channel, destroy every bridge
        await qualify(site, "carrier-b")    # after starting that SIPp: OPTIONS now, wait online

A missing component (chroot root, asterisk binary, Open JTalk/espeak-ng/sox, a port held
by someone else) raises ``HarnessError`` naming it: tests fail, never skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import wave
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from shared.ari import AriClient, AriError, ChannelNotFound, Conflict, Event, channel_ids

REPO = Path(__file__).resolve().parents[2]
INSTANCE_TOOL = REPO / "deploy/asterisk/instance.py"
PROVISION_SCRIPT = REPO / "deploy/asterisk/provision-root.sh"

log = logging.getLogger("harness.asterisk")
E = TypeVar("E")


class HarnessError(RuntimeError):
    """A real component the tests need is missing or broken (the message names it)."""


def load_script(path: Path, name: str) -> ModuleType:
    """Import a stdlib-only deploy script (not a package module) as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise HarnessError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


@cache
def instance_tool() -> ModuleType:
    return load_script(INSTANCE_TOOL, "cbgw_instance_tool")


def asterisk_root() -> Path:
    return Path(os.environ.get("CBGW_ASTERISK_ROOT", "/var/cache/cbgw/asterisk-sid"))


@dataclass(frozen=True)
class AsteriskSite:
    """One running site: where its ARI is and how to log in."""

    name: str
    root: Path
    ari_url: str
    username: str
    password: str
    app: str
    sip_port: int
    version: str

    def client(self, app: str | None = None) -> AriClient:
        """A fresh (not yet started) client; ``async with`` starts and closes it."""
        return AriClient(self.ari_url, self.username, self.password, app or self.app)

    def cli(self, command: str) -> str:
        """Run an Asterisk CLI command (``asterisk -rx``) against this instance."""
        result = subprocess.run(
            ["chroot", str(self.root), "asterisk", "-C",
             f"/etc/asterisk-{self.name}/asterisk.conf", "-rx", command],
            capture_output=True, text=True, timeout=10, check=False)
        if result.returncode != 0:
            raise HarnessError(f"asterisk -rx {command!r} on {self.name}: {result.stderr.strip()}")
        return result.stdout


SIP_PORTS = {"edge": 5160, "callback": 5260, "callback2": 5262, "edge2": 5162}


def ensure_root() -> Path:
    """Provision the Asterisk root if missing (slow once, ~45 s; idempotent)."""
    root = asterisk_root()
    if (root / ".cbgw-provisioned").is_file() and (root / "usr/sbin/asterisk").exists():
        return root
    if os.geteuid() != 0:
        raise HarnessError(f"Asterisk root {root} is missing and provisioning needs root")
    result = subprocess.run(["bash", str(PROVISION_SCRIPT), str(root)], check=False)
    if result.returncode != 0:
        raise HarnessError(f"Asterisk root provisioning ({PROVISION_SCRIPT}) failed")
    return root


#: Sites this process started (not ones it found running): :func:`stop_started` stops them.
_STARTED: set[str] = set()


def ensure_running(name: str) -> AsteriskSite:
    """Install (idempotent) and start site ``name``; return how to reach it."""
    root = ensure_root()
    for program, package in (("open_jtalk", "open-jtalk"), ("espeak-ng", "espeak-ng"),
                             ("sox", "sox")):
        if shutil.which(program) is None:
            raise HarnessError(f"{program} is not installed (apt-get install {package}); "
                               "it renders the prompts")
    tool = instance_tool()
    try:
        site = tool.load_site(name, root)
        if tool.install(site) and tool.running_pid(site) is not None:
            log.info("Asterisk %s: configs changed, restarting it", name)
            tool.stop(site)     # a running instance would keep the old configs
        if tool.running_pid(site) is None:
            _STARTED.add(name)
        tool.start(site)
    except tool.InstanceError as exc:
        raise HarnessError(f"Asterisk site {name}: {exc}") from exc
    user, password = site.ari_credentials
    version = tool.version(root)
    log.info("Asterisk %s up at %s (%s)", name, site.ari_url, version)
    return AsteriskSite(name=name, root=root, ari_url=site.ari_url, username=user,
                        password=password, app=user, sip_port=SIP_PORTS.get(name, 0),
                        version=version)


def sounds_dir(site: str, name: str, root: Path | None = None) -> tuple[Path, str]:
    """The directory ``sounds/<name>`` of site ``site``: as this host sees it (inside the
    root) and as its Asterisk does."""
    installed = instance_tool().load_site(site, root or asterisk_root())
    inner = f"{installed.directories()['astdatadir'].rstrip('/')}/sounds/{name}"
    return installed.host(inner), inner


def recordings_spool(site: str, root: Path | None = None) -> Path:
    """Where site ``site``'s Asterisk writes ARI recordings (``<astspooldir>/recording``),
    as this host sees it: what the callback site's ``[media] asterisk_recordings_dir`` is."""
    installed = instance_tool().load_site(site, root or asterisk_root())
    return Path(installed.host(installed.directories()["astspooldir"])) / "recording"


def prompt_seconds(site: AsteriskSite, language: str, name: str) -> float:
    """How long the installed prompt ``sound:cbgw/<name>`` in ``language`` plays."""
    return sound_seconds(site, language, f"cbgw/{name}")


def sound_seconds(site: AsteriskSite, language: str, sound: str) -> float:
    """How long the installed sound ``sound:<sound>`` in ``language`` plays (e.g.
    ``digits/1``, what ``digits:1`` says first)."""
    tool = instance_tool()
    installed = tool.load_site(site.name, site.root)
    path = (installed.host(installed.directories()["astdatadir"])
            / "sounds" / language / f"{sound}.wav")
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


def answer_log(name: str) -> Path:
    """Site ``name``'s log of answers (its cel_custom.conf), as this host sees it."""
    return asterisk_root() / f"var/log/asterisk-{name}/cbgw-answers.csv"


def log_lines(name: str, containing: str, *, last: int = 30) -> list[str]:
    """The last ``last`` lines of site ``name``'s full.log that contain ``containing``
    (a failing test's evidence of what each Asterisk did with a call)."""
    path = asterisk_root() / f"var/log/asterisk-{name}/full.log"
    try:
        with path.open(errors="replace") as log:
            return [line.rstrip("\n") for line in log if containing in line][-last:]
    except OSError as exc:
        return [f"(no {path}: {exc.strerror})"]


def stop(name: str) -> None:
    tool = instance_tool()
    tool.stop(tool.load_site(name, asterisk_root()))
    _STARTED.discard(name)


def running_pid(name: str) -> int | None:
    """The pid of site ``name``'s running Asterisk, or None."""
    tool = instance_tool()
    found: int | None = tool.running_pid(tool.load_site(name, asterisk_root()))
    return found


def kill9(name: str, *, within_s: float = 10.0) -> int:
    """SIGKILL site ``name``'s Asterisk (a crash: no hangup handlers, no clean shutdown)
    and wait until it is gone; its pid. :func:`ensure_running` starts it again."""
    pid = running_pid(name)
    if pid is None:
        raise HarnessError(f"Asterisk {name} is not running: nothing to kill")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + within_s
    while _alive(pid):
        if time.monotonic() > deadline:
            raise HarnessError(f"Asterisk {name} (pid {pid}) survived SIGKILL for {within_s} s")
        time.sleep(0.05)
    return int(pid)


def _alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (a daemon's parent may never reap it here)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def started_here() -> bool:
    """Whether this process started a site (that :func:`stop_started` would stop)."""
    return bool(_STARTED)


def stop_started() -> list[str]:
    """Stop the sites this process started (a test session, at its end, holding
    :func:`stack_lock`: another session may be using them by then), so no Asterisk
    keeps running, and taking CPU from what runs next (``make bench``), after
    ``make test``. A site that was already running when first asked for is left alone,
    unless its configs had changed and it was restarted with the new ones."""
    stopped = sorted(_STARTED)
    for name in stopped:
        stop(name)
    return stopped


@contextmanager
def stack_lock() -> Iterator[None]:
    """The stack's lock (``demo.stack.LOCK_PATH``) held inside: whoever holds it has the
    shared Asterisks to itself (it waits for the holder)."""
    from demo.stack import LOCK_PATH

    with open(LOCK_PATH, "ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextmanager
def running_locked(name: str) -> Iterator[AsteriskSite]:
    """The site running, with the stack's lock held inside: for a test that drives a
    shared Asterisk without ``demo.stack.Stack``."""
    with stack_lock():
        yield ensure_running(name)


def locked_site_fixture(name: str) -> Any:
    """A module-scoped fixture named ``name``: the site running with the stack's lock held
    for the module's tests (:func:`running_locked`)."""
    import pytest  # here: the demo and the benches import this module without pytest's use

    @pytest.fixture(scope="module", name=name)
    def site() -> Iterator[AsteriskSite]:
        with running_locked(name) as running_site:
            yield running_site
    return site


@contextmanager
def running(name: str, *, stop_after: bool = False) -> Iterator[AsteriskSite]:
    """Context manager: the site is running inside; optionally stopped after."""
    site = ensure_running(name)
    try:
        yield site
    finally:
        if stop_after:
            stop(name)


async def reset(site: AsteriskSite, *, within_s: float = 5.0) -> None:
    """Hang up every channel and destroy every bridge; wait until none are left.

    Run before each test so one test's leftovers (a channel parked in Stasis,
    a bridge) cannot leak into the next.
    """
    async with site.client() as ari:
        # Channels first: hanging them up also dissolves bridges that the dialplan
        # made (Dial()), which ARI may not destroy (409 "not in Stasis application").
        deadline = time.monotonic() + within_s
        while channels := await ari.list_channels():
            for channel in channels:
                await ari.hangup(channel.id)
            if time.monotonic() > deadline:
                names = ", ".join(c.name for c in channels)
                raise HarnessError(f"{site.name}: channels survive hangup: {names}")
            await asyncio.sleep(0.05)
        for bridge in await ari.list_bridges():
            with contextlib.suppress(ChannelNotFound, Conflict):
                await ari.destroy_bridge(bridge.id)


#: The trunks' ``qualify_timeout`` in deploy/asterisk/*/pjsip.conf, plus a margin.
QUALIFY_SETTLE_S = 1.2


async def qualify(site: AsteriskSite, endpoint: str, *, within_s: float = 3.0) -> None:
    """Send OPTIONS to ``endpoint`` now and wait until ARI reports it online, and still
    online once an OPTIONS sent before this call would have timed out.

    Trunks are qualified every few seconds; a SIPp started moments ago would
    otherwise still be 'unavailable' and originate would fail with
    AllocationFailed. A periodic OPTIONS that Asterisk sent just before the SIPp
    bound its port times out up to ``qualify_timeout`` later and marks the
    contact unreachable again, after a fresh OPTIONS had already marked it
    reachable: so "online" counts only from ``QUALIFY_SETTLE_S`` after the call.
    """
    started = time.monotonic()
    deadline = started + max(within_s, QUALIFY_SETTLE_S + 1.0)
    async with site.client() as ari:
        while True:
            await asyncio.to_thread(site.cli, f"pjsip qualify {endpoint}")
            await asyncio.sleep(0.05)
            try:
                state = await ari.get_endpoint("PJSIP", endpoint)
            except AriError as exc:
                raise HarnessError(f"{site.name}: ARI endpoint query failed: {exc}") from exc
            online = state is not None and state.state == "online"
            settled_in = started + QUALIFY_SETTLE_S - time.monotonic()
            if online and settled_in <= 0:
                return
            if time.monotonic() > deadline:
                got = state.state if state else "missing"
                waited = time.monotonic() - started
                raise HarnessError(f"{site.name}: endpoint {endpoint} not online after "
                                   f"{waited:.1f} s (state {got}); is its SIPp running?")
            await asyncio.sleep(settled_in if online else 0.1)


@contextlib.asynccontextmanager
async def events_read_aside(ari: AriClient) -> AsyncIterator[AsyncIterator[Event]]:
    """``ari``'s events, read on in a task of their own, as the sites' router reads them:
    a request sent on the events websocket (``requests_over_events``) is answered among
    the events, so they must be read while it waits. Yields the events as they came."""
    queue: asyncio.Queue[Event] = asyncio.Queue()

    async def read() -> None:
        async for event in ari.events():
            queue.put_nowait(event)

    async def queued() -> AsyncIterator[Event]:
        while True:
            yield await queue.get()

    reader = asyncio.ensure_future(read())
    try:
        yield queued()
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def expect_event(events: AsyncIterator[Event], kind: type[E], *,
                       channel_id: str | None = None, within_s: float = 5.0,
                       seen: list[Event] | None = None) -> E:
    """Read ``events`` until one of type ``kind`` (for ``channel_id``) arrives.

    Skipped events are appended to ``seen`` when given. AssertionError on timeout.
    """
    skipped: list[Event] = seen if seen is not None else []
    try:
        async with asyncio.timeout(within_s):
            async for event in events:
                if isinstance(event, kind) and (
                        channel_id is None or channel_id in channel_ids(event)):
                    return event
                skipped.append(event)
    except TimeoutError:
        pass
    names = [type(e).__name__ for e in skipped[-20:]]
    raise AssertionError(f"no {kind.__name__} for {channel_id or 'any channel'} within "
                         f"{within_s} s; got {names}")
