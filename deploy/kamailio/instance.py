#!/usr/bin/env python3
"""Start, stop and inspect the edge's Kamailio front (Debian package ``kamailio``).

Usage::

    deploy/kamailio/instance.py [--run-dir DIR] start    # checks the config, waits for OPTIONS
    deploy/kamailio/instance.py [--run-dir DIR] stop
    deploy/kamailio/instance.py [--run-dir DIR] restart
    deploy/kamailio/instance.py [--run-dir DIR] status   # exit 0 running, 3 stopped

Kamailio runs from the versioned ``kamailio.cfg`` and ``dispatcher.list`` next to this
file (the list's path is passed with ``-A DISPATCHER_LIST=...``), in the foreground of
its own session (``-DD -E``: no daemon, log to stderr), as the ``kamailio`` user when
started by root. DIR (``$CBGW_KAMAILIO_RUN``, default ``/run/cbgw-kamailio``) holds
``kamailio.pid`` and ``kamailio.log``. It listens on :data:`LISTEN` (UDP) and is up when
it answers an OPTIONS there. Every command is idempotent. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "kamailio.cfg"
DISPATCHER_LIST = HERE / "dispatcher.list"
DEFAULT_RUN_DIR = Path(os.environ.get("CBGW_KAMAILIO_RUN", "/run/cbgw-kamailio"))
#: where the carriers send the toll-free calls (``listen=`` in kamailio.cfg)
LISTEN = ("127.0.0.2", 5060)
USER = "kamailio"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


class InstanceError(RuntimeError):
    """A step failed; the message says which and what to do."""


@dataclass(frozen=True)
class Front:
    run_dir: Path

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "kamailio.pid"

    @property
    def logfile(self) -> Path:
        return self.run_dir / "kamailio.log"

    def command(self, binary: str, *, check: bool = False) -> list[str]:
        """Kamailio's command line; with ``check``, the one that only checks the config."""
        args = [binary, *(["-c"] if check else ["-DD", "-E"]), "-f", str(CONFIG),
                "-A", f'DISPATCHER_LIST="{DISPATCHER_LIST}"', "-Y", str(self.run_dir),
                "-m", "64", "-M", "8"]
        if os.geteuid() == 0:
            args += ["-u", USER, "-g", USER]
        return args


def binary() -> str:
    found = shutil.which("kamailio") or next(
        (p for p in ("/usr/sbin/kamailio",) if Path(p).is_file()), None)
    if found is None:
        raise InstanceError("kamailio is not installed (apt-get install kamailio; "
                            "`make system-deps` does it)")
    return found


def running_pid(front: Front) -> int | None:
    """The pid of this front's Kamailio if it is alive (not a zombie), else None."""
    try:
        pid = int(front.pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, ValueError):
        return None
    if str(CONFIG).encode() not in cmdline or state == "Z":
        return None
    return pid


def answers_options(timeout: float = 0.5) -> bool:
    """Whether something answers an OPTIONS on :data:`LISTEN` with 200."""
    tag = uuid.uuid4().hex
    host, port = LISTEN
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        local = sock.getsockname()
        request = (f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK{tag}\r\n"
                   f"From: <sip:probe@{local[0]}>;tag={tag}\r\nTo: <sip:{host}:{port}>\r\n"
                   f"Call-ID: {tag}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                   "Content-Length: 0\r\n\r\n")
        sock.settimeout(timeout)
        try:
            sock.sendto(request.encode(), LISTEN)
            reply = sock.recv(65535).decode(errors="replace")
        except OSError:
            return False
    return reply.startswith("SIP/2.0 200")


def log_tail(front: Front, lines: int = 15) -> str:
    try:
        return "\n".join(front.logfile.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {front.logfile})"


def start(front: Front) -> None:
    if running_pid(front) is not None:
        log(f"running pid {running_pid(front)}")
        return
    if answers_options():
        raise InstanceError(f"{LISTEN[0]}:{LISTEN[1]} already answers SIP but not from this "
                            f"Kamailio; stop the other one")
    kamailio = binary()
    front.run_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        user = pwd.getpwnam(USER)
        os.chown(front.run_dir, user.pw_uid, user.pw_gid)
    check = subprocess.run(front.command(kamailio, check=True),
                           capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise InstanceError(f"{CONFIG} does not load:\n{check.stderr.strip()[-1500:]}")
    pid = detach(front.command(kamailio), front.logfile)
    front.pidfile.write_text(f"{pid}\n")
    deadline = time.monotonic() + START_TIMEOUT_S
    while not answers_options():
        if running_pid(front) is None or time.monotonic() > deadline:
            raise InstanceError(f"Kamailio did not answer OPTIONS on {LISTEN[0]}:{LISTEN[1]} "
                                f"within {START_TIMEOUT_S:.0f} s; {front.logfile}:\n"
                                f"{log_tail(front)}")
        time.sleep(0.05)
    log(f"running pid {pid}, SIP udp:{LISTEN[0]}:{LISTEN[1]}, log {front.logfile}")


def detach(command: list[str], logfile: Path) -> int:
    """Start ``command`` as the leader of its own session, appending its output to
    ``logfile``, and leave it running on its own (no child of ours); its pid."""
    shell = 'setsid "$@" >>"$0" 2>&1 </dev/null & echo $!'
    started = subprocess.run(["sh", "-c", shell, str(logfile), *command], capture_output=True,
                             text=True, check=True)
    return int(started.stdout.strip())


def stop(front: Front) -> None:
    pid = running_pid(front)
    if pid is None:
        log("not running")
        return
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while running_pid(front) is not None:
        if time.monotonic() > deadline:
            log(f"pid {pid} ignored SIGTERM; killing")
            os.killpg(pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    front.pidfile.unlink(missing_ok=True)
    log("stopped")


def status(front: Front) -> int:
    pid = running_pid(front)
    if pid is None:
        print("kamailio: stopped")
        return 3
    sip = "answers OPTIONS" if answers_options() else "not answering"
    print(f"kamailio: running pid {pid}, udp:{LISTEN[0]}:{LISTEN[1]} {sip}")
    return 0


def log(message: str) -> None:
    print(f"[kamailio] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR,
                        help=f"pid file and log (default {DEFAULT_RUN_DIR})")
    parser.add_argument("command", choices=["start", "stop", "restart", "status"])
    args = parser.parse_args(argv)
    front = Front(args.run_dir)
    if args.command == "status":
        return status(front)
    steps = {"start": [start], "stop": [stop], "restart": [stop, start]}[args.command]
    try:
        for step in steps:
            step(front)
    except InstanceError as exc:
        log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
