"""``python -m <site>_server backup``: a consistent dump of the site's database.

The database the site uses (``[database] url``, else ``DATABASE_URL``, else the embedded
server) is dumped with PostgreSQL's own ``pg_dump`` in its custom format (compressed; one
transaction, so the ledger, the outbox and the calls are as of one instant) to
``DIR/<site>-<database>-<YYYYmmddTHHMMSS+0900>.dump`` (Japan time: the name tells the
operator when it was taken, and sorts by it). The dump is written as ``.partial``, read
back with ``pg_restore --list`` (an archive it cannot list is refused, never kept),
flushed to disk and only then renamed to its name (readable by its owner only: it holds
the customers' numbers and money); then the site's dumps beyond the
newest ``keep`` in ``DIR`` are removed, with any ``.partial`` an interrupted run left.
A dump that failed leaves the earlier ones as they were. One backup of a database runs
at a time in ``DIR`` (a lock file beside the dumps); a second is refused while it does.

The tools are the embedded server's own (the ``pgserver`` wheel's, PostgreSQL 16), which
dump any server up to 16; ``--pg-bin DIR`` names another installation's for a newer
server. A password in the URL goes to ``pg_dump`` as ``PGPASSWORD``, not on its command
line, where any user could read it.

Restoring is PostgreSQL's ``pg_restore`` into a new, empty database (deploy/README.md,
"Backups"); tests/integration/test_backup.py restores one and finds the ledger, its
balances and its append-only triggers as they were.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from shared.config import DatabaseSettings
from shared.timeutil import TOKYO

#: dumps kept of a site's database (14: two weeks when taken daily)
DEFAULT_KEEP = 14
#: a dump's name: the site, the database, when (Japan time)
DUMP = re.compile(r"(?P<site>[a-z0-9]+)-(?P<database>[a-z_0-9]+)-"
                  r"(?P<at>[0-9]{8}T[0-9]{6}[+-][0-9]{4})\.dump")
#: how long pg_dump may take (a site's database is a few GB at most)
DUMP_TIMEOUT_S = 3600


class BackupError(Exception):
    """A dump not taken (the message names the tool and what it said)."""


@dataclass(frozen=True, slots=True)
class Backup:
    path: Path
    bytes: int
    seconds: float
    entries: int                      # the archive's table of contents, as pg_restore lists it
    removed: tuple[str, ...]          # older dumps (and interrupted runs) removed

    def as_json(self) -> str:
        return json.dumps({"file": str(self.path), "bytes": self.bytes,
                           "seconds": round(self.seconds, 3), "entries": self.entries,
                           "removed": list(self.removed)}, ensure_ascii=False)


def pg_tool(name: str, pg_bin: Path | None = None) -> Path:
    """``name`` (``pg_dump``, ``pg_restore``) from ``pg_bin``, else the embedded server's,
    else the ``PATH``'s."""
    if pg_bin is not None:
        candidates = [pg_bin / name]
    else:
        candidates = []
        try:
            import pgserver
        except ImportError:
            pass
        else:
            candidates.append(Path(pgserver.__file__).parent / "pginstall" / "bin" / name)
        found = shutil.which(name)
        if found:
            candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    where = f"in {pg_bin}" if pg_bin is not None else "with the embedded server or on PATH"
    raise BackupError(f"{name} not found {where}")


def without_password(url: str) -> tuple[str, str | None]:
    """``url`` without its password, and the password (``None``: none in the URL)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, None
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:                                        # an IPv6 literal
        host = f"[{host}]"
    netloc = f"{user}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc)), unquote(parts.password)


def dump_name(site: str, database: str, at: datetime) -> str:
    return f"{site}-{database}-{at.astimezone(TOKYO).strftime('%Y%m%dT%H%M%S%z')}.dump"


def backup(url: str, directory: Path, *, site: str, database: str,
           keep: int = DEFAULT_KEEP, pg_bin: Path | None = None,
           now: datetime | None = None) -> Backup:
    """Dump the database at ``url`` into ``directory`` (module docstring); ``database``
    names it in the file's name."""
    if keep < 1:
        raise BackupError(f"--keep must be at least 1, not {keep}")
    pg_dump, pg_restore = pg_tool("pg_dump", pg_bin), pg_tool("pg_restore", pg_bin)
    directory.mkdir(parents=True, exist_ok=True)
    with _only_run(directory / f".{site}-{database}.lock"):
        return _backup(url, directory, site=site, database=database, keep=keep,
                       now=now or datetime.now(UTC), tools=(pg_dump, pg_restore))


@contextmanager
def _only_run(lock_path: Path) -> Iterator[None]:
    """This database's one backup at a time in ``DIR`` (a second would remove the first's
    ``.partial`` as an interrupted run's)."""
    with lock_path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError(f"another backup of this database is running ({lock_path} "
                              "is locked)") from None
        yield


def _backup(url: str, directory: Path, *, site: str, database: str, keep: int,
            now: datetime, tools: tuple[Path, Path]) -> Backup:
    pg_dump, pg_restore = tools
    target = directory / dump_name(site, database, now)
    partial = target.with_name(target.name + ".partial")
    dbname, password = without_password(url)
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
    if password is not None:
        env["PGPASSWORD"] = password
    started = time.monotonic()
    try:
        _run([str(pg_dump), "--format=custom", "--no-password", f"--file={partial}",
              f"--dbname={dbname}"], env, DUMP_TIMEOUT_S)
        listing = _run([str(pg_restore), "--list", str(partial)], env, 600)
        with partial.open("rb") as written:
            os.fsync(written.fileno())
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    seconds = time.monotonic() - started
    entries = sum(1 for line in listing.splitlines() if line and not line.startswith(";"))
    removed = prune(directory, site=site, database=database, keep=keep)
    return Backup(target, target.stat().st_size, seconds, entries, removed)


def prune(directory: Path, *, site: str, database: str, keep: int) -> tuple[str, ...]:
    """Remove the site's dumps of ``database`` beyond the newest ``keep`` (by the time in
    their names) and any ``.partial`` of them; the names removed."""
    dumps: list[tuple[datetime, Path]] = []
    removed: list[str] = []
    for path in directory.iterdir():
        name = path.name.removesuffix(".partial")
        found = DUMP.fullmatch(name)
        if found is None or (found["site"], found["database"]) != (site, database):
            continue
        if path.name.endswith(".partial"):
            path.unlink()
            removed.append(path.name)
        else:
            dumps.append((datetime.strptime(found["at"], "%Y%m%dT%H%M%S%z"), path))
    dumps.sort(reverse=True)
    for _, path in dumps[keep:]:
        path.unlink()
        removed.append(path.name)
    return tuple(sorted(removed))


def _run(argv: list[str], env: dict[str, str], timeout_s: float) -> str:
    tool = Path(argv[0]).name
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True,
                              timeout=timeout_s, check=False, umask=0o077)
    except subprocess.TimeoutExpired as exc:
        raise BackupError(f"{tool} did not finish within {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        said = done.stderr.strip() or done.stdout.strip() or "no message"
        raise BackupError(f"{tool} failed (exit status {done.returncode}): {said}")
    return done.stdout


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def cli(database: DatabaseSettings, site: str, directory: Path, keep: int,
        pg_bin: Path | None) -> int:
    """``backup``: one JSON line of what was written and removed; exit status 1 and the
    reason on stderr when no dump was taken."""
    from shared.db import resolve_url

    try:
        url = resolve_url(database.url, database.name)
        dbname = urlsplit(url).path.lstrip("/") or database.name
        taken = backup(url, directory, site=site, database=re.sub(r"[^a-z_0-9]", "_",
                                                                  dbname.lower()),
                       keep=keep, pg_bin=pg_bin)
    except BackupError as exc:
        print(f"backup: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"backup: {directory}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(taken.as_json())
    return 0
