"""The anomaly brake decides on its count bounded at threshold + 1 (``guard_brake_count``,
migration 1030) exactly as on the full count, says "more than" its threshold, and can be
turned off (``[guard.brake] enabled = false``; unknown keys stay errors)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callback_server.config import CallbackSettings
from callback_server.guard import brake
from shared.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
CALLBACK_EXAMPLE = (REPO / "deploy/callback.example.toml").read_text()


@given(count=st.integers(0, 10_000), threshold=st.integers(0, 200),
       window_s=st.integers(10, 3600), known=st.booleans())
def test_the_bounded_count_decides_as_the_full_count(count: int, threshold: int,
                                                     window_s: int, known: bool) -> None:
    s = brake.BrakeSettings(threshold=threshold, window_s=window_s)
    capped = brake.bounded(count, s)
    assert capped <= s.limit == threshold + 1
    assert brake.engaged(capped, s) == brake.engaged(count, s) == (count > threshold)
    assert brake.check(known, capped, s) == brake.check(known, count, s)


def test_an_engaged_brake_says_more_than_its_threshold() -> None:
    s = brake.BrakeSettings(threshold=20, window_s=600)
    assert brake.check(False, 20, s) is None
    verdict = brake.check(False, 21, s)         # the bounded count: "at least 21"
    assert verdict is not None and verdict.reason == "brake_new_numbers"
    assert verdict.detail == "more than 20 new numbers unconfirmed in 600 s"


def test_a_brake_turned_off_never_engages() -> None:
    s = brake.BrakeSettings(threshold=0, enabled=False)
    assert not brake.engaged(10_000, s)
    assert brake.check(False, 10_000, s) is None


def test_the_brake_is_on_by_default_and_turned_off_by_config(tmp_path: Path) -> None:
    path = tmp_path / "callback.toml"
    path.write_text(CALLBACK_EXAMPLE)
    assert CallbackSettings.load(path, {}).guard.brake.enabled is True
    off = CallbackSettings.load(path, {"CALLBACK__GUARD__BRAKE__ENABLED": "false"})
    assert off.guard.brake.enabled is False and off.guard.brake.threshold == 20
    path.write_text(CALLBACK_EXAMPLE.replace("enabled = true                   # false: the brake",
                                             "enabled = false # the brake", 1))
    assert CallbackSettings.load(path, {}).guard.brake.enabled is False


def test_an_unknown_brake_key_is_still_an_error(tmp_path: Path) -> None:
    path = tmp_path / "callback.toml"
    path.write_text(CALLBACK_EXAMPLE.replace("[guard.brake]", "[guard.brake]\nenable = false",
                                             1))
    with pytest.raises(ConfigError, match=r"guard\.brake\.enable: unknown key"):
        CallbackSettings.load(path, {})
