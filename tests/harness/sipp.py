"""SIPp roles for tests and the demo, and SIP facts parsed from their traces.

Each role is one SIPp process on its own port, running a scenario from
``deploy/sipp/`` with ``-trace_msg``; the message log is parsed into
``SipMessage`` facts that tests assert on::

    with start_role("uas_reject_503.xml", port=CARRIER_A_PORT, workdir=tmp) as carrier_a, \\
         start_role("uas_answer_dtmf.xml", port=CARRIER_B_PORT, workdir=tmp, digits="1234#") \\
            as carrier_b:
        ...
        invite = carrier_b.wait_for(lambda m: m.method == "INVITE")
        assert invite.ruri_user == "09012345678"

    phone = customer_call(tmp, dialled="0120123456", caller="09012345678")
    phone.wait()                                   # UAC: one call, then SIPp exits
    assert phone.statuses_received() == [100, 183, 486]

Out-of-dialog OPTIONS (trunk qualify, answered by ``-aa``) are parsed but left
out of the ``*_received``/``*_sent`` helpers. A missing ``sipp`` binary or
scenario raises ``HarnessError``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from types import ModuleType, TracebackType

from tests.harness.asterisk import REPO, HarnessError

SIPP_DIR = REPO / "deploy/sipp"
EDGE_SIP = ("127.0.0.1", 5160)
CALLBACK_SIP = ("127.0.0.1", 5260)

# Loopback address map (docs/CONTRACTS.md, "Asterisk instances").
CUSTOMER_IP, CUSTOMER_PORT = "127.0.0.2", 15061   # calls the edge; edge identifies carrier-in
CARRIER_A_PORT = 15070                            # callback site's carrier-a
CARRIER_B_PORT = 15080                            # callback site's carrier-b (customer's phone)
OPERATOR_PORT = 15090                             # edge's operator endpoint
ROLE_PORTS = {"carrier-a": CARRIER_A_PORT, "carrier-b": CARRIER_B_PORT,
              "operator": OPERATOR_PORT}

_SEPARATOR = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\s*$")
_DIRECTION = re.compile(r"^\w+ message (sent|received)")
_USER = re.compile(r"sips?:([^@;>:]+)@")


@dataclass(frozen=True)
class SipMessage:
    """One SIP message SIPp sent or received."""

    direction: str                    # "sent" or "received" (from SIPp's point of view)
    at: datetime                      # local-time stamp from SIPp's log (aware)
    first_line: str
    headers: Mapping[str, str] = field(default_factory=dict)   # lower-case names, first value
    body: str = ""

    @property
    def is_request(self) -> bool:
        return not self.first_line.startswith("SIP/2.0")

    @property
    def method(self) -> str | None:
        return self.first_line.split(" ", 1)[0] if self.is_request else None

    @property
    def status(self) -> int | None:
        if self.is_request:
            return None
        parts = self.first_line.split(" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None

    @property
    def ruri(self) -> str | None:
        return self.first_line.split(" ")[1] if self.is_request else None

    @property
    def ruri_user(self) -> str | None:
        match = _USER.search(self.ruri or "")
        return match.group(1) if match else None

    @property
    def from_user(self) -> str | None:
        match = _USER.search(self.header("from") or "")
        return match.group(1) if match else None

    @property
    def to_user(self) -> str | None:
        match = _USER.search(self.header("to") or "")
        return match.group(1) if match else None

    @property
    def call_id(self) -> str | None:
        return self.header("call-id")

    @property
    def cseq_method(self) -> str | None:
        cseq = self.header("cseq")
        return cseq.split()[-1] if cseq else None

    @property
    def has_sdp(self) -> bool:
        return "application/sdp" in (self.header("content-type") or "") and bool(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def __str__(self) -> str:
        return f"{self.at:%H:%M:%S.%f} {self.direction} {self.first_line}"


def parse_message_log(text: str) -> list[SipMessage]:
    """Parse a SIPp ``-trace_msg`` log into messages, in file order."""
    messages: list[SipMessage] = []
    blocks: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        match = _SEPARATOR.match(line)
        if match:
            blocks.append((match.group(1), []))
        elif blocks:
            blocks[-1][1].append(line.rstrip("\r"))
    for stamp, lines in blocks:
        message = _parse_block(stamp, lines)
        if message is not None:
            messages.append(message)
    return messages


def _parse_block(stamp: str, lines: list[str]) -> SipMessage | None:
    direction = None
    while lines and not lines[0].strip():
        lines = lines[1:]
    if lines and (match := _DIRECTION.match(lines[0])):
        direction = match.group(1)
        lines = lines[1:]
    while lines and not lines[0].strip():
        lines = lines[1:]
    if direction is None or not lines:
        return None
    first, rest = lines[0].strip(), lines[1:]
    headers: dict[str, str] = {}
    body_start = len(rest)
    for index, line in enumerate(rest):
        if not line.strip():
            body_start = index + 1
            break
        name, sep, value = line.partition(":")
        if sep:
            headers.setdefault(name.strip().lower(), value.strip())
    body = "\n".join(rest[body_start:]).strip()
    at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").astimezone()
    return SipMessage(direction, at, first, headers, body)


def own_dialogs(messages: list[SipMessage]) -> list[SipMessage]:
    """``messages`` without qualify OPTIONS and without strays.

    A stray is an in-dialog request (it carries a To tag) for a dialog this trace
    never saw start, and the answer to it: typically a BYE that Asterisk keeps
    retransmitting (Timer F, 32 s) for a call whose earlier SIPp has gone, which
    reaches the next SIPp bound to the same port. It belongs to someone else's call.
    """
    options_ids = {m.call_id for m in messages if m.method == "OPTIONS"}
    started = {m.call_id for m in messages
               if m.is_request and ";tag=" not in (m.header("to") or "")}
    return [m for m in messages if m.call_id not in options_ids and m.call_id in started]


@cache
def _pcap_tool() -> ModuleType:
    path = SIPP_DIR / "make_dtmf_pcap.py"
    spec = importlib.util.spec_from_file_location("cbgw_make_dtmf_pcap", path)
    if spec is None or spec.loader is None:
        raise HarnessError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


def make_dtmf_pcap(digits: str, path: Path, **options: int) -> Path:
    """RFC 4733 pcap for ``digits`` (see deploy/sipp/make_dtmf_pcap.py)."""
    result: Path = _pcap_tool().make_dtmf_pcap(digits, path, **options)
    return result


class SippRole:
    """A running (or finished) SIPp process and its message trace."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], workdir: Path,
                 message_log: Path, port: int) -> None:
        self.name = name
        self.process = process
        self.workdir = workdir
        self.message_log = message_log
        self.port = port

    # -- lifecycle
    def __enter__(self) -> SippRole:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for SIPp to exit (UAC roles end after their calls); return its exit code."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            self.stop()
            raise AssertionError(f"SIPp {self.name} still running after {timeout} s;\n"
                                 f"{self.describe()}") from exc

    def stop(self) -> int | None:
        if self.running:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(3)
        return self.process.returncode

    # -- facts
    def messages(self) -> list[SipMessage]:
        try:
            return parse_message_log(self.message_log.read_text(errors="replace"))
        except FileNotFoundError:
            return []

    def dialog_messages(self) -> list[SipMessage]:
        """The messages of this role's own dialogs: not out-of-dialog OPTIONS (qualify)
        and their answers, and not strays (see ``own_dialogs``)."""
        return own_dialogs(self.messages())

    def requests_received(self, method: str | None = None) -> list[SipMessage]:
        return [m for m in self.dialog_messages()
                if m.direction == "received" and m.is_request
                and (method is None or m.method == method)]

    def invites_received(self) -> list[SipMessage]:
        return self.requests_received("INVITE")

    def responses_sent(self) -> list[SipMessage]:
        return [m for m in self.dialog_messages() if m.direction == "sent" and not m.is_request]

    def responses_received(self) -> list[SipMessage]:
        return [m for m in self.dialog_messages()
                if m.direction == "received" and not m.is_request]

    def statuses_received(self, cseq_method: str = "INVITE") -> list[int]:
        """Status codes received for ``cseq_method`` requests, in order (retransmits kept)."""
        return [m.status for m in self.responses_received()
                if m.status is not None and m.cseq_method == cseq_method]

    def statuses_sent(self, cseq_method: str = "INVITE") -> list[int]:
        return [m.status for m in self.responses_sent()
                if m.status is not None and m.cseq_method == cseq_method]

    def wait_for(self, predicate: Callable[[SipMessage], bool], timeout: float = 10.0,
                 what: str = "message") -> SipMessage:
        """Poll the trace until a dialog message matches; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.dialog_messages():
                if predicate(message):
                    return message
            if time.monotonic() > deadline:
                raise AssertionError(f"SIPp {self.name}: no {what} within {timeout} s;\n"
                                     f"{self.describe()}")
            time.sleep(0.02)

    def describe(self) -> str:
        lines = [f"  {m}" for m in self.dialog_messages()] or ["  (no SIP messages)"]
        errors = self.workdir / f"{self.name}.errors.log"
        if errors.is_file():
            tail = [ln for ln in errors.read_text(errors="replace").splitlines()
                    if "Automatic response mode" not in ln and "pcap files next to" not in ln]
            lines += [f"  ! {ln}" for ln in tail[-10:] if ln.strip()]
        return "\n".join(lines)


def start_role(scenario: str, *, port: int, workdir: Path, name: str | None = None,
               ip: str = "127.0.0.1", remote: tuple[str, int] | None = None,
               service: str | None = None, keys: Mapping[str, str] | None = None,
               digits: str | None = None, max_calls: int | None = None,
               timeout_s: int = 120, media_port: int | None = None,
               pcap_options: Mapping[str, int] | None = None,
               extra_args: Sequence[str] = ()) -> SippRole:
    """Start ``deploy/sipp/<scenario>`` in the background on ``ip:port``.

    UAS roles (no ``remote``) answer OPTIONS (``-aa``) and run until ``stop()``.
    UAC roles call ``remote`` (``service`` = R-URI user) ``max_calls`` times.
    ``digits`` writes ``dtmf.pcap`` (RFC 4733) into the role's directory for
    ``play_pcap_audio``. ``timeout_s`` is a hard cap (SIPp -timeout inside
    coreutils timeout).
    """
    sipp = shutil.which("sipp")
    if sipp is None:
        raise HarnessError("sipp is not installed (apt-get install sip-tester)")
    scenario_path = SIPP_DIR / scenario
    if not scenario_path.is_file():
        raise HarnessError(f"SIPp scenario {scenario_path} does not exist")
    name = name or f"{scenario_path.stem}-{port}"
    role_dir = workdir / name
    role_dir.mkdir(parents=True, exist_ok=True)
    if digits is not None or "play_pcap_audio" in scenario_path.read_text():
        make_dtmf_pcap(digits or "", role_dir / "dtmf.pcap", **dict(pcap_options or {}))
    message_log = workdir / f"{name}.messages.log"
    message_log.unlink(missing_ok=True)
    args = ["timeout", "-k", "2", str(timeout_s + 5), sipp]
    if remote is not None:
        args.append(f"{remote[0]}:{remote[1]}")
    args += ["-sf", str(scenario_path), "-i", ip, "-p", str(port),
             "-mi", ip, "-mp", str(media_port or media_port_for(port)),
             "-trace_msg", "-message_file", str(message_log),
             "-trace_err", "-error_file", str(workdir / f"{name}.errors.log"),
             "-nostdin", "-timeout", f"{timeout_s}s", "-timeout_error"]
    if remote is None:
        args.append("-aa")
    if service is not None:
        args += ["-s", service]
    if max_calls is not None:
        args += ["-m", str(max_calls)]
    for key, value in (keys or {}).items():
        args += ["-key", key, value]
    args += list(extra_args)
    with open(workdir / f"{name}.screen.log", "wb") as screen:
        process = subprocess.Popen(args, cwd=role_dir, stdin=subprocess.DEVNULL, stdout=screen,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    role = SippRole(name, process, workdir, message_log, port)
    _wait_bound(role, port)
    return role


def media_port_for(port: int) -> int:
    return (port + 10000) & ~1


def _wait_bound(role: SippRole, port: int, timeout: float = 3.0) -> None:
    """Wait until SIPp has opened its UDP port (so the first INVITE is not lost)."""
    needle = f":{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not role.running:
            screen = (role.workdir / f"{role.name}.screen.log").read_text(errors="replace")
            raise HarnessError(f"SIPp {role.name} exited at start (code "
                               f"{role.process.returncode}):\n{screen[-2000:]}")
        try:
            table = Path("/proc/net/udp").read_text()
        except OSError:
            return
        if any(line.split()[1].endswith(needle) for line in table.splitlines()[1:]):
            return
        time.sleep(0.02)
    raise HarnessError(f"SIPp {role.name} did not bind UDP port {port}")


def customer_call(workdir: Path, *, dialled: str, caller: str, pai: str | None = None,
                  privacy: str = "none", timeout_s: int = 40,
                  remote: tuple[str, int] = EDGE_SIP,
                  scenario: str = "customer_call.xml") -> SippRole:
    """The customer's phone calling ``dialled`` at the edge (one call; then SIPp exits).

    Sent from 127.0.0.2:15061, which the edge identifies as ``carrier-in``.
    ``caller`` is the From user; ``pai`` the P-Asserted-Identity user
    (default: ``caller``); ``privacy`` the Privacy header (``none`` or ``id``);
    ``remote`` where the call goes (the edge Asterisk, or Kamailio in front of the edges);
    ``scenario`` ``customer_cancel.xml`` hangs up 1 s into the early media (CANCEL).
    """
    return start_role(scenario, port=CUSTOMER_PORT, ip=CUSTOMER_IP, workdir=workdir,
                      name=f"customer-{os.getpid()}-{time.monotonic_ns()}", remote=remote,
                      service=dialled, max_calls=1, timeout_s=timeout_s,
                      keys={"caller": caller, "pai": pai or caller, "privacy": privacy})


@contextmanager
def role(scenario: str, role_name: str, workdir: Path, **kwargs: object) -> Iterator[SippRole]:
    """``with role("uas_reject_503.xml", "carrier-a", tmp) as carrier_a:`` (stopped after)."""
    process = start_role(scenario, port=ROLE_PORTS[role_name], workdir=workdir,
                         name=role_name, **kwargs)  # type: ignore[arg-type]
    try:
        yield process
    finally:
        process.stop()
