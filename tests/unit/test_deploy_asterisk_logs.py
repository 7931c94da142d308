"""deploy/asterisk: every site's Asterisk rotates its logs as ``instance.py rotate-logs``
expects (``rotatestrategy = rotate``) and logs none of the keys customers press, and the
tool's archive step gzips each archive from
.1 on and removes those past ``--keep``, leaving everything else in the directory alone.
The rotation on a real Asterisk: tests/e2e/test_asterisk_logs.py."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from tests.harness.asterisk import instance_tool

REPO = Path(__file__).resolve().parents[2]
SITES = ("edge", "edge2", "callback", "callback2")


@pytest.mark.parametrize("site", SITES)
def test_every_site_rotates_the_logs_up_from_zero(site: str) -> None:
    text = (REPO / "deploy/asterisk" / site / "logger.conf").read_text()
    general = text.split("[general]", 1)[1].split("\n[", 1)[0]
    assert re.search(r"^rotatestrategy = rotate$", general, re.MULTILINE), general


@pytest.mark.parametrize("site", SITES)
def test_no_log_keeps_the_keys_customers_press(site: str) -> None:
    """The keys are customers' answers (a birth date for a reading): kept in the database,
    where they can be erased, never in a log file (no channel logs ``dtmf``)."""
    text = (REPO / "deploy/asterisk" / site / "logger.conf").read_text()
    channels = [line.split(";", 1)[0].split("=>") for line in
                text.split("[logfiles]", 1)[1].splitlines() if "=>" in line.split(";", 1)[0]]
    assert channels and all("dtmf" not in levels for _, levels in channels), channels


def test_the_media_bench_swaps_a_line_the_callback_site_has() -> None:
    """bench.asterisk_media's quiet phase replaces full.log's whole line: it is there."""
    from bench.asterisk_media import FULL_LOG

    lines = (REPO / "deploy/asterisk/callback/logger.conf").read_text().splitlines()
    assert FULL_LOG in lines


def test_archives_from_one_on_are_gzipped_and_those_past_keep_removed(tmp_path: Path) -> None:
    files = {"full.log": "live\n", "full.log.0": "newest\n", "full.log.1": "older\n",
             "full.log.13": "oldest kept\n", "full.log.14": "past keep\n",
             "messages.log.20": "past keep\n", "cbgw-answers.csv.1": "not a log\n",
             "notes.txt": "other\n", "full.log.3.gz.partial": "interrupted\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "full.log.2.gz").write_bytes(gzip.compress(b"gzipped before\n"))
    (tmp_path / "full.log.1").chmod(0o640)

    assert instance_tool().archive_logs(tmp_path, keep=14) == (2, 2)

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cbgw-answers.csv.1", "full.log", "full.log.0", "full.log.1.gz", "full.log.13.gz",
        "full.log.2.gz", "notes.txt"]
    assert (tmp_path / "full.log.0").read_text() == "newest\n"
    assert gzip.decompress((tmp_path / "full.log.1.gz").read_bytes()) == b"older\n"
    assert gzip.decompress((tmp_path / "full.log.13.gz").read_bytes()) == b"oldest kept\n"
    assert gzip.decompress((tmp_path / "full.log.2.gz").read_bytes()) == b"gzipped before\n"
    assert (tmp_path / "full.log.1.gz").stat().st_mode & 0o777 == 0o640
    assert instance_tool().archive_logs(tmp_path, keep=14) == (0, 0)


def test_keep_below_one_is_refused_naming_the_option(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    assert instance_tool().main(["--root", str(tmp_path), "rotate-logs", "callback",
                                 "--keep", "0"]) == 1
    assert "--keep must be at least 1, not 0" in capsys.readouterr().err
