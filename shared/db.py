"""PostgreSQL access for both sites: embedded server, pools, migrations.

``DATABASE_URL`` (or a site's configured ``database.url``) points at any real
server. Without one, :func:`embedded_url` starts the bundled PostgreSQL from the
``pgserver`` wheel in a data directory of ours and returns a URL to a database
on it, creating that database first. Nothing to install by hand.

Migrations are plain SQL files named ``NNNN_description.sql`` in a package
directory. Each *set* (``edge``, ``callback``, ``routing_rates`` ...) keeps its
own numbering; :func:`migrate` applies the missing files of each set in order,
each in its own transaction, under an advisory lock so two processes starting
at once do not race.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import re
import time
import weakref
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeAlias, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import tenacity

log = logging.getLogger("shared.db")

DEFAULT_DATA_DIR = Path(os.environ.get("CBGW_DATA_DIR", Path.home() / ".local/share/cbgw"))
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_MIGRATION_LOCK_KEY = 0x6362_6777  # "cbgw"

Pool: TypeAlias = asyncpg.Pool
Connection: TypeAlias = asyncpg.Connection
Record: TypeAlias = asyncpg.Record
#: what :func:`create_pool`'s ``warm`` runs on a new connection
Warming: TypeAlias = Callable[[Connection], Coroutine[Any, Any, None]]


#: connection-level failures (the database restarting or away, a network blip), not SQL
#: errors: what an API answers with 503 and a retry
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError, asyncpg.OperatorInterventionError)


LIVE_CALL_WRITE_RETRY_S = 60.0
#: the wait after a live call's write first failed, before its retries (tenacity's first
#: wait, ``wait_exponential(multiplier=0.2)``)
_FIRST_RETRY_WAIT_S = 0.2

P = ParamSpec("P")
T = TypeVar("T")


def survives_database_restarts(fn: Callable[P, Coroutine[Any, Any, T]]
                               ) -> Callable[P, Coroutine[Any, Any, T]]:
    """Retry a write made during a live call on connection errors, for up to a minute.

    A database restart must not abandon a call in progress or lose its CDR, the
    order the customer gave or the consultation's record. Safe only for writes that
    are idempotent by key (ON CONFLICT DO NOTHING, or an UPDATE guarded by the state
    it moves from): a commit whose acknowledgement was lost is then harmless to repeat.
    """

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        # The first try is made directly: nearly every write succeeds at once, and
        # tenacity's retry state cost 12 µs of CPU a call (0.2 µs without; two such writes
        # a call-back: the leg's result and the round's finish).
        try:
            return await fn(*args, **kwargs)
        except CONNECTION_ERRORS as exc:
            log.warning("%s: database unavailable (%s); retrying", fn.__name__, exc)
        await asyncio.sleep(_FIRST_RETRY_WAIT_S)
        async for attempt in tenacity.AsyncRetrying(
                retry=tenacity.retry_if_exception_type(CONNECTION_ERRORS),
                wait=tenacity.wait_exponential(multiplier=_FIRST_RETRY_WAIT_S, max=5),
                stop=tenacity.stop_after_delay(LIVE_CALL_WRITE_RETRY_S), reraise=True,
                before_sleep=lambda rs: log.warning(
                    "%s: database unavailable (%s); retrying", fn.__name__,
                    rs.outcome.exception() if rs.outcome else "?")):
            with attempt:
                return await fn(*args, **kwargs)
        raise AssertionError("unreachable")  # pragma: no cover

    return wrapper


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class MigrationSet:
    """A named, ordered set of SQL migrations living in ``directory``."""

    name: str
    directory: Path

    def files(self) -> list[tuple[int, Path]]:
        found: list[tuple[int, Path]] = []
        for path in sorted(self.directory.glob("*.sql")):
            match = _MIGRATION_NAME.match(path.name)
            if not match:
                raise MigrationError(f"{path}: migration file names must look like 0001_name.sql")
            found.append((int(match.group(1)), path))
        versions = [v for v, _ in found]
        if len(set(versions)) != len(versions):
            raise MigrationError(f"{self.directory}: two migrations share a version number")
        return found


def embedded_url(database: str, data_dir: Path | None = None) -> str:
    """Start (or reuse) the embedded PostgreSQL and return a URL for ``database``.

    Blocking; call it before the event loop's hot path (start-up, fixtures).
    """
    import pgserver  # local import: a real DATABASE_URL needs no pgserver

    pgdata = (data_dir or DEFAULT_DATA_DIR) / "pgdata"
    pgdata.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(pgdata), cleanup_mode="stop")  # type: ignore[attr-defined]
    _ensure_database(server, database)
    return _with_database(server.get_uri(), database)


def _ensure_database(server: Any, database: str) -> None:
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", database):
        raise ValueError(f"database name {database!r} must be lower-case letters, digits, _")
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "1 row" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def resolve_url(configured: str | None, database: str, data_dir: Path | None = None) -> str:
    """The URL to use: the configured one, else ``DATABASE_URL``, else embedded."""
    url = configured or os.environ.get("DATABASE_URL")
    if url:
        return url
    return embedded_url(database, data_dir)


async def fresh_database(server_url: str, name: str) -> str:
    """Drop and re-create database ``name`` on the server at ``server_url``; return its URL.

    For tests, the demo and benchmarks: every run starts from an empty schema.
    """
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"database name {name!r} must be lower-case letters, digits, _")
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return _with_database(server_url, name)


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 10,
                      command_timeout: float = 10.0,
                      on_acquire: Callable[[float], None] | None = None,
                      warm: Warming | None = None) -> Pool:
    """A pool whose connections map json and go back to it without a reset query
    (:func:`release_connection`); ``on_acquire`` is told the seconds each acquire
    waited for a connection (every ``pool.acquire()``, and the pool's own ``fetch``,
    ``execute`` ...), for the servers' ``cbgw_db_pool_acquire_wait_seconds``.

    ``warm``: run on each new connection after :func:`init_connection`, before the pool
    hands it out (the ``min_size`` ones when the pool opens and when the pool replaces
    them in the background; one opened on demand, in its first acquire): what a site's
    hot path would otherwise pay on a connection's first use, such as a PL/pgSQL
    function compiled and its statements planned, once per PostgreSQL session."""
    pool: Pool = _TimedPool(
        url, on_acquire=on_acquire, min_size=min_size, max_size=max_size,
        command_timeout=command_timeout,
        init=init_connection if warm is None else functools.partial(_init_and_warm, warm),
        reset=release_connection,
        max_queries=50000, max_inactive_connection_lifetime=300.0, loop=None,
        connection_class=asyncpg.Connection, record_class=asyncpg.Record)
    await pool
    return pool


async def release_connection(conn: Connection) -> None:
    """What a connection needs before it goes back to the pool, beyond what asyncpg does
    for every release (an open transaction rolled back, listener callbacks dropped):
    nothing. asyncpg's default also sends a reset query (``pg_advisory_unlock_all()``,
    ``CLOSE ALL``, ``UNLISTEN *``, ``RESET ALL``), one more round trip for every acquire,
    holding the connection through it and an event-loop turn; no code leaves such
    session state on a pooled connection: advisory locks are taken per transaction
    (``pg_advisory_xact_lock``; the migrations' session lock is released in a
    ``finally``), nothing is ``SET`` for the session but what :func:`watching` sets on
    purpose (and replaces the connections after), cursors live in transactions, and
    a pooled connection that listens removes its listeners (``UNLISTEN``) before release
    (the long-lived LISTEN connections are not pooled: :func:`listening`)."""


#: who the current task's pool connections are for (:func:`holding`)
_HOLDER: contextvars.ContextVar[str] = contextvars.ContextVar("pool_holder",
                                                             default="unlabelled")


@contextmanager
def holding(label: str) -> Iterator[None]:
    """The pool connections the current task (and the tasks it starts) acquires meanwhile
    are counted as ``label``'s (:func:`pool_holders`; ``cbgw_db_pool_holders``)."""
    token = _HOLDER.set(label)
    try:
        yield
    finally:
        _HOLDER.reset(token)


#: at most this many connections handed in a row to :func:`serve_first`'s labels while a
#: connection for another label waits at the head of its queue (so that one waits for at
#: most this many grants before it is served: the others get at least one in
#: ``FIRST_IN_A_ROW + 1`` while both queues wait)
FIRST_IN_A_ROW = 4


def serve_first(pool: Pool, labels: frozenset[str], *,
                in_a_row: int = FIRST_IN_A_ROW) -> None:
    """While connections are short, ``pool`` hands the next free one to an acquire made
    :func:`holding` one of ``labels`` before the others (each queue in order), but to the
    longest-waiting other one after ``in_a_row`` such grants in a row: the first share
    cannot starve the rest. Nothing changes for a pool with free connections, nor for
    one not made by :func:`create_pool`.

    For a site whose work in progress must not queue behind new work: the callback site's
    running calls (a prompt the customer hears late while the call's media runs) before
    the dialling of new ones, so the back-pressure of a full pool falls on the dial.
    """
    if in_a_row < 1:
        raise ValueError(f"in_a_row must be at least 1, not {in_a_row}")
    if isinstance(pool, _TimedPool):
        pool.gate.first = frozenset(labels)
        pool.gate.in_a_row = in_a_row


class _Gate:
    """The right to take one of a pool's ``size`` connections, handed in two queues:
    acquires whose label is in ``first``, and the others (:func:`serve_first`). A
    connection given back goes to the next waiter directly (its slot never falls free
    in between), so a newcomer cannot overtake the queues."""

    def __init__(self, size: int) -> None:
        self.free = size
        self.first: frozenset[str] = frozenset()
        self.in_a_row = FIRST_IN_A_ROW
        self._queues: tuple[deque[asyncio.Future[None]], deque[asyncio.Future[None]]] = (
            deque(), deque())
        self._streak = 0          # grants in a row to the first queue while the other waited

    def waiting(self) -> tuple[int, int]:
        """Acquires waiting now: for ``first`` labels, for the others."""
        return len(self._queues[0]), len(self._queues[1])

    def take(self) -> bool:
        """A slot taken at once, if one is free and nobody queues for one."""
        if self.free > 0 and not any(self._queues):
            self.free -= 1
            return True
        return False

    async def enter(self, label: str) -> None:
        """A slot: at once (:meth:`take`), else in ``label``'s queue."""
        if self.take():
            return
        queue = self._queues[0 if label in self.first else 1]
        waiter = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.leave()             # handed a slot, then cancelled: pass it on
            elif waiter in queue:        # (:meth:`leave` drops a cancelled one it meets)
                queue.remove(waiter)
            raise

    def leave(self) -> None:
        """A slot back: to the next waiter, else free."""
        first, other = self._queues
        while first or other:
            if first and (not other or self._streak < self.in_a_row):
                waiter = first.popleft()
                self._streak = self._streak + 1 if other else 0
            else:
                waiter = other.popleft()
                self._streak = 0
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


def pool_waiting(pool: Pool) -> tuple[int, int]:
    """Acquires of ``pool`` waiting for a connection now: those :func:`serve_first` serves
    first, and the others; (0, 0) for a pool not made by :func:`create_pool`."""
    return pool.gate.waiting() if isinstance(pool, _TimedPool) else (0, 0)


def pool_holders(pool: Pool) -> Counter[str]:
    """The connections of ``pool`` held now, by :func:`holding` label (a label seen once
    stays, at 0); empty for a pool not made by :func:`create_pool`."""
    return pool.holders if isinstance(pool, _TimedPool) else Counter()


@dataclass(slots=True)
class HoldTimes:
    """What one :func:`holding` label's connections were held for, since the pool opened:
    ``holds`` given back, ``held_s`` their seconds from acquire until the holder's release
    returned (the connection is back in the pool by then), ``releasing_s`` the part of
    those in the release."""
    holds: int = 0
    held_s: float = 0.0
    releasing_s: float = 0.0


def pool_hold_times(pool: Pool) -> dict[str, HoldTimes]:
    """The connections of ``pool`` given back so far, by :func:`holding` label (one held
    now is not in them yet); empty for a pool not made by :func:`create_pool`."""
    return pool.hold_times if isinstance(pool, _TimedPool) else {}


@asynccontextmanager
async def watching(pool: Pool, notice: str, on_written: Callable[[], None],
                   *, session: Mapping[str, str]) -> AsyncIterator[bool]:
    """While inside, every connection of ``pool`` carries the settings ``session`` (set on
    its first acquire meanwhile), and ``on_written()`` is called when a connection that
    was sent the NOTICE ``notice`` (a trigger's ``RAISE NOTICE``) is back in the pool, so
    its transaction is over (committed; or rolled back, and the call is spurious). On the
    way out, once no one watches, the connections that carry those settings are
    replaced. Yields False, and watches nothing, for a pool not made by
    :func:`create_pool`.

    For work that tells a process's own task of a commit without a NOTIFY (the outbox
    relay, :mod:`shared.outbox`): ``session`` tells the database's triggers to say so by
    ``notice`` instead.
    """
    if not isinstance(pool, _TimedPool):
        yield False
        return
    watch = _Watch(notice, on_written, dict(session))
    pool.watches.append(watch)
    try:
        yield True
    finally:
        pool.watches.remove(watch)
        if not pool.watches:
            pool.set_up.clear()
            await pool.expire_connections()


@dataclass(frozen=True, slots=True)
class _Watch:
    notice: str
    on_written: Callable[[], None]
    session: dict[str, str]


class _Hold:
    """One acquire of a watched pool's connection: which watches' notices it was sent,
    told once the connection is back (or, for a notice handled after that, at once)."""

    def __init__(self, watches: list[_Watch]) -> None:
        self.watches = watches
        self.written: set[int] = set()
        self.released = False

    def heard(self, _conn: Any, message: Any) -> None:   # asyncpg's log listener
        for n, watch in enumerate(self.watches):
            if n not in self.written and message.message == watch.notice:
                self.written.add(n)
                if self.released:
                    watch.on_written()

    def back(self) -> None:
        self.released = True
        for n in self.written:
            self.watches[n].on_written()


class _TimedPool(asyncpg.Pool):  # type: ignore[misc]   # asyncpg is untyped
    """An asyncpg pool that reports how long each acquire waited, when asked to, counts
    the connections held by :func:`holding` label, and tells a watcher of the notices
    it watches (:func:`watching`) (the defaults above are ``asyncpg.create_pool``'s,
    which cannot make a subclass)."""

    def __init__(self, *args: Any, on_acquire: Callable[[float], None] | None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_acquire = on_acquire
        self.holders: Counter[str] = Counter()
        self.hold_times: defaultdict[str, HoldTimes] = defaultdict(HoldTimes)
        #: the connections held now: their label and when they were acquired
        self._held_by: dict[int, tuple[str, float]] = {}
        self.watches: list[_Watch] = []
        #: the connections that carry the watches' session settings
        self.set_up: weakref.WeakSet[Any] = weakref.WeakSet()
        self._holds: dict[int, _Hold] = {}
        self.gate = _Gate(self._maxsize)

    async def _acquire(self, timeout: float | None) -> Any:  # noqa: ASYNC109 (asyncpg's)
        started = time.monotonic()
        label = _HOLDER.get()
        try:
            if not self.gate.take():      # the common case arms no timer
                async with asyncio.timeout(timeout):
                    await self.gate.enter(label)
            try:
                # a slot is ours: a connection is idle in asyncpg's queue, or one may open
                conn = await super()._acquire(timeout)
            except BaseException:
                self.gate.leave()
                raise
        finally:
            if self._on_acquire is not None:
                self._on_acquire(time.monotonic() - started)
        self._held_by[id(conn)] = (label, time.monotonic())
        self.holders[label] += 1
        if self.watches:
            try:
                await self._watch(conn)
            except BaseException:
                await self.release(conn)
                raise
        return conn

    async def _watch(self, conn: Any) -> None:
        raw = conn._con       # the connection behind the pool's proxy
        if raw not in self.set_up:
            for watch in self.watches:
                for name, value in watch.session.items():
                    await conn.execute("SELECT set_config($1, $2, false)", name, value)
            self.set_up.add(raw)
        hold = self._holds[id(conn)] = _Hold(list(self.watches))
        conn.add_log_listener(hold.heard)

    async def release(self, connection: Any, *, timeout: float | None = None) -> None:  # noqa: ASYNC109 (asyncpg's)
        held = self._held_by.pop(id(connection), None)
        releasing = time.monotonic()
        hold = self._holds.pop(id(connection), None)
        if hold is not None:
            connection.remove_log_listener(hold.heard)
        try:
            if self._at_once(connection):
                # asyncpg's own release, without the task its ``asyncio.shield`` makes
                # (three turns of the event loop before the connection is back and its
                # holder goes on): here nothing in it waits, so nothing can cancel it
                # half-way either (:meth:`_at_once`)
                self._check_init()
                holder = connection._holder
                connection._con._on_release()
                await holder.release(holder._timeout if timeout is None else timeout)
            else:
                await super().release(connection, timeout=timeout)
        finally:
            if held is not None:
                self.gate.leave()        # the connection is back: the next waiter's
                label, acquired = held
                back = time.monotonic()
                self.holders[label] -= 1
                times = self.hold_times[label]
                times.holds += 1
                times.held_s += back - acquired
                times.releasing_s += back - releasing
        if hold is not None:
            hold.back()

    def _at_once(self, proxy: Any) -> bool:
        """True if giving ``proxy`` back waits for nothing: asyncpg's release then sends
        nothing and closes nothing (no transaction left open to roll back, no
        cancellation under way, the connection neither expired nor used up, and the reset
        is :func:`release_connection`, which does nothing); anything else (or an asyncpg
        whose insides differ) goes through asyncpg's own :meth:`asyncpg.Pool.release`."""
        try:
            con, holder = proxy._con, proxy._holder
            return (type(proxy) is asyncpg.pool.PoolConnectionProxy and holder._pool is self
                    and con is not None and self._reset is release_connection
                    and not con.is_closed() and con._top_xact is None
                    and not con._protocol.is_in_transaction()
                    and not con._protocol._is_cancelling()
                    and con._protocol.queries_count < holder._max_queries
                    and holder._generation == self._generation)
        except AttributeError:
            return False


async def init_connection(conn: Connection) -> None:
    """Per-connection set-up: jsonb and json columns map to Python objects."""
    import json

    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads,
                              schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads,
                              schema="pg_catalog")


async def _init_and_warm(warm: Warming,
                         conn: Connection) -> None:
    await init_connection(conn)
    await warm(conn)


async def migrate(conn: Connection, sets: Sequence[MigrationSet]) -> list[str]:
    """Apply the pending migrations of ``sets``; return the names applied."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   set_name   text        NOT NULL,
                   version    integer     NOT NULL,
                   filename   text        NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now(),
                   PRIMARY KEY (set_name, version))""")
        for mset in sets:
            done = {r["version"] for r in await conn.fetch(
                "SELECT version FROM schema_migrations WHERE set_name = $1", mset.name)}
            for version, path in mset.files():
                if version in done:
                    continue
                sql = path.read_text(encoding="utf-8")
                async with conn.transaction():
                    try:
                        await conn.execute(sql)
                    except asyncpg.PostgresError as exc:
                        raise MigrationError(f"{path}: {exc}") from exc
                    await conn.execute(
                        "INSERT INTO schema_migrations (set_name, version, filename) "
                        "VALUES ($1, $2, $3)", mset.name, version, path.name)
                applied.append(f"{mset.name}/{path.name}")
                log.info("applied migration %s/%s", mset.name, path.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_KEY)
    return applied


async def migrate_url(url: str, sets: Sequence[MigrationSet]) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        applied: list[str] = await migrate(conn, sets)
        return applied
    finally:
        await conn.close()


@asynccontextmanager
async def listening(url: str, channel: str) -> AsyncIterator[asyncio.Queue[str]]:
    """A dedicated connection LISTENing on ``channel``; payloads arrive on the queue.

    A dedicated connection (not from the pool) because a LISTEN lives as long
    as its session. If the connection drops, notifications stop: callers keep a
    slow safety sweep and reconnect.
    """
    queue: asyncio.Queue[str] = asyncio.Queue()
    conn = await asyncpg.connect(url)

    def _on_notify(_c: object, _pid: int, _channel: str, payload: str) -> None:
        queue.put_nowait(payload)

    try:
        await conn.add_listener(channel, _on_notify)
        yield queue
    finally:
        # A LISTEN-only session has nothing to flush: terminate() is immediate and
        # cannot be interrupted by a second cancellation, so the socket never leaks.
        conn.terminate()


def package_migrations(name: str, package_file: str) -> MigrationSet:
    """The ``migrations/`` directory beside a package's ``__init__``."""
    return MigrationSet(name, Path(package_file).resolve().parent / "migrations")
