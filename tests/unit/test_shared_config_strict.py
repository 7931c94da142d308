"""Unknown keys and sections are errors, in the files and in the environment overrides.

A typo must not silently leave a default in place: ``anounce_mode = "answer"``
used to be accepted while the merchant stayed in early-media mode.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

import pytest

from callback_server.config import CallbackSettings
from callback_server.dialer_messages import EDGE_TRUNK, Route, edge_routes
from edge_server.config import EdgeSettings
from shared.config import ConfigError
from shared.money import Money

REPO = Path(__file__).resolve().parents[2]
EDGE_EXAMPLE = (REPO / "deploy/edge.example.toml").read_text()
CALLBACK_EXAMPLE = (REPO / "deploy/callback.example.toml").read_text()


def _edge(tmp_path: Path, text: str, environ: Mapping[str, str] | None = None) -> EdgeSettings:
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return EdgeSettings.load(path, environ or {})


def _callback(tmp_path: Path, text: str,
              environ: Mapping[str, str] | None = None) -> CallbackSettings:
    path = tmp_path / "callback.toml"
    path.write_text(text)
    return CallbackSettings.load(path, environ or {})


def _line(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_a_typo_in_a_merchant_names_file_line_key_and_the_nearest_key(tmp_path: Path) -> None:
    text = EDGE_EXAMPLE.replace('announce_mode = "early_media"', 'anounce_mode = "answer"')
    with pytest.raises(ConfigError) as err:
        _edge(tmp_path, text)
    line = _line(text, "anounce_mode")
    assert str(err.value) == (f"{tmp_path}/edge.toml:{line}: merchants[0].anounce_mode: "
                              "unknown key (did you mean announce_mode?)")


def test_an_unknown_section_is_refused_with_its_header_line(tmp_path: Path) -> None:
    text = EDGE_EXAMPLE.replace("[ari]", "[nonsense]\nx = 1\n\n[ari]")
    with pytest.raises(ConfigError, match=rf"edge.toml:{_line(text, '[nonsense]')}: "
                                          r"nonsense: unknown section"):
        _edge(tmp_path, text)


@pytest.mark.parametrize(("variable", "message"), [
    ("EDGE__HTTP__PROT", "environment EDGE__HTTP__PROT: http.prot: unknown key "
                         "(did you mean port?)"),
    ("EDGE__NONSENSE__X", "environment EDGE__NONSENSE__X: nonsense: unknown section"),
])
def test_an_unknown_environment_override_names_the_variable(tmp_path: Path, variable: str,
                                                             message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _edge(tmp_path, EDGE_EXAMPLE, {variable: "1"})


def test_a_bad_environment_value_names_the_variable_not_a_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^environment EDGE__HTTP__PORT: http.port: "
                                          r"expected an integer"):
        _edge(tmp_path, EDGE_EXAMPLE, {"EDGE__HTTP__PORT": "x"})


@pytest.mark.parametrize(("old", "new", "key"), [
    ("[database]\n", "[database]\npool = 3\n", "database.pool"),
    ("[tls]", "[tls]\ncertificate = 'x'\n", "tls.certificate"),
    ("[signing]\n", "[signing]\nkey = 'x'\n", "signing.key"),
    ("[peer]\n", "[peer]\nbatch_message = 3\n", "peer.batch_message"),
    ('url = "https://127.0.0.1:9443"', 'url = "https://127.0.0.1:9443"\nweight = 2',
     "peer.routes[0].weight"),
    ("[edge]\n", "[edge]\nsweep_afer_s = 60\n", "edge.sweep_afer_s"),
    ("[edge.timings]", "[edge.timings]\ndecid_s = 2", "edge.timings.decid_s"),
    ("[edge.destinations]", "[edge.destinations]\ncountry = ['JP']", "edge.destinations.country"),
    ("[rates]", "[rates]\nfx = 1", "rates.fx"),
])
def test_every_edge_section_refuses_unknown_keys(tmp_path: Path, old: str, new: str,
                                                 key: str) -> None:
    text = EDGE_EXAMPLE.replace(old, new, 1)
    with pytest.raises(ConfigError, match=rf"edge.toml:\d+: {re.escape(key)}: unknown key"):
        _edge(tmp_path, text)


@pytest.mark.parametrize(("old", "new", "key", "hint"), [
    ("[guard]\n", "[guard]\nmax_call = 60\n", "guard.max_call", "max_call_s"),
    ("[guard.velocity.known]", "[guard.velocity.known]\nper_hr = 2", "guard.velocity.known.per_hr",
     "per_hour"),
    ("[guard.caps.global]", "[guard.caps.global]\nchanels = 2", "guard.caps.global.chanels",
     "channels"),
    ("[guard.alerts]", "[guard.alerts]\nwebhook = 'x'", "guard.alerts.webhook", "webhook_url"),
    ("[guard.brake]", "[guard.brake]\nthreshhold = 2", "guard.brake.threshhold", "threshold"),
    ("[callback]\n", "[callback]\nmax_call = 3\n", "callback.max_call", "max_calls"),
    ('dial_string = "PJSIP/{digits}@carrier-a"',
     'dial_string = "PJSIP/{digits}@carrier-a"\ndial = "x"', "callback.routes[0].dial",
     "dial_string"),
    ("[http]\n", "[http]\nrequire_client_certs = true\n", "http.require_client_certs",
     "require_client_cert"),
    ('ivr_flow = "order"', 'ivr_flow = "order"\nivr = "x"', "merchants[0].ivr", "ivr_flow"),
])
def test_every_callback_section_refuses_unknown_keys(tmp_path: Path, old: str, new: str,
                                                     key: str, hint: str) -> None:
    text = CALLBACK_EXAMPLE.replace(old, new, 1)
    assert text != CALLBACK_EXAMPLE
    with pytest.raises(ConfigError, match=rf"callback.toml:\d+: {re.escape(key)}: unknown key "
                                          rf"\(did you mean {hint}\?\)"):
        _callback(tmp_path, text)


def test_a_section_of_the_other_site_is_unknown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"callback.toml:\d+: edge: unknown section"):
        _callback(tmp_path, CALLBACK_EXAMPLE + "\n[edge]\nsweep_every_s = 1\n")
    with pytest.raises(ConfigError, match=r"edge.toml:\d+: guard: unknown section"):
        _edge(tmp_path, EDGE_EXAMPLE.replace("[rates]", "[guard]\nmax_call_s = 60\n\n[rates]"))


def test_all_unknown_keys_are_listed_at_once(tmp_path: Path) -> None:
    text = EDGE_EXAMPLE.replace("[database]\n", "[database]\nnme = 'x'\n").replace(
        "[edge]\n", "[edge]\ncontext = 'x'\n")
    with pytest.raises(ConfigError) as err:
        _edge(tmp_path, text)
    assert [line.split(": ")[1] for line in str(err.value).splitlines()] == [
        "database.nme", "edge.context"]


def test_a_misspelt_required_key_is_pointed_at(tmp_path: Path) -> None:
    text = EDGE_EXAMPLE.replace('username = "edge"', 'user_name = "edge"')
    with pytest.raises(ConfigError, match=rf"edge.toml:{_line(text, '[ari]')}: ari.username: "
                                          r"required \(found user_name: a typo\?\)"):
        _edge(tmp_path, text)


def test_a_link_policy_with_a_misspelt_key_is_refused(tmp_path: Path) -> None:
    text = EDGE_EXAMPLE.replace(
        "[[peer.routes]]", '[peer.policy]\ncdr = {mode = "both", routes = ["internet"]}\n\n'
        "[[peer.routes]]")
    with pytest.raises(ConfigError, match=r"peer.policy.cdr.routes: unknown key "
                                          r"\(did you mean route\?\)"):
        _edge(tmp_path, text)


def test_tables_whose_keys_are_data_accept_any_key(tmp_path: Path) -> None:
    text = (EDGE_EXAMPLE.replace('USD = "155"', 'USD = "155"\nEUR = "160"')
            .replace("# acme = false", "acme = false")
            .replace('callback-sign-1 = "../var/pki/callback-sign-1.pub"',
                     'callback-sign-1 = "../var/pki/callback-sign-1.pub"\n'
                     'callback-sign-2 = "../var/pki/callback-sign-2.pub"')
            .replace("[[peer.routes]]", '[peer.policy]\nbilling = "both"\n\n[[peer.routes]]'))
    settings = _edge(tmp_path, text)
    assert settings.rates.fx_rates == {"USD": "155", "EUR": "160"}
    assert settings.edge.per_merchant_unrated == {"acme": False}
    assert set(settings.signing.trusted) == {"callback-sign-1", "callback-sign-2"}
    assert settings.peer.policy.for_kind("billing").mode.value == "both"


def test_the_example_configs_and_the_environments_the_repo_sets_parse(tmp_path: Path) -> None:
    from bench.callback_latency import BENCH_GUARD_ENV
    from bench.load_sweep import SWEEP_ENV
    from tests.faults.sites import LOAD_GUARD_ENV

    edge_env = {"EDGE__DATABASE__URL": "postgresql://x/y",
                "EDGE__PEER__ROUTES": '[{name = "internet", url = "https://127.0.0.1:1"}]'}
    _edge(tmp_path, EDGE_EXAMPLE, edge_env)
    callback_env = {
        **LOAD_GUARD_ENV, **BENCH_GUARD_ENV, **SWEEP_ENV,
        "CALLBACK__DATABASE__URL": "postgresql://x/y",
        "CALLBACK__DATABASE__MIN_CONNECTIONS": "2", "CALLBACK__DATABASE__MAX_CONNECTIONS": "2",
        "CALLBACK__ARI__URL": "http://127.0.0.1:9", "CALLBACK__RATES__ENABLED": "false",
        "CALLBACK__PEER__ROUTES": '[{name = "internet", url = "http://127.0.0.1:9"}]',
        "CALLBACK__HTTP__PORT": "1", "CALLBACK__HTTP__REUSE_PORT": "true",
        "CALLBACK__GUARD__MAX_CALL_S": "60", "CALLBACK__GUARD__CAPS__GLOBAL__SPEND_DAILY": '"0.01"',
        "CALLBACK__GUARD__ALERTS__WEBHOOK_URL": "http://127.0.0.1:9/hook",
        "CALLBACK__GUARD__VELOCITY__UNKNOWN__MIN_GAP_S": "1",
        "CALLBACK__GUARD__VELOCITY__UNKNOWN__PER_HOUR": "10",
        "CALLBACK__GUARD__VELOCITY__UNKNOWN__PER_DAY": "10",
        "CALLBACK__GUARD__VELOCITY__LOCK_AFTER_UNCONFIRMED": "10"}
    _callback(tmp_path, CALLBACK_EXAMPLE, callback_env)


def test_the_demo_stack_and_fault_sites_write_configs_that_parse(tmp_path: Path) -> None:
    from demo.stack import MerchantOptions, Stack
    from tests.faults.sites import Sites

    bento = MerchantOptions(id="bento", name="Bento Lines", number="0120987654",
                            announce_mode="answer")
    stack = Stack(tmp_path, merchants=(MerchantOptions(pre_callback_delay_s="0"), bento))
    stack.pki_dir = tmp_path / "pki"
    stack._write_configs()
    assert len(EdgeSettings.load(tmp_path / "edge.toml", {}).merchants) == 2
    assert len(CallbackSettings.load(tmp_path / "callback.toml", {}).merchants) == 2

    sites = Sites(tmp_path, callback_servers=2,
                  peer_policy="[peer.health]\ninterval_s = 1\ntimeout_s = 1\nfall = 2\n",
                  edge_routes=(("internet", "https://10.202.1.2:1"),
                               ("leased", "https://10.202.2.2:1")))
    sites.pki_dir = tmp_path / "pki"
    sites._write_site_configs()
    assert len(EdgeSettings.load(tmp_path / "edge.toml", {}).peer.routes) == 2
    for name in sites.callback_names:
        CallbackSettings.load(tmp_path / f"{name}.toml", {})
    sites = Sites(tmp_path, callback_servers=1, edge_servers=2)
    sites.pki_dir = tmp_path / "pki"
    sites._write_site_configs()
    assert CallbackSettings.load(tmp_path / "callback.toml", {}).callback.worker.edge_trunks \
        == ("edge-trunk", "edge-trunk2")


def test_a_table_an_override_makes_is_named_by_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^environment EDGE__HTTP__EXTRA__X: http.extra: "
                                          r"unknown section"):
        _edge(tmp_path, EDGE_EXAMPLE, {"EDGE__HTTP__EXTRA__X": "1"})


def test_a_key_in_an_inline_table_has_the_tables_line(tmp_path: Path) -> None:
    text = EDGE_EXAMPLE.replace("[[peer.routes]]", '[peer.policy]\n'
                                'cdr = {mode = "both", routes = ["internet"]}\n\n[[peer.routes]]')
    with pytest.raises(ConfigError, match=rf"edge.toml:{_line(text, 'cdr = ')}: "
                                          r"peer.policy.cdr.routes: unknown key"):
        _edge(tmp_path, text)


def test_merchant_caps_are_configured_per_merchant_over_a_default(tmp_path: Path) -> None:
    text = CALLBACK_EXAMPLE.replace(
        "# [guard.caps.merchant_default]", "[guard.caps.merchant_default]").replace(
        "# channels = 20\n# [[guard.caps.merchants]]\n# merchant = \"acme\"\n# channels = 10",
        "channels = 20\n[[guard.caps.merchants]]\nmerchant = \"acme\"\nchannels = 10")
    assert text != CALLBACK_EXAMPLE
    caps = _callback(tmp_path, text).guard.caps
    assert caps.limits("merchant:acme").channels == 10
    assert caps.limits("merchant:acme").cps is None         # the default's (none)
    assert caps.limits("merchant:bento").channels == 20
    assert caps.limits("trunk:acme").channels == 30         # a trunk is not a merchant
    bad = text.replace('merchant = "acme"', 'merchant = "Acme Inc"')
    with pytest.raises(ConfigError, match=r"guard.caps.merchants\[0\].merchant"):
        _callback(tmp_path, bad)


@pytest.mark.parametrize(("value", "message"), [
    ("-1", "is below 0"), ("31", "is above 30"), ('"soon"', "not a number")])
def test_the_cps_wait_bound_is_checked_naming_its_key(tmp_path: Path, value: str,
                                                      message: str) -> None:
    assert _callback(tmp_path, CALLBACK_EXAMPLE).guard.caps.cps_max_wait_s == 3.0
    text = CALLBACK_EXAMPLE.replace("cps_max_wait_s = 3 ", f"cps_max_wait_s = {value} ")
    assert text != CALLBACK_EXAMPLE
    with pytest.raises(ConfigError, match=rf"guard.caps.cps_max_wait_s.*{message}"):
        _callback(tmp_path, text)
    text = CALLBACK_EXAMPLE.replace("cps_max_wait_s = 3 ", "cps_max_wait_s = 0.5 ")
    assert _callback(tmp_path, text).guard.caps.cps_max_wait_s == 0.5
    text = CALLBACK_EXAMPLE.replace("cps_max_wait_s = 3 ", "cps_max_wait = 3 ")
    with pytest.raises(ConfigError, match=r"guard.caps.cps_max_wait: unknown key \(did you "
                                          r"mean cps_max_wait_s\?\)"):
        _callback(tmp_path, text)


def test_a_merchants_max_cost_per_minute_is_money(tmp_path: Path) -> None:
    text = EDGE_EXAMPLE.replace('announce_mode = "early_media"',
                                'announce_mode = "early_media"\nmax_cost_per_minute = 20.5')
    (merchant, *_) = _edge(tmp_path, text).merchants
    assert merchant.max_cost_per_minute is not None
    assert (merchant.max_cost_per_minute.amount, merchant.max_cost_per_minute.currency) == (
        Decimal("20.5"), "JPY")
    text = CALLBACK_EXAMPLE.replace(
        'announce_mode = "early_media"',
        'announce_mode = "early_media"\nmax_cost_per_minute = "0.14"\nmax_cost_currency = "USD"')
    (merchant, *_) = _callback(tmp_path, text).merchants
    assert str(merchant.max_cost_per_minute) == str(Money.of("0.14", "USD"))
    assert _edge(tmp_path, EDGE_EXAMPLE).merchants[0].max_cost_per_minute is None


@pytest.mark.parametrize(("line", "message"), [
    ("max_cost_per_minute = 0", "merchants[0].max_cost_per_minute: expected an amount above 0"),
    ('max_cost_per_minute = "nan"', "merchants[0].max_cost_per_minute: expected an amount"),
    ('max_cost_per_minute = "lots"', "merchants[0].max_cost_per_minute: not a number"),
    ('max_cost_per_minute = 20\nmax_cost_currency = "YEN"',
     "merchants[0].max_cost_currency: unknown currency 'YEN'"),
])
def test_a_bad_max_cost_names_file_line_and_key(tmp_path: Path, line: str,
                                                message: str) -> None:
    text = EDGE_EXAMPLE.replace('announce_mode = "early_media"',
                                'announce_mode = "early_media"\n' + line)
    with pytest.raises(ConfigError, match=rf"edge.toml:\d+: {re.escape(message)}"):
        _edge(tmp_path, text)


def test_a_merchants_top_up_url_is_https(tmp_path: Path) -> None:
    text = CALLBACK_EXAMPLE.replace(
        'announce_mode = "early_media"',
        'announce_mode = "early_media"\ntopup_url = "https://acme.example.jp/charge"')
    assert _callback(tmp_path, text).merchants[0].topup_url == "https://acme.example.jp/charge"
    assert _callback(tmp_path, CALLBACK_EXAMPLE).merchants[0].topup_url is None
    text = CALLBACK_EXAMPLE.replace(
        'announce_mode = "early_media"',
        'announce_mode = "early_media"\ntopup_url = "http://acme.example.jp/charge"')
    with pytest.raises(ConfigError, match=r"callback.toml:\d+: merchants\[0\].topup_url: "
                                          r"expected an https:// URL"):
        _callback(tmp_path, text)


def test_the_edge_trunks_are_the_operator_s_and_a_sip_advisor_s_routes_in_order(
        tmp_path: Path) -> None:
    worker = _callback(tmp_path, CALLBACK_EXAMPLE).callback.worker
    assert worker.edge_trunks == ("edge-trunk",)
    assert edge_routes(worker.operator_endpoint.replace("{operator}", "op"),
                       worker.edge_trunks) == (Route(EDGE_TRUNK, "PJSIP/op@edge-trunk"),)
    text = CALLBACK_EXAMPLE.replace('edge_trunks = ["edge-trunk"]',
                                    'edge_trunks = ["edge-trunk", "edge-trunk2"]')
    worker = _callback(tmp_path, text).callback.worker
    assert worker.edge_trunks == ("edge-trunk", "edge-trunk2")
    assert [r.endpoint for r in edge_routes(worker.operator_endpoint, worker.edge_trunks)] \
        == ["PJSIP/{operator}@edge-trunk", "PJSIP/{operator}@edge-trunk2"]


@pytest.mark.parametrize(("old", "new", "message"), [
    ('edge_trunks = ["edge-trunk"]', "edge_trunks = []", "callback.edge_trunks: expected "
     "distinct endpoint names"),
    ('edge_trunks = ["edge-trunk"]', 'edge_trunks = ["edge-trunk", "edge-trunk"]',
     "callback.edge_trunks: expected distinct endpoint names"),
    ('edge_trunks = ["edge-trunk"]', 'edge_trunks = ["edge trunk"]',
     "callback.edge_trunks: expected distinct endpoint names"),
    ('edge_trunks = ["edge-trunk"]', 'edge_trunks = "edge-trunk"',
     "callback.edge_trunks: expected an array of strings"),
    ('edge_trunks = ["edge-trunk"]', 'edge_trunk = ["edge-trunk"]',
     r"callback.edge_trunk: unknown key (did you mean edge_trunks?)"),
])
def test_bad_edge_trunks_name_file_line_and_key(tmp_path: Path, old: str, new: str,
                                                message: str) -> None:
    text = CALLBACK_EXAMPLE.replace(old, new)
    assert text != CALLBACK_EXAMPLE
    with pytest.raises(ConfigError, match=rf"callback.toml:\d+: {re.escape(message)}"):
        _callback(tmp_path, text)


def test_an_operator_endpoint_of_one_trunk_is_refused_with_two(tmp_path: Path) -> None:
    one = CALLBACK_EXAMPLE.replace('operator_endpoint = "PJSIP/{operator}@{trunk}"',
                                   'operator_endpoint = "PJSIP/{operator}@edge-trunk"')
    assert _callback(tmp_path, one).callback.worker.operator_endpoint == \
        "PJSIP/{operator}@edge-trunk"
    text = one.replace('edge_trunks = ["edge-trunk"]', 'edge_trunks = ["edge-trunk", "b"]')
    with pytest.raises(ConfigError, match=r"callback.toml:\d+: callback.operator_endpoint: "
                                          r"needs \{trunk\}"):
        _callback(tmp_path, text)
