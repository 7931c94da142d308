"""A merchant's presence numbers in the config: parsed strictly, never a number that is
already in use, and handed to the edge as presence lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_server.config import EdgeSettings
from edge_server.presence_flow import PresenceLine, Wanted
from shared.config import ConfigError
from shared.language import Language
from shared.phone import E164

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = (REPO / "deploy/edge.example.toml").read_text()
ONLINE = '# presence_online_number = "0120555001"'
OFFLINE = '# presence_offline_number = "0120555002"'


def config(tmp_path: Path, online: str | None = '"0120555001"',
           offline: str | None = '"0120555002"', extra: str = "") -> tuple[Path, str]:
    text = EXAMPLE.replace(ONLINE, "" if online is None else f"presence_online_number = {online}")
    text = text.replace(OFFLINE, "" if offline is None else
                        f"presence_offline_number = {offline}" + extra)
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return path, text


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_the_example_documents_both_keys() -> None:
    assert ONLINE in EXAMPLE and OFFLINE in EXAMPLE


def test_presence_numbers_become_the_edge_s_presence_lines(tmp_path: Path) -> None:
    path, _ = config(tmp_path)
    settings = EdgeSettings.load(path, {})
    assert settings.presence_lines() == {
        E164.parse("+81120555001"): PresenceLine("acme", Wanted.ONLINE, Language.JAPANESE),
        E164.parse("+81120555002"): PresenceLine("acme", Wanted.OFFLINE, Language.JAPANESE)}
    assert not set(settings.presence_lines()) & set(settings.merchant_settings())
    assert settings.edge.presence.ask_s == 4.0
    assert settings.edge.presence.announce_guard_s == settings.edge.timings.early_media_guard_s


def test_they_are_optional_and_each_alone_works(tmp_path: Path) -> None:
    path, _ = config(tmp_path, online=None, offline=None)
    assert EdgeSettings.load(path, {}).presence_lines() == {}
    path, _ = config(tmp_path, offline=None)
    assert list(EdgeSettings.load(path, {}).presence_lines().values()) == [
        PresenceLine("acme", Wanted.ONLINE)]


def test_a_presence_number_that_is_a_toll_free_number_is_refused(tmp_path: Path) -> None:
    path, text = config(tmp_path, online='"0120123456"')
    with pytest.raises(ConfigError) as err:
        EdgeSettings.load(path, {})
    assert str(err.value) == (
        f"{path}:{line_of(text, 'presence_online_number')}: "
        "merchants[0].presence_online_number: +81120123456 is already a number of "
        "merchant 'acme'")


def test_one_number_for_both_is_refused(tmp_path: Path) -> None:
    path, _ = config(tmp_path, offline='"0120555001"')
    with pytest.raises(ConfigError, match="merchants\\[0\\].presence_offline_number: "
                       "\\+81120555001 is already merchant 'acme''s presence_online_number"):
        EdgeSettings.load(path, {})


def test_another_merchant_s_number_is_refused(tmp_path: Path) -> None:
    bento = ('\n[[merchants]]\nid = "bento"\nname = "Bento"\nnumbers = ["0120987654"]\n'
             'presence_offline_number = "{}"\n')
    path, text = config(tmp_path)
    path.write_text(text + bento.format("0120123456"))
    with pytest.raises(ConfigError, match="merchants\\[1\\].presence_offline_number: "
                       "\\+81120123456 is already a number of merchant 'acme'"):
        EdgeSettings.load(path, {})
    path.write_text(text + bento.format("0120555001"))
    with pytest.raises(ConfigError, match="merchants\\[1\\].presence_offline_number: "
                       "\\+81120555001 is already merchant 'acme''s presence_online_number"):
        EdgeSettings.load(path, {})
    path.write_text(text + bento.format("0120987655"))
    assert len(EdgeSettings.load(path, {}).presence_lines()) == 3


def test_a_bad_number_or_a_typo_names_the_key(tmp_path: Path) -> None:
    path, _ = config(tmp_path, online='"12"')
    with pytest.raises(ConfigError, match="merchants\\[0\\].presence_online_number: "):
        EdgeSettings.load(path, {})
    path, text = config(tmp_path, online=None, extra='\npresence_online_numbr = "0120555001"')
    with pytest.raises(ConfigError) as err:
        EdgeSettings.load(path, {})
    assert str(err.value) == (
        f"{path}:{line_of(text, 'presence_online_numbr')}: "
        "merchants[0].presence_online_numbr: unknown key (did you mean "
        "presence_online_number?)")


def test_the_ask_time_is_a_positive_timing(tmp_path: Path) -> None:
    path, text = config(tmp_path)
    path.write_text(text.replace("presence_s = 4.0", "presence_s = 0"))
    with pytest.raises(ConfigError, match="edge.timings.presence_s"):
        EdgeSettings.load(path, {})
    path.write_text(text.replace("presence_s = 4.0", "presence_s = 2.5"))
    assert EdgeSettings.load(path, {}).edge.presence.ask_s == 2.5


def test_check_refuses_a_colliding_presence_number(tmp_path: Path) -> None:
    path, _ = config(tmp_path, online='"0120123456"')
    done = subprocess.run([sys.executable, "-m", "edge_server", "check", "--config",
                           str(path)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "merchants[0].presence_online_number: +81120123456 is already" in done.stderr
    assert "Traceback" not in done.stderr
