"""Prometheus metrics of both sites (``prometheus_client``), and its multiprocess mode.

Each group of metrics is a small class whose instance is made on first use
(:func:`common`, ``edge_server.metrics.edge()``, ``callback_server.metrics.callback()``):
the metrics of a process exist once, in :data:`PROCESS`, and are defined only
after the process has chosen where their values live.

Single process (the default, and every in-process test): values live in memory
and ``GET /metrics`` (:mod:`shared.metrics_http`) renders :data:`PROCESS`.

Several processes on one port (the callback site's ``serve --role intake`` beside
the full server, ``[http] reuse_port``): each process writes its values to mmap
files in the site's *multiprocess directory* (``[http] metrics_dir``, or the
``PROMETHEUS_MULTIPROC_DIR`` environment variable), and whichever process answers
a scrape sums the files of them all (``MultiProcessCollector``). Its lifecycle
(:func:`use_directory`, :func:`process_ended`):

* at start, under a lock on the directory, the files of processes that are gone
  are handled: if no process using the directory is alive, it is emptied (a new
  run of the site: counters start at zero, as after any restart); otherwise
  ``mark_process_dead`` removes the dead ones' live gauges, and their counters and
  histograms stay, so the site's totals never go down while its processes
  restart one at a time;
* at exit a process marks itself dead (its live gauges go).

Gauges say how they combine across processes: ``liveall`` (one series per live
process, with a ``pid`` label), ``livemax``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.multiprocess import mark_process_dead

#: every metric of this process (rendered directly in single-process mode; in
#: multiprocess mode its values are in the directory's files)
PROCESS = CollectorRegistry(auto_describe=True)

ENV_DIR = "PROMETHEUS_MULTIPROC_DIR"
_MARKER = ".alive"
_PID_IN_NAME = re.compile(r"_(\d+)(?:\.db|\.alive)$")


class _State:
    defined = False
    directory: Path | None = None


def registry() -> CollectorRegistry:
    """Where a metric group registers; from now on this process's mode is fixed."""
    _State.defined = True
    return PROCESS


def multiprocess_directory() -> Path | None:
    return _State.directory


def use_directory(directory: Path, pid: int | None = None) -> None:
    """Write this process's metrics under ``directory`` (created if missing), after
    tidying the files of processes that are gone (see the module docstring). Must come
    before any metric is defined in this process."""
    if _State.defined:
        raise RuntimeError("metrics were defined before the multiprocess directory was set")
    pid = os.getpid() if pid is None else pid
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory):
        owners = _pids_in(directory)
        alive = {p for p in owners if p != pid and _alive(p)}
        if not alive:
            for path in directory.iterdir():
                if path.suffix in (".db", _MARKER):
                    path.unlink(missing_ok=True)
        else:
            for dead in owners - alive - {pid}:
                mark_process_dead(dead, str(directory))  # type: ignore[no-untyped-call]
                (directory / f"process_{dead}{_MARKER}").unlink(missing_ok=True)
        (directory / f"process_{pid}{_MARKER}").touch()
    os.environ[ENV_DIR] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    _State.directory = directory


def process_ended(pid: int | None = None) -> None:
    """This process is stopping: its live gauges leave the directory (its counters and
    histograms stay in the sums)."""
    directory = _State.directory
    if directory is None:
        return
    pid = os.getpid() if pid is None else pid
    mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
    (directory / f"process_{pid}{_MARKER}").unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _pids_in(directory: Path) -> set[int]:
    return {int(m.group(1)) for path in directory.iterdir()
            if (m := _PID_IN_NAME.search(path.name))}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True     # someone else's process: alive
    return True


#: seconds, for latencies from a millisecond to five minutes
LATENCY_BUCKETS: Sequence[float] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                                    10.0, 30.0, 60.0, 300.0)


#: seconds, for waits from a tenth of a millisecond to ten seconds (the event loop's
#: lateness, a database pool's acquire)
WAIT_BUCKETS: Sequence[float] = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Common:
    """What both sites measure: the link, Asterisk's events websocket, the event loop
    and the database pool."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.link_deliveries = Counter(
            "cbgw_link_deliveries",
            "Outbox messages settled by the relay, by the route that carried them (none: "
            "no route got through) and result (delivered, retry, dead).",
            ["kind", "route", "result"], registry=r)
        self.link_requests = Counter(
            "cbgw_link_requests",
            "Signed HTTP requests to the peer site, by route and result (ok, rejected: a "
            "4xx, busy: 5xx or 429, failed: no answer).", ["route", "result"], registry=r)
        self.ari_connected = Gauge(
            "cbgw_ari_websocket_connected",
            "1 while the ARI events websocket is connected (any process of the site).",
            registry=r, multiprocess_mode="livemax")
        self.ari_connects = Counter(
            "cbgw_ari_websocket_connects",
            "ARI events websocket connections made, by kind (first, reconnect).",
            ["kind"], registry=r)
        self.ari_requests = Counter(
            "cbgw_ari_requests",
            "ARI REST requests sent, by transport (events: a RESTRequest on the events "
            "websocket; http). A hang-up lost on the websocket as it dropped, sent again "
            "over HTTP, counts on both.", ["transport"], registry=r)
        self.loop_lag = Gauge(
            "cbgw_event_loop_lag_seconds",
            "How late the event loop ran a timer, at the last sample (per process).",
            registry=r, multiprocess_mode="liveall")
        self.loop_delay = Histogram(
            "cbgw_event_loop_delay_seconds",
            "How late the event loop ran the sampler's timer, every sample: the time a "
            "ready callback waits for the loop.", registry=r, buckets=WAIT_BUCKETS)
        self.db_pool = Gauge(
            "cbgw_db_pool_connections",
            "Database pool connections by state (in_use, idle, size: open, max), per "
            "process.", ["state"], registry=r, multiprocess_mode="liveall")
        self.db_pool_holders = Gauge(
            "cbgw_db_pool_holders",
            "Database pool connections in use by who holds them (shared.db.holding: the "
            "outbox relay, the link's messages, the sweeper ...; unlabelled: the rest), "
            "per process.", ["holder"], registry=r, multiprocess_mode="liveall")
        self.db_pool_waiting = Gauge(
            "cbgw_db_pool_waiting",
            "Acquires waiting for a database pool connection now, by queue (first: the "
            "labels the pool serves first, at the callback site the running calls' "
            "writes; other: the rest), per process.", ["queue"], registry=r,
            multiprocess_mode="liveall")
        self.db_pool_holds = Counter(
            "cbgw_db_pool_holds",
            "Database pool connections given back, by who held them (shared.db.holding), "
            "counted at the metrics sampler's tick.", ["holder"], registry=r)
        self.db_pool_held = Counter(
            "cbgw_db_pool_held_seconds",
            "Seconds database pool connections were held (acquire until back in the pool), "
            "by who held them, summed; part=releasing: from the holder's release until "
            "back.", ["holder", "part"], registry=r)
        self.tls_expiry = Gauge(
            "cbgw_tls_certificate_expiry_timestamp_seconds",
            "When the site's TLS certificate it serves (site) and the CA it trusts (ca) "
            "expire, Unix time, as the process loaded them at its start (the earliest of "
            "the live processes).", ["certificate"], registry=r,
            multiprocess_mode="livemin")
        self.db_pool_acquire_wait = Histogram(
            "cbgw_db_pool_acquire_wait_seconds",
            "How long each acquire of a database pool connection waited for one (a free "
            "connection, or a new one opened).", registry=r, buckets=WAIT_BUCKETS)


@functools.cache
def common() -> Common:
    return Common(registry())


def at_zero(metric: Counter | Histogram, *values: Iterable[str]) -> None:
    """Every combination of the label ``values`` at 0 from the start, so that a first
    event is an increase an alert rule sees (a series Prometheus first sees at 1 shows
    none)."""
    for labels in itertools.product(*values):
        metric.labels(*labels)


def certificates_served(cert: Path, ca: Path) -> None:
    """``cbgw_tls_certificate_expiry_timestamp_seconds`` of the certificate this process
    serves and the CA it trusts, as it loaded them (a renewed file counts once the
    process is restarted and serves it)."""
    from shared.pki import not_after

    for which, path in (("site", cert), ("ca", ca)):
        common().tls_expiry.labels(which).set(not_after(path).timestamp())
