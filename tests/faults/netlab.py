"""Network namespaces and veth links for fault tests (iproute2, needs root).

The sites, or the links between them, live in network namespaces joined by
veth pairs. A partition is a link taken down; healing is taking it up again.
The kernel here has no ``netem``, so latency comes from
:mod:`tests.faults.proxy` running on the link (inside a namespace)::

    with NetLab("cbgw") as lab:                      # refuses to start unless root
        ns = lab.namespace("inet")                   # -> "cbgw-inet"
        link = lab.veth("inet", None, "10.201.1.1/30", ns, "10.201.1.2/30")
        proc = lab.popen(ns, [sys.executable, "-m", "tests.faults.proxy", ...])
        lab.link_down("inet")                        # partition
        lab.link_up("inet")                          # heal
    # every process, link and namespace is gone, even if the block raised

Everything created is recorded and removed by :meth:`NetLab.destroy`, which is
also registered with ``atexit`` and tolerates half-built state. Leftovers of a
crashed earlier run with the same names are removed before creating.
Addresses inside these namespaces are our own test hosts; never send test
traffic anywhere else. When a link is down the root namespace would route its
subnet to the default gateway, so every link also gets an ``unreachable``
route for its subnet (higher metric): with the link down, packets go nowhere.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("faults.netlab")

COMPONENT = "tests/faults/netlab (network namespaces + veth via iproute2)"


class NetlabError(RuntimeError):
    pass


def require_root() -> None:
    """Raise :class:`NetlabError` naming the component unless we can create namespaces."""
    if os.geteuid() != 0:
        raise NetlabError(f"{COMPONENT} needs root (CAP_NET_ADMIN) to create network "
                          f"namespaces and veth pairs; running as uid {os.geteuid()}. "
                          "Run the fault tests as root (sudo make test).")
    if shutil.which("ip") is None:
        raise NetlabError(f"{COMPONENT} needs the iproute2 'ip' command (apt-get install "
                          "iproute2)")


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    if check and result.returncode != 0:
        raise NetlabError(f"{' '.join(argv)} failed ({result.returncode}): "
                          f"{result.stderr.strip()}")
    return result


@dataclass(frozen=True, slots=True)
class Veth:
    """One veth pair: end ``a`` in namespace ``ns_a`` (None: the root namespace)."""

    name: str
    dev_a: str
    ns_a: str | None
    addr_a: str
    dev_b: str
    ns_b: str | None
    addr_b: str

    @property
    def ip_a(self) -> str:
        return self.addr_a.split("/")[0]

    @property
    def ip_b(self) -> str:
        return self.addr_b.split("/")[0]


class NetLab:
    def __init__(self, prefix: str = "cbgw") -> None:
        require_root()
        if not prefix.isalnum() or len(prefix) > 6:
            raise ValueError("prefix: at most 6 letters or digits (interface names are short)")
        self.prefix = prefix
        self.namespaces: list[str] = []
        self.links: dict[str, Veth] = {}
        self.fences: list[tuple[str, str | None]] = []  # (subnet, namespace)
        self.processes: list[subprocess.Popen[Any]] = []
        self._destroyed = False
        atexit.register(self.destroy)

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def namespace(self, name: str) -> str:
        full = f"{self.prefix}-{name}"
        if full in _existing_namespaces():
            log.warning("removing leftover namespace %s", full)
            ip("netns", "delete", full, check=False)
        ip("netns", "add", full)
        self.namespaces.append(full)
        ip("link", "set", "lo", "up", ns=full)
        return full

    def veth(self, name: str, ns_a: str | None, addr_a: str, ns_b: str | None,
             addr_b: str) -> Veth:
        """A veth pair named after ``name``, with an address on each end, both up."""
        if name in self.links:
            raise ValueError(f"link {name!r} exists")
        dev_a, dev_b = f"{self.prefix}{name}"[:13] + "a", f"{self.prefix}{name}"[:13] + "b"
        for dev in (dev_a, dev_b):  # a leftover in the root namespace
            ip("link", "delete", dev, check=False)
        ip("link", "add", dev_a, "type", "veth", "peer", "name", dev_b)
        link = Veth(name, dev_a, ns_a, addr_a, dev_b, ns_b, addr_b)
        self.links[name] = link
        for dev, ns, addr in ((dev_a, ns_a, addr_a), (dev_b, ns_b, addr_b)):
            if ns is not None:
                ip("link", "set", dev, "netns", ns)
            ip("addr", "add", addr, "dev", dev, ns=ns)
            ip("link", "set", dev, "up", ns=ns)
            subnet = str(ipaddress.ip_interface(addr).network)
            ip("route", "replace", "unreachable", subnet, "metric", "4000", ns=ns)
            self.fences.append((subnet, ns))
        return link

    def link_down(self, name: str) -> None:
        """Partition: both ends down; packets are dropped, routes over it vanish."""
        link = self.links[name]
        ip("link", "set", link.dev_a, "down", ns=link.ns_a)
        ip("link", "set", link.dev_b, "down", ns=link.ns_b)
        log.info("link %s down", name)

    def link_up(self, name: str) -> None:
        link = self.links[name]
        ip("link", "set", link.dev_a, "up", ns=link.ns_a)
        ip("link", "set", link.dev_b, "up", ns=link.ns_b)
        log.info("link %s up", name)

    def argv(self, ns: str | None, command: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *command] if ns else list(command)

    def popen(self, ns: str | None, command: Sequence[str], **kwargs: Any
              ) -> subprocess.Popen[Any]:
        """Start a process inside ``ns``; it is killed by :meth:`destroy`."""
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(ns, command), **kwargs)
        self.processes.append(proc)
        return proc

    def run(self, ns: str | None, command: Sequence[str], timeout: float = 10.0
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(ns, command), capture_output=True, text=True,
                              timeout=timeout, check=False)

    def destroy(self) -> None:
        """Kill our processes, delete our links and namespaces. Safe to call twice."""
        if self._destroyed:
            return
        self._destroyed = True
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
            _reap(proc)
        for link in self.links.values():  # deleting one end deletes the pair
            if link.ns_a is None:
                ip("link", "delete", link.dev_a, check=False)
            elif link.ns_b is None:
                ip("link", "delete", link.dev_b, check=False)
        for subnet, ns in self.fences:
            if ns is None:
                ip("route", "delete", "unreachable", subnet, "metric", "4000", check=False)
        for ns in self.namespaces:
            ip("netns", "delete", ns, check=False)
        with contextlib.suppress(Exception):
            atexit.unregister(self.destroy)


def _reap(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=3)
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=3)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _existing_namespaces() -> set[str]:
    out = ip("netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}
