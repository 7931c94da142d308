"""The real callback Asterisk 22's logs rotated by ``instance.py rotate-logs`` (what the
cbgw-asterisk-logs@ timer runs daily): ``logger rotate`` moves each log to ``.0`` and
Asterisk goes on writing a fresh file; the next rotation moves that ``.0`` up to ``.1``,
which the tool gzips; an archive past ``--keep`` is removed.

Holds the stack's lock (``demo.stack.LOCK_PATH``) while it drives the shared Asterisk."""

from __future__ import annotations

import gzip
import uuid
from pathlib import Path

import pytest

from shared.ari import AllocationFailed
from tests.harness.asterisk import AsteriskSite, instance_tool, locked_site_fixture

pytestmark = pytest.mark.e2e

callback = locked_site_fixture("callback")


def log_dir(site: AsteriskSite) -> Path:
    tool = instance_tool()
    installed = tool.load_site(site.name, site.root)
    return installed.host(installed.directories()["astlogdir"])


async def logged_marker(site: AsteriskSite) -> str:
    """A warning only this test makes: an originate to an endpoint that does not exist
    (Asterisk names it in messages.log and full.log)."""
    marker = f"no-such-endpoint-{uuid.uuid4().hex[:8]}"
    async with site.client() as ari:
        with pytest.raises(AllocationFailed):
            await ari.originate(f"PJSIP/0312345678@{marker}", timeout=1)
    return marker


def rotate(site: AsteriskSite, keep: int) -> int:
    status: int = instance_tool().main(["--root", str(site.root), "rotate-logs", site.name,
                                        "--keep", str(keep)])
    return status


async def test_rotated_logs_are_kept_gzipped_and_pruned_and_asterisk_writes_on(
        callback: AsteriskSite) -> None:
    logs = log_dir(callback)
    first = await logged_marker(callback)
    assert first in (logs / "full.log").read_text(errors="replace")
    assert rotate(callback, keep=3) == 0
    assert first in (logs / "full.log.0").read_text(errors="replace")
    assert first in (logs / "messages.log.0").read_text(errors="replace")
    assert first not in (logs / "full.log").read_text(errors="replace")
    second = await logged_marker(callback)     # Asterisk writes the reopened file
    assert second in (logs / "full.log").read_text(errors="replace")

    assert rotate(callback, keep=3) == 0       # the former .0 moved up and gzipped
    with gzip.open(logs / "full.log.1.gz", "rt", errors="replace") as archived:
        assert first in archived.read()
    assert not (logs / "full.log.1").exists()
    assert second in (logs / "full.log.0").read_text(errors="replace")

    assert rotate(callback, keep=3) == 0
    assert rotate(callback, keep=3) == 0       # first's archive would be .3: past --keep
    kept = sorted(p.name for p in logs.glob("full.log*"))
    assert kept == ["full.log", "full.log.0", "full.log.1.gz", "full.log.2.gz"], kept
    with gzip.open(logs / "full.log.2.gz", "rt", errors="replace") as archived:
        assert second in archived.read()
    assert "cbgw-answers.csv" in {p.name for p in logs.iterdir()}   # not Asterisk's log
