"""``check`` verifies what ``serve`` will open, and both refuse a bad config the same way:
one line per problem naming the config file, line and key and the file's path, exit
status 2, no traceback. ``--log-level`` takes only the logging levels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from callback_server.__main__ import main as callback_main
from callback_server.ivr_flow import FLOWS_DIR
from edge_server.__main__ import main as edge_main
from ivr_platform.cli import main as ivr_main
from tests.integration.test_ivr_audio import tone

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, pki: Path, site: str, *replacements: tuple[str, str]) -> Path:
    text = (REPO / f"deploy/{site}.example.toml").read_text().replace("../var/pki", str(pki))
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / f"{site}.toml"
    path.write_text(text)
    return path


def _line(path: Path, start: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1)
                if line.startswith(start))


def _check(site: str, config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    main = edge_main if site == "edge" else callback_main
    code = main(["check", "--config", str(config)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("site", ["edge", "callback"])
def test_check_passes_a_config_whose_files_load(site: str, pki_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert _check(site, _config(tmp_path, pki_dir, site), capsys) == (0, "")


def test_check_names_every_missing_file_with_its_key_and_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, tmp_path / "no-pki", "edge")
    code, err = _check("edge", config, capsys)
    assert code == 2
    missing = tmp_path / "no-pki"
    assert err.splitlines() == [
        f"config error: {config}:{_line(config, 'ca = ')}: tls.ca: {missing}/ca.pem: "
        "no such file",
        f"config error: {config}:{_line(config, 'cert = ')}: tls.cert: {missing}/edge.pem: "
        "no such file",
        f"config error: {config}:{_line(config, 'key = ')}: tls.key: {missing}/edge.key: "
        "no such file",
        f"config error: {config}:{_line(config, 'keys = ')}: signing.keys[0]: "
        f"{missing}/edge-sign-1.key: no such file",
        f"config error: {config}:{_line(config, 'callback-sign-1 = ')}: "
        f"signing.trusted.callback-sign-1: {missing}/callback-sign-1.pub: no such file"]


@pytest.mark.parametrize(("old", "new", "key", "problem"), [
    ("/edge.pem", "/edge-sign-1.pub", "tls.cert", "edge-sign-1.pub: not a PEM certificate"),
    ("/ca.pem", "/edge.key", "tls.ca", "edge.key: not PEM CA certificates"),
    ('key = "PKI/edge.key"', 'key = "PKI/callback.key"', "tls.key",
     "callback.key is not the key of tls.cert"),
    ('key = "PKI/edge.key"', 'key = "PKI/edge-sign-1.pub"', "tls.key",
     "edge-sign-1.pub: not a PEM private key"),
    ('keys = ["PKI/edge-sign-1.key"]', 'keys = ["PKI/edge.key"]', r"signing.keys[0]",
     "edge.key: not an Ed25519 private key"),
    ('callback-sign-1 = "PKI/callback-sign-1.pub"', 'callback-sign-1 = "PKI/ca.pem"',
     "signing.trusted.callback-sign-1", "ca.pem: not an Ed25519 public key"),
])
def test_check_loads_each_file_as_what_serve_uses_it_for(
        old: str, new: str, key: str, problem: str, pki_dir: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, pki_dir, "edge", (old.replace("PKI", str(pki_dir)),
                                                 new.replace("PKI", str(pki_dir))))
    code, err = _check("edge", config, capsys)
    assert code == 2
    line = next(i for i, text in enumerate(config.read_text().splitlines(), 1)
                if new.replace("PKI", str(pki_dir)) in text)
    assert err.startswith(f"config error: {config}:{line}: "
                          f"{key}: {pki_dir}/{problem}"), err
    assert len(err.splitlines()) == 1


def test_check_refuses_a_flow_whose_prompts_are_not_there(
        pki_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "order.toml").write_text((FLOWS_DIR / "order.toml").read_text().replace(
        "sound:cbgw/goodbye", "sound:cbgw/farewell"))
    config = _config(tmp_path, pki_dir, "callback", (
        "# flows_dir = ", f'flows_dir = "{flows}"\n# '))
    code, err = _check("callback", config, capsys)
    assert code == 2
    assert err == (f"config error: {config}:{_line(config, 'ivr_flow = ')}: "
                   f"merchants[0].ivr_flow: flow 'order' plays prompts in 'ja' not in the "
                   f"system prompts ([callback] prompts_dir): farewell\n")
    prompts = tmp_path / "prompts"
    (prompts / "en").mkdir(parents=True)
    (prompts / "en" / "farewell.wav").write_bytes(b"")
    config.write_text(config.read_text().replace("# prompts_dir = ", f'prompts_dir = "{prompts}"'
                                                 "\n# "))
    code, err = _check("callback", config, capsys)   # the merchant speaks Japanese (default)
    assert code == 2 and err.endswith(
        f"flow 'order' plays prompts in 'ja' not in the system prompts or {prompts}/ja "
        "([callback] prompts_dir): farewell\n"), err
    (prompts / "ja").mkdir()
    (prompts / "ja" / "farewell.wav").write_bytes(b"")
    assert _check("callback", config, capsys) == (0, "")


@pytest.mark.parametrize("site", ["edge", "callback"])
def test_check_names_a_bad_business_hours_key_with_its_line(
        site: str, pki_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, pki_dir, site, ('# [merchants.hours]\n# monday = ',
                                               '[merchants.hours]\nmonday = '),
                     ("# saturday = ", "saturdy = "))
    code, err = _check(site, config, capsys)
    assert code == 2
    assert err.splitlines() == [
        f"config error: {config}:{_line(config, 'saturdy = ')}: merchants[0].hours.saturdy: "
        "unknown key (did you mean saturday?)"]


def test_check_refuses_a_closed_messages_directory_it_cannot_write(
        pki_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = _config(tmp_path, pki_dir, "edge",
                     ("# prompts_dir = ", f'prompts_dir = "{blocker}/closed"\n# '))
    code, err = _check("edge", config, capsys)
    assert code == 2
    assert err.splitlines() == [
        f"config error: {config}:{_line(config, 'prompts_dir = ')}: edge.hours.prompts_dir: "
        f"{blocker}/closed: cannot write in {blocker}"]


def test_check_refuses_a_flow_whose_guidance_is_not_the_merchants_or_not_uploaded(
        pki_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    order = (FLOWS_DIR / "order.toml").read_text()
    guidance = tmp_path / "guidance"
    config = _config(tmp_path, pki_dir, "callback", (
        "# flows_dir = ", f'flows_dir = "{flows}"\n# '), (
        'guidance_dir = "/var/cache/cbgw/asterisk-sid/var/lib/asterisk-callback/data/sounds/'
        'cbgw-guidance"', f'guidance_dir = "{guidance}"'))
    where = f"config error: {config}:{_line(config, 'ivr_flow = ')}: merchants[0].ivr_flow: "
    (flows / "order.toml").write_text(order.replace(
        '"sound:cbgw/goodbye"', '"sound:cbgw-guidance/bento/goodbye"'))
    assert _check("callback", config, capsys) == (2, (
        f"{where}flow 'order' plays sound:cbgw-guidance/bento/goodbye, which is merchant "
        "'bento''s guidance, not 'acme''s\n"))
    (flows / "order.toml").write_text(order.replace(
        '"sound:cbgw/goodbye"', '"sound:cbgw-guidance/acme/goodbye"'))
    assert _check("callback", config, capsys) == (2, (
        f"{where}flow 'order' plays sound:cbgw-guidance/acme/goodbye, which is not uploaded "
        f"(no {guidance}/acme/goodbye.wav)\n"))
    source = tone(tmp_path / "goodbye.mp3", 1.0)
    # an English file alone plays for a Japanese merchant too (Asterisk falls back to it)
    assert ivr_main(["guidance", "add", "--dir", str(guidance), "--merchant", "acme",
                     "--language", "en", "goodbye", str(source)]) == 0
    assert (tmp_path / "en" / "guidance" / "acme" / "goodbye.wav").is_file()
    capsys.readouterr()
    assert _check("callback", config, capsys) == (0, "")
    assert ivr_main(["guidance", "add", "--dir", str(guidance), "--merchant", "acme",
                     "goodbye", str(source)]) == 0
    capsys.readouterr()
    assert _check("callback", config, capsys) == (0, "")


def test_check_refuses_media_directories_it_cannot_write_and_a_short_link_secret(
        pki_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "links.secret"
    secret.write_bytes(b"short")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = _config(tmp_path, pki_dir, "callback", (
        "# link_secret_file = ", f'link_secret_file = "{secret}"  # '), (
        'recordings_dir = "../var/recordings"', f'recordings_dir = "{blocker}/recordings"'))
    assert _check("callback", config, capsys) == (2, (
        f"config error: {config}:{_line(config, 'recordings_dir = ')}: media.recordings_dir: "
        f"{blocker}/recordings: cannot write in {blocker}\n"
        f"config error: {config}:{_line(config, 'link_secret_file = ')}: "
        f"media.link_secret_file: {secret} holds 5 bytes; at least 32 are needed\n"))


def test_check_refuses_another_asterisks_guidance_dir_that_is_not_the_librarys(
        pki_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """callback2 plays what the site uploads and renders only through the same directory:
    a bind mount, or a relative link (which resolves inside a shared chroot too)."""
    ours, theirs = (tmp_path / site / "sounds" / "cbgw-guidance" for site in ("a", "b"))
    ours.mkdir(parents=True)
    theirs.mkdir(parents=True)
    config = _config(tmp_path, pki_dir, "callback", (
        'guidance_dir = "/var/cache/cbgw/asterisk-sid/var/lib/asterisk-callback/data/sounds/'
        'cbgw-guidance"', f'guidance_dir = "{ours}"'), (
        "# asterisk_guidance_dirs = [", f'asterisk_guidance_dirs = ["{theirs}"]  # ['))
    where = (f"config error: {config}:{_line(config, 'asterisk_guidance_dirs = ')}: "
             "media.asterisk_guidance_dirs[0]: ")
    advice = (": bind-mount it there (or link it, relative, inside a shared chroot), so "
              "that Asterisk plays what the site stores\n")
    assert _check("callback", config, capsys) == (2, f"{where}{theirs} is not {ours}{advice}")
    theirs.rmdir()
    theirs.symlink_to("../../a/sounds/cbgw-guidance")
    assert _check("callback", config, capsys) == (0, "")
    # per-language guidance uploaded: its directory must be theirs too
    (tmp_path / "a" / "sounds" / "en" / "cbgw-guidance").mkdir(parents=True)
    english = tmp_path / "b" / "sounds" / "en" / "cbgw-guidance"
    assert _check("callback", config, capsys) == (2, (
        f"{where}{english} is not {tmp_path}/a/sounds/en/cbgw-guidance{advice}"))
    english.parent.mkdir()
    english.symlink_to("../../../a/sounds/en/cbgw-guidance")
    assert _check("callback", config, capsys) == (0, "")
    config.write_text(config.read_text().replace(f'guidance_dir = "{ours}"',
                                                 f'# guidance_dir = "{ours}"'))
    assert _check("callback", config, capsys) == (2, (
        f"{where}needs [media] guidance_dir (the one it must be)\n"))


def test_check_refuses_an_invalid_flow_with_the_merchant_key(
        pki_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, pki_dir, "callback", ('ivr_flow = "order"', 'ivr_flow = "nope"'))
    code, err = _check("callback", config, capsys)
    assert code == 2
    assert f"{config}:{_line(config, 'ivr_flow = ')}: merchants[0].ivr_flow: " in err
    assert "nope.toml: cannot read flow" in err


@pytest.mark.parametrize("site", ["edge", "callback"])
def test_serve_refuses_a_missing_certificate_before_starting_without_a_traceback(
        site: str, pki_dir: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, pki_dir, site, (f"{pki_dir}/{site}.pem", f"{tmp_path}/gone.pem"))
    proc = subprocess.run([sys.executable, "-m", f"{site}_server", "serve", "--config",
                           str(config)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"config error: {config}:{_line(config, 'cert = ')}: tls.cert: "
                           f"{tmp_path}/gone.pem: no such file\n")


def test_an_unknown_log_level_is_a_usage_error_listing_the_levels(
        pki_dir: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, pki_dir, "edge")
    for args, env in (["--log-level", "FOO"], {}), ([], {"LOG_LEVEL": "loud"}):
        proc = subprocess.run([sys.executable, "-m", "edge_server", "serve", "--config",
                               str(config), *args], cwd=REPO, capture_output=True, text=True,
                              timeout=120, env={"PATH": "/usr/bin:/bin", **env})
        assert proc.returncode == 2
        assert "usage:" in proc.stderr and "Traceback" not in proc.stderr
        assert "DEBUG, INFO, WARNING, ERROR, CRITICAL" in proc.stderr.replace("'", ""), \
            proc.stderr


def test_keys_with_a_bad_directory_or_file_is_one_line_naming_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    assert edge_main(["keys", "init", "--dir", str(afile)]) == 1
    assert capsys.readouterr().err == f"error: {afile}: File exists\n"
    assert edge_main(["keys", "rotate", "--dir", str(tmp_path / "none")]) == 1
    assert capsys.readouterr().err == (f"error: {tmp_path}/none/edge-sign-1.key: "
                                       "No such file or directory\n")
    (tmp_path / "ca.pem").write_text("junk")
    (tmp_path / "ca.key").write_text("junk")
    assert edge_main(["keys", "init", "--dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path}/ca.pem: not a PEM certificate\n"


def test_the_rates_cli_with_an_unreachable_database_is_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "routing_rates", "--database-url",
                           "postgresql://cbgw@127.0.0.1:9/nowhere", "quote", "09012345678"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: database (ConnectionRefusedError): ")
    assert len(proc.stderr.splitlines()) == 1, proc.stderr


def _sized(*, rate: str, hold: str, asterisks: str) -> tuple[tuple[str, str], ...]:
    """Replacements that turn on the example's [capacity] section."""
    return (("# [capacity]", "[capacity]"),
            ("# calls_per_second = 40", f"calls_per_second = {rate}"),
            ("# hold_s = ", f"hold_s = {hold}\n# "),
            ("# channels_per_call = ", "channels_per_call = "),
            ("# asterisk_config = ", f"asterisk_config = {asterisks}\n# "))


ASTERISKS = REPO / "deploy/asterisk"


def test_check_refuses_asterisks_that_cannot_carry_the_rate(
        pki_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """80 calls/s held 8 s on one edge Asterisk is 800 channels (x1.25): its maxcalls and
    its RTP range (1,000 ports, 500 sessions) carry 500; over two Asterisks, 400 each."""
    one = _config(tmp_path, pki_dir, "edge",
                  *_sized(rate="80", hold="4", asterisks=f'["{ASTERISKS}/edge"]'))
    code, err = _check("edge", one, capsys)
    want = ("80 calls/s over 1 Asterisk(s), 4 s each with 1 channel(s), need 400 channels "
            "on each (x1.25 headroom)")
    assert (code, err) == (0, ""), err
    one.write_text(one.read_text().replace("hold_s = 4", "hold_s = 8"))
    code, err = _check("edge", one, capsys)
    where = f"config error: {one}:{_line(one, 'calls_per_second = ')}: capacity.calls_per_second"
    want = want.replace("4 s", "8 s").replace("need 400", "need 800")
    asterisk_conf = ASTERISKS / "edge/asterisk.conf"
    rtp_conf = ASTERISKS / "edge/rtp.conf"
    assert code == 2
    assert err.splitlines() == [
        f"{where}: {want}: {asterisk_conf}:{_line(asterisk_conf, 'maxcalls')} maxcalls = 500",
        f"{where}: {want}: {rtp_conf}:{_line(rtp_conf, 'rtpstart')},{_line(rtp_conf, 'rtpend')}"
        " rtpstart..rtpend 20000..20999 is 500 RTP sessions (2 ports each)"]
    two = _config(tmp_path, pki_dir, "edge", *_sized(
        rate="80", hold="8", asterisks=f'["{ASTERISKS}/edge", "{ASTERISKS}/edge2"]'))
    assert _check("edge", two, capsys) == (0, "")


def test_check_names_an_asterisk_config_it_cannot_read_or_parse(
        pki_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "asterisk-broken"
    broken.mkdir()
    (broken / "asterisk.conf").write_text("[options]\nverbose = 3\nmaxcalls = lots ; a typo\n")
    (broken / "rtp.conf").write_text("[general]\nrtpstart = 20000\n")
    config = _config(tmp_path, pki_dir, "callback", *_sized(
        rate="10", hold="8", asterisks=f'["{tmp_path}/missing", "{broken}"]'))
    code, err = _check("callback", config, capsys)
    at = _line(config, "asterisk_config = ")
    assert code == 2
    assert err.splitlines() == [
        f"config error: {config}:{at}: capacity.asterisk_config[0]: "
        f"{tmp_path}/missing/asterisk.conf: no such file",
        f"config error: {config}:{at}: capacity.asterisk_config[1]: "
        f"{broken}/asterisk.conf:3: maxcalls: expected an integer, got 'lots'"]


def test_check_refuses_a_site_channel_cap_the_asterisks_cannot_reach(
        pki_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The callback site's two Asterisks carry 1,000 and 500 channels: a site cap of 1,600
    customer legs would never be reached (Asterisk refuses first); 1,500 is."""
    sized = _sized(rate="40", hold="8",
                   asterisks=f'["{ASTERISKS}/callback", "{ASTERISKS}/callback2"]')
    config = _config(tmp_path, pki_dir, "callback", *sized,
                     ("[guard.caps.global]              # 0 = no cap\nchannels = 50",
                      "[guard.caps.global]\nchannels = 1600"))
    code, err = _check("callback", config, capsys)
    assert code == 2
    assert err.splitlines() == [
        f"config error: {config}:{_line(config, 'channels = 1600')}: "
        "guard.caps.global.channels: 1600 calls with 1 channel(s) each is 1600 channels, "
        "more than the 1500 the Asterisks in capacity.asterisk_config carry"]
    config.write_text(config.read_text().replace("channels = 1600", "channels = 1500"))
    assert _check("callback", config, capsys) == (0, "")


VOICEMAIL = """\
name = "voicemail"
start = "message"

[nodes.message]
type = "record"
prompt = ["sound:cbgw/farewell"]
field = "message"
next = "text"

[nodes.text]
type = "sms"
to = "caller"
text = "message {message} received"
next = "done"

[nodes.done]
type = "return"
"""


def test_check_refuses_a_sub_flows_missing_prompt_and_verbs_the_site_cannot_run(
        pki_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "order.toml").write_text((FLOWS_DIR / "order.toml").read_text().replace(
        '"0" = "operator" }', '"0" = "operator", "9" = "leave" }') + """
[nodes.leave]
type = "subflow"
flow = "voicemail"
next = "goodbye"
""")
    (flows / "voicemail.toml").write_text(VOICEMAIL)
    config = _config(tmp_path, pki_dir, "callback", (
        "# flows_dir = ", f'flows_dir = "{flows}"\n# '))
    code, err = _check("callback", config, capsys)
    assert code == 2
    assert "flow 'order' plays prompts in 'ja' not in the system prompts" in err
    assert ": farewell\n" in err
    assert ("merchants[0].ivr_flow: flow 'order' records (a record node), but [media] "
            "recordings_dir and asterisk_recordings_dir are not both set") in err
    assert "flow 'order' sends SMS (an sms node), but [sms] is not set" in err
    (flows / "voicemail.toml").write_text(VOICEMAIL.replace("sound:cbgw/farewell",
                                                            "sound:cbgw/goodbye"))
    spool = tmp_path / "spool"
    config.write_text(config.read_text().replace(
        "# asterisk_recordings_dir = ", f'asterisk_recordings_dir = "{spool}"\n# ') + f"""
[sms]
account_sid = "AC{'0' * 32}"
auth_token = "t0ken"
sender = "+815011112222"
""")
    assert _check("callback", config, capsys) == (0, "")
