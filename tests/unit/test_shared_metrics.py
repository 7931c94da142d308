"""shared.metrics' multiprocess directory, with real processes writing real mmap files:
a scrape sums every process; at start the files of dead processes are tidied (their live
gauges go, their counts stay while another process lives; a directory nobody uses is
emptied); a process cannot switch to a directory once its metrics exist."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import prom

REPO = Path(__file__).resolve().parents[2]

#: a process of a site: it uses the directory, counts ``n`` link requests, samples its
#: loop lag, prints the scrape it would answer, then waits for a line on stdin (or not)
PROCESS = """
import sys
from pathlib import Path
from shared import metrics
from shared.metrics_http import render
metrics.use_directory(Path(sys.argv[1]))
m = metrics.common()
m.link_requests.labels("internet", "ok").inc(int(sys.argv[2]))
m.loop_lag.set(0.25)
sys.stdout.write(render().decode() + "\\f")
sys.stdout.flush()
if sys.argv[3] == "wait":
    sys.stdin.readline()
    metrics.process_ended()
"""


class Site:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.waiting: list[subprocess.Popen[str]] = []

    def start(self, n: int, *, wait: bool) -> tuple[int, str]:
        """A process counting ``n``; returns its pid and its scrape."""
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(PROCESS), str(self.directory), str(n),
             "wait" if wait else "exit"], cwd=REPO, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        text = ""
        while not text.endswith("\f"):
            char = proc.stdout.read(1)
            assert char, "the process ended before its scrape"
            text += char
        if wait:
            self.waiting.append(proc)
        else:
            assert proc.wait(10) == 0
            _close(proc)
        return proc.pid, text

    def stop(self, index: int) -> None:
        proc = self.waiting[index]
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(10) == 0
        _close(proc)

    def files(self) -> set[str]:
        return {p.name for p in self.directory.glob("*.db")}


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path / "metrics")
    yield s
    for proc in s.waiting:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _close(proc)


def _close(proc: subprocess.Popen[str]) -> None:
    for stream in (proc.stdin, proc.stdout):
        if stream is not None and not stream.closed:
            stream.close()


def requests(text: str) -> float:
    return prom.scraped(text, "cbgw_link_requests_total", route="internet", result="ok")


def lag_pids(text: str) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    return {s.labels["pid"] for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "cbgw_event_loop_lag_seconds"}


def test_any_process_scrapes_the_sum_of_all(site: Site) -> None:
    first, _ = site.start(1, wait=True)
    second, text = site.start(10, wait=True)
    assert requests(text) == 11
    assert lag_pids(text) == {str(first), str(second)}  # one live gauge per process


def test_a_dead_process_counts_on_but_its_live_gauges_go(site: Site) -> None:
    alive, _ = site.start(1, wait=True)
    crashed, _ = site.start(10, wait=False)  # never marked itself dead
    assert f"gauge_liveall_{crashed}.db" in site.files()
    third, text = site.start(100, wait=True)
    assert requests(text) == 111
    assert f"gauge_liveall_{crashed}.db" not in site.files()
    assert f"counter_{crashed}.db" in site.files()
    assert lag_pids(text) == {str(alive), str(third)}


def test_a_process_that_stops_marks_itself_dead(site: Site) -> None:
    first, _ = site.start(1, wait=True)
    second, _ = site.start(10, wait=True)
    site.stop(0)
    assert f"gauge_liveall_{first}.db" not in site.files()
    _, text = site.start(100, wait=True)
    assert requests(text) == 111
    assert str(first) not in lag_pids(text) and str(second) in lag_pids(text)


def test_a_directory_no_live_process_uses_is_emptied(site: Site) -> None:
    site.start(1, wait=False)
    site.start(10, wait=False)
    pid, text = site.start(100, wait=True)   # a new run of the site
    assert requests(text) == 100
    assert {name.rsplit("_", 1)[1] for name in site.files()} == {f"{pid}.db"}


def test_the_directory_must_come_before_any_metric(tmp_path: Path) -> None:
    script = ("import sys; from pathlib import Path; from shared import metrics\n"
              "metrics.common()\n"
              "metrics.use_directory(Path(sys.argv[1]))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "m")], cwd=REPO,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "metrics were defined before the multiprocess directory was set" in proc.stderr
