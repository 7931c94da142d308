"""deploy/kamailio: the config loads in the real Kamailio, and it points at the edge
Asterisks as their own configs place them (and they take it for the carrier)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.harness.asterisk import REPO, instance_tool
from tests.harness.kamailio import SIP
from tests.harness.kamailio import instance_tool as kamailio_tool

ASTERISK = REPO / "deploy/asterisk"
EDGES = ("edge", "edge2")


def _pjsip(site: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = instance_tool().parse_asterisk_conf(
        (ASTERISK / site / "pjsip.conf").read_text())
    return sections


def test_the_config_loads_in_kamailio(tmp_path: Path) -> None:
    """The command line ``instance.py start`` checks before it starts Kamailio."""
    tool = kamailio_tool()
    kamailio = tool.binary()
    result = subprocess.run(tool.Front(tmp_path).command(kamailio, check=True),
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "udp: 127.0.0.2 [127.0.0.2]:5060" in result.stdout


def test_it_listens_where_the_tools_probe_it() -> None:
    config = (REPO / "deploy/kamailio/kamailio.cfg").read_text()
    assert re.findall(r"^listen=udp:([\d.]+):(\d+)$", config, re.M) == [
        (SIP[0], str(SIP[1]))]
    assert kamailio_tool().LISTEN == SIP


def test_the_dispatcher_set_is_the_edge_asterisks() -> None:
    listed = re.findall(r"^1 sip:([\d.]+:\d+) ", (REPO / "deploy/kamailio/dispatcher.list")
                        .read_text(), re.M)
    assert listed == [_pjsip(site)["transport-udp"]["bind"] for site in EDGES]


def test_the_edge_asterisks_take_kamailio_for_the_carrier() -> None:
    for site in EDGES:
        sections = _pjsip(site)
        assert sections["carrier-in"]["match"] == SIP[0]
        assert sections["carrier-in"]["rewrite_contact"] == "no", site


def test_each_edge_forwards_advisor_calls_to_the_other_and_takes_them_from_it() -> None:
    """An advisor registered at the other edge is rung through the edge-peer trunk:
    each edge's edge-peer is the other's SIP address, and the dialplans are the same."""
    for site, other in (EDGES, EDGES[::-1]):
        peer, bind = _pjsip(site)["edge-peer"], _pjsip(other)["transport-udp"]["bind"]
        assert peer["contact"] == f"sip:{bind}", site
        assert peer["match"] == bind, site
        assert peer["context"] == "from-edge-peer", site
        # qualified: while the other is down the forward fails at once, not after Timer B
        assert "[edge-peer](qualified)" in (ASTERISK / site / "pjsip.conf").read_text()
    dialplans = {(ASTERISK / site / "extensions.conf").read_text() for site in EDGES}
    assert len(dialplans) == 1


def test_every_asterisk_instance_has_its_own_ports() -> None:
    tool = instance_tool()
    sites = sorted(p.parent.name for p in ASTERISK.glob("*/asterisk.conf"))
    assert {"edge", "edge2", "callback", "callback2"} <= set(sites)
    used: dict[str, str] = {}
    for site in sites:
        rtp = tool.parse_asterisk_conf((ASTERISK / site / "rtp.conf").read_text())["general"]
        ports = {"sip": _pjsip(site)["transport-udp"]["bind"],
                 "ari": str(tool.Site(site, REPO).ari_port),
                 "rtp": rtp["rtpstart"], "run": tool.Site(site, REPO).directories()["astrundir"]}
        for kind, value in ports.items():
            assert value not in used, f"{site} {kind} {value} is also {used[value]}'s"
            used[value] = f"{site} {kind}"
