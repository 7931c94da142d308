"""deploy/systemd: every unit runs a command line our own parsers accept, with the paths
the tools really use."""

from __future__ import annotations

import configparser
import os
import shlex
import tomllib
from pathlib import Path

import pytest

from shared.server_cli import parser_for
from tests.harness.asterisk import instance_tool

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
ASTERISK_ROOT = Path("/var/cache/cbgw/asterisk-sid")


def _unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((UNITS / name).read_text())
    return unit


def _exec(unit: configparser.ConfigParser, key: str = "ExecStart", instance: str = "1"
          ) -> list[str]:
    return shlex.split(unit["Service"][key].replace("%i", instance))


def test_every_unit_is_checked() -> None:
    assert sorted(p.name for p in UNITS.glob("*.service")) == [
        "cbgw-asterisk-logs@.service", "cbgw-asterisk@.service", "cbgw-backup@.service",
        "cbgw-callback-intake@.service", "cbgw-callback.service", "cbgw-edge.service"]
    assert sorted(p.name for p in UNITS.glob("*.timer")) == ["cbgw-asterisk-logs@.timer",
                                                               "cbgw-backup@.timer"]


@pytest.mark.parametrize(("name", "site", "role"), [
    ("cbgw-edge.service", "edge", "all"),
    ("cbgw-callback.service", "callback", "all"),
    ("cbgw-callback-intake@.service", "callback", "intake"),
])
def test_server_units_run_serve_with_their_role(name: str, site: str, role: str) -> None:
    argv = _exec(_unit(name))
    assert argv[:3] == ["/opt/cbgw/.venv/bin/python", "-m", f"{site}_server"]
    roles = ("all", "intake") if site == "callback" else ("all",)
    args = parser_for(site, roles=roles).parse_args(argv[3:])
    assert (args.command, args.role, args.config) == ("serve", role,
                                                       Path(f"/etc/cbgw/{site}.toml"))


def test_the_intake_processes_share_the_example_configs_port() -> None:
    """``--role intake`` needs ``[http] reuse_port``: the example config has it."""
    http = tomllib.loads((REPO / "deploy/callback.example.toml").read_text())["http"]
    assert http["reuse_port"] is True
    assert _unit("cbgw-callback-intake@.service")["Unit"]["PartOf"] == "cbgw-callback.service"


def test_the_callback_server_has_time_to_drain_its_calls() -> None:
    callback = tomllib.loads((REPO / "deploy/callback.example.toml").read_text())["callback"]
    stop_s = int(_unit("cbgw-callback.service")["Service"]["TimeoutStopSec"])
    assert stop_s > callback["drain_s"] + 15  # + the HTTP shutdown timeout


@pytest.mark.parametrize("site", ["edge", "callback", "callback2"])
def test_the_asterisk_unit_runs_instance_py_and_knows_its_pid_file(site: str) -> None:
    unit = _unit("cbgw-asterisk@.service")
    instance = instance_tool()
    for key, command in (("ExecStart", "start"), ("ExecStop", "stop")):
        argv = _exec(unit, key, site)
        assert argv[1:] == ["deploy/asterisk/instance.py", command, site]
        assert (REPO / argv[1]).is_file()
    pidfile = unit["Service"]["PIDFile"].replace("%i", site)
    assert Path(pidfile) == instance.load_site(site, ASTERISK_ROOT).pidfile
    assert instance.DEFAULT_ROOT == ASTERISK_ROOT or "CBGW_ASTERISK_ROOT" in os.environ


@pytest.mark.parametrize("site", ["edge", "callback"])
def test_each_sites_database_is_dumped_daily_before_the_quiet_hour_s_log_rotation(
        site: str) -> None:
    service = _unit("cbgw-backup@.service")
    argv = _exec(service, instance=site)
    assert argv[:3] == ["/opt/cbgw/.venv/bin/python", "-m", f"{site}_server"]
    args = parser_for(site).parse_args(argv[3:])
    assert (args.command, args.config, args.dir, args.keep) == (
        "backup", Path(f"/etc/cbgw/{site}.toml"), Path(f"/var/backups/cbgw/{site}"), 14)
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["EnvironmentFile"].replace("%i", site) \
        == _unit(f"cbgw-{site}.service")["Service"]["EnvironmentFile"]
    assert "/var/backups/cbgw" in service["Service"]["ReadWritePaths"].split()
    timer = _unit("cbgw-backup@.timer")["Timer"]
    assert timer["OnCalendar"] == "*-*-* 03:30:00 Asia/Tokyo"
    assert timer["OnCalendar"] < _unit("cbgw-asterisk-logs@.timer")["Timer"]["OnCalendar"]
    assert timer["Persistent"] == "true"


@pytest.mark.parametrize("site", ["edge", "edge2", "callback", "callback2"])
def test_each_sites_asterisk_logs_are_rotated_daily_in_japan_s_quiet_hour(site: str) -> None:
    service = _unit("cbgw-asterisk-logs@.service")
    argv = _exec(service, instance=site)
    assert argv[1:] == ["deploy/asterisk/instance.py", "rotate-logs", site, "--keep",
                        str(instance_tool().DEFAULT_KEEP_LOGS)]
    assert (REPO / argv[1]).is_file()
    assert service["Service"]["Type"] == "oneshot"
    assert service["Unit"]["After"] == "cbgw-asterisk@%i.service"
    timer = _unit("cbgw-asterisk-logs@.timer")
    assert timer["Timer"]["OnCalendar"] == "*-*-* 04:00:00 Asia/Tokyo"
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Install"]["WantedBy"] == "timers.target"


@pytest.mark.parametrize(("name", "site"), [
    ("cbgw-edge.service", "edge"), ("cbgw-callback.service", "callback"),
    ("cbgw-callback-intake@.service", "callback")])
def test_each_sites_processes_share_one_metrics_directory(name: str, site: str) -> None:
    """``--role intake`` needs a metrics directory; the site's units all use the same one,
    which systemd creates for them and keeps while a unit restarts."""
    service = _unit(name)["Service"]
    assert service["Environment"] == f"PROMETHEUS_MULTIPROC_DIR=/run/cbgw/{site}-metrics"
    assert service["RuntimeDirectory"] == f"cbgw/{site}-metrics"
    assert service["RuntimeDirectoryPreserve"] == "yes"
