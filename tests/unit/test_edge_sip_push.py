"""Advisors' SIP endpoints: what is pushed to the edge Asterisk, how the callback site
names them on the trunk, and ``[edge.sip_endpoints]``."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from callback_server.advisor_desk import sip_routes
from callback_server.dialer_messages import EDGE_TRUNK, Route
from edge_server.config import EdgeSettings
from edge_server.sip_endpoints import SipEndpoint, digest_ha1, endpoint_id
from edge_server.sip_push import ADVISOR_CONTEXT, SipEndpointSettings, objects
from shared.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 5, tzinfo=UTC)


def endpoint(user: str = "hoshino") -> SipEndpoint:
    name = endpoint_id("acme", user)
    return SipEndpoint("acme", user, "cbgw", digest_ha1(name, "cbgw", "pw-123456789"),
                       NOW, NOW)


def test_the_hash_is_rfc_2617_ha1_of_the_endpoint_name() -> None:
    assert endpoint().ha1 == hashlib.md5(b"acme.hoshino:cbgw:pw-123456789").hexdigest()
    assert "ha1" not in endpoint().to_json() and endpoint().ha1 not in str(endpoint().to_json())


def test_an_advisor_endpoint_can_be_rung_but_dials_nowhere_and_needs_its_password() -> None:
    pushed = {kind: dict(fields) for kind, fields in objects(endpoint(), SipEndpointSettings())}
    assert list(pushed) == ["auth", "aor", "endpoint"]     # the endpoint names the others
    assert pushed["auth"] == {"auth_type": "md5", "username": "acme.hoshino",
                              "realm": "cbgw", "md5_cred": endpoint().ha1}
    assert pushed["aor"]["max_contacts"] == "1" and pushed["aor"]["remove_existing"] == "yes"
    ep = pushed["endpoint"]
    assert ep["context"] == ADVISOR_CONTEXT == "from-advisor"
    assert ep["identify_by"] == "username"      # never by address: it registers from anywhere
    assert (ep["auth"], ep["aors"]) == ("acme.hoshino", "acme.hoshino")
    assert "password" not in str(pushed)


def test_an_advisor_endpoint_dials_nothing_but_edge_server() -> None:
    dialplan = (REPO / "deploy/asterisk/edge/extensions.conf").read_text()
    advisor = dialplan.split(f"[{ADVISOR_CONTEXT}]", 1)[1].split("\n[", 1)[0]
    actions = [line for line in advisor.splitlines() if line.startswith(("exten", " same"))]
    assert actions == ["exten => _[+0-9]!,1,Set(TIMEOUT(absolute)=${MAX_CALL_S})",
                       " same => n,Stasis(edge,advisor)",     # presence numbers only
                       " same => n,Hangup(21)"]
    def context(name: str) -> str:
        return dialplan.split(f"\n[{name}]\n", 1)[1].split("\n[", 1)[0]

    def dials(name: str) -> list[str]:
        return re.findall(r"Dial\(([^,]+)", context(name))

    # the trunk rings an advisor endpoint here, else forwards to the other edge, whose
    # calls ring its own contacts only: a call crosses between edges at most once
    assert dials("from-callback-site") == ["PJSIP/${EXTEN}@edge-peer"]
    assert dials("from-edge-peer") == []
    assert dials("ring-advisor") == ["PJSIP/${ARG1}"]
    assert f'PJSIP_ENDPOINT(${{ARG1}},context)}}" != "{ADVISOR_CONTEXT}"' \
        in context("ring-advisor")
    for name in ("from-callback-site", "from-edge-peer"):
        assert "Gosub(ring-advisor,s,1(${EXTEN}))" in context(name), name


def test_the_qualify_interval_is_pushed() -> None:
    pushed = dict(objects(endpoint(), SipEndpointSettings(qualify_s=30)))
    assert dict(pushed["aor"])["qualify_frequency"] == "30"


def test_the_callback_site_rings_the_merchant_s_endpoint_or_its_operator() -> None:
    def endpoints(merchant: str, user: str, operator: str | None) -> list[str]:
        return [r.endpoint for r in sip_routes(merchant, user, operator)]

    assert endpoints("acme", "hoshino", "operator") == [f"PJSIP/acme.hoshino@{EDGE_TRUNK}"]
    assert endpoints("acme", "operator", "operator") == [f"PJSIP/operator@{EDGE_TRUNK}"]
    assert endpoints("bento", "operator", "op-bento") == [f"PJSIP/bento.operator@{EDGE_TRUNK}"]
    assert [r.carrier_id for r in sip_routes("acme", "hoshino", None)] == [EDGE_TRUNK]


def test_a_sip_advisor_is_rung_over_each_edge_trunk_in_order() -> None:
    trunks = ("edge-trunk", "edge-trunk2")
    assert sip_routes("acme", "hoshino", "operator", trunks) == (
        Route(EDGE_TRUNK, "PJSIP/acme.hoshino@edge-trunk"),
        Route(EDGE_TRUNK, "PJSIP/acme.hoshino@edge-trunk2"))
    assert [r.endpoint for r in sip_routes("acme", "operator", "operator", trunks)] == [
        "PJSIP/operator@edge-trunk", "PJSIP/operator@edge-trunk2"]


def write(tmp_path: Path, table: str) -> Path:
    example = (REPO / "deploy/edge.example.toml").read_text()
    start = example.index("[edge.sip_endpoints]")
    end = example.index("\n[", start + 1)
    path = tmp_path / "edge.toml"
    path.write_text(example[:start] + table + example[end:])
    return path


def test_the_example_sets_the_defaults(tmp_path: Path) -> None:
    settings = EdgeSettings.load(REPO / "deploy/edge.example.toml", {})
    assert settings.edge.sip_endpoints == SipEndpointSettings()
    path = write(tmp_path, '[edge.sip_endpoints]\nrealm = "edge.example.jp"\nqualify_s = 60\n')
    assert EdgeSettings.load(path, {}).edge.sip_endpoints == SipEndpointSettings(
        "edge.example.jp", 60)


@pytest.mark.parametrize(("table", "key"), [
    ('realm = "a b"', "realm"), ("qualify_s = -1", "qualify_s"), ("qualfy_s = 5", "qualfy_s")])
def test_bad_settings_name_the_key(tmp_path: Path, table: str, key: str) -> None:
    path = write(tmp_path, f"[edge.sip_endpoints]\n{table}\n")
    with pytest.raises(ConfigError, match=rf"edge\.sip_endpoints\.{key}"):
        EdgeSettings.load(path, {})
