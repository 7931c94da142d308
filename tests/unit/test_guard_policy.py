"""The guard's pure parts: destination policy, velocity, lockout, brake, caps."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from callback_server.guard import brake, caps, velocity
from callback_server.guard.reasons import Refusal, Verdict
from shared.destination import Listing, Policy, PolicySettings, classify_raw
from shared.phone import E164, InvalidNumber, NumberType

POLICY = Policy()
T0 = datetime(2026, 11, 22, 1, 0, tzinfo=UTC)


def reason(number: str, listing: Listing | None = None, policy: Policy = POLICY) -> str | None:
    verdict = policy.evaluate(E164.parse(number), listing)
    return None if verdict is None else str(verdict.reason)


@pytest.mark.parametrize("number", ["+819012345678", "+818012345678", "+817012345678",
                                    "+816012345678", "+81312345678", "+81662345678"])
def test_default_allows_jp_mobile_and_geographic(number: str) -> None:
    assert reason(number) is None


@pytest.mark.parametrize(("number", "code"), [
    ("+81990123456", "destination_premium"),
    ("+81570123456", "destination_uan"),
    ("+81120123456", "destination_toll_free"),
    ("+818001234567", "destination_toll_free"),
    ("+812012345678", "destination_m2m"),
    ("+81180123456", "destination_service"),
    ("+815012345678", "destination_voip"),
    ("+447012345678", "destination_foreign"),
    ("+881612345678", "destination_foreign"),
    ("+442079460000", "destination_foreign"),
    ("+819012345", "destination_invalid"),
    ("+8190123456789", "destination_invalid"),
])
def test_default_refuses_with_a_reason_code(number: str, code: str) -> None:
    assert reason(number) == code


def test_block_list_wins_over_everything() -> None:
    assert reason("+819012345678", Listing(blocked=True, allowed=True)) == "number_blocked"


def test_allow_list_and_prefixes_widen_but_never_reach_premium() -> None:
    policy = Policy(PolicySettings(allow_prefixes=("8150", "44")))
    assert reason("+815012345678", policy=policy) is None
    assert reason("+442079460000", policy=policy) is None
    assert reason("+447012345678", policy=policy) == "destination_type_not_allowed"
    assert reason("+81990123456", Listing(allowed=True), policy) == "destination_premium"
    assert reason("+447012345678", Listing(allowed=True)) == "destination_type_not_allowed"


def test_operator_deny_prefix_and_enabled_types() -> None:
    policy = Policy(PolicySettings(deny_prefixes=("8190",),
                                   number_types=frozenset({NumberType.MOBILE,
                                                           NumberType.VOIP})))
    assert reason("+819012345678", policy=policy) == "destination_prefix_denied"
    assert reason("+815012345678", policy=policy) is None
    assert reason("+81312345678", policy=policy) == "destination_type_not_allowed"


@pytest.mark.parametrize(("raw", "code"), [
    ("anonymous", "destination_withheld"), ("", "destination_withheld"),
    ("Unavailable", "destination_withheld"),
    ("09012345678&PJSIP/x", "destination_malformed"),
    ("+819012345678;foo", "destination_malformed"),
    ("+81 90 1234 5678'", "destination_malformed"),
    ("sip:090@evil", "destination_malformed"),
    ("1849012345678", "destination_withheld"),
    ("12", "destination_invalid"),
])
def test_raw_callers_are_refusals_never_numbers(raw: str, code: str) -> None:
    verdict = classify_raw(raw)
    assert isinstance(verdict, Verdict) and verdict.reason == code


def test_raw_e164_is_a_number() -> None:
    assert classify_raw("+819012345678") == E164("819012345678")


@pytest.mark.parametrize("raw", ["+819012345678\n", "+81９012345678", "0901234567８",
                                 "09012345678"])
def test_unicode_digits_newlines_and_national_forms_are_malformed(raw: str) -> None:
    verdict = classify_raw(raw)
    assert isinstance(verdict, Verdict) and verdict.reason == "destination_malformed"


def test_non_ascii_digits_never_become_an_e164() -> None:
    with pytest.raises(InvalidNumber):             # refused before the policy sees it
        E164.parse("+81９012345678")


# --- velocity ------------------------------------------------------------------------------

S = velocity.VelocitySettings()


def hist(**kw: object) -> velocity.NumberHistory:
    return velocity.NumberHistory(**kw)  # type: ignore[arg-type]


def test_known_number_limits() -> None:
    ok = hist(known=True)
    assert velocity.check_intake(ok, T0, S) is None
    cases = {
        "velocity_concurrent": hist(known=True, active=1),
        "velocity_gap": hist(known=True, last_accepted_at=T0 - timedelta(seconds=119)),
        "velocity_hourly": hist(known=True, accepted_hour=3, accepted_day=3,
                                last_accepted_at=T0 - timedelta(seconds=600)),
        "velocity_daily": hist(known=True, accepted_hour=0, accepted_day=6),
        "number_locked": hist(known=True, locked_until=T0 + timedelta(seconds=1)),
    }
    for code, h in cases.items():
        verdict = velocity.check_intake(h, T0, S)
        assert verdict is not None and verdict.reason == code, code
    assert velocity.check_intake(hist(known=True, last_accepted_at=T0 - timedelta(seconds=120),
                                      accepted_hour=2, accepted_day=5), T0, S) is None


def test_unknown_numbers_are_stricter() -> None:
    h = dict(last_accepted_at=T0 - timedelta(seconds=200), accepted_hour=2, accepted_day=2)
    assert velocity.check_intake(hist(known=True, **h), T0, S) is None
    verdict = velocity.check_intake(hist(known=False, **h), T0, S)
    assert verdict is not None and verdict.reason == Refusal.VELOCITY_GAP


def test_two_unconfirmed_lock_for_a_day_five_block() -> None:
    action = velocity.after_unconfirmed(1, 1, False, T0, S)
    assert action == velocity.LockAction()
    action = velocity.after_unconfirmed(2, 2, False, T0, S)
    assert action.lock_until == T0 + timedelta(hours=24) and not action.block
    assert velocity.after_unconfirmed(3, 3, True, T0, S).lock_until is None
    assert velocity.after_unconfirmed(2, 5, False, T0, S).block


# --- brake and caps ------------------------------------------------------------------------

def test_brake_pauses_new_numbers_only_above_the_threshold() -> None:
    s = brake.BrakeSettings(threshold=20)
    assert brake.check(False, 20, s) is None
    verdict = brake.check(False, 21, s)
    assert verdict is not None and verdict.reason == "brake_new_numbers"
    assert brake.check(True, 1000, s) is None


def test_caps_reason_codes_and_order() -> None:
    limits = caps.CapLimits(channels=2, cps=1, spend_daily=Decimal("10"))
    assert caps.check("trunk:a", limits, caps.Usage(1, 0, Decimal("9.99"))) is None
    hit = caps.check("trunk:a", limits, caps.Usage(2, 0, Decimal(0)))
    assert hit is not None and hit[1].reason == "cap_trunk_channels"
    hit = caps.check("global", limits, caps.Usage(0, 1, Decimal(0)))
    assert hit is not None and hit[1].reason == "cap_global_cps"
    hit = caps.check("global", limits, caps.Usage(2, 1, Decimal("10")))
    assert hit is not None and hit == ("spend_daily", hit[1]) and hit[1].reason == \
        "cap_spend_daily"
    assert caps.crossed_spend("trunk:a", limits, Decimal("9"), Decimal("10.5")) is not None
    assert caps.crossed_spend("trunk:a", limits, Decimal("10.5"), Decimal("11")) is None


def test_every_reason_code_is_stable_snake_case() -> None:
    for r in Refusal:
        assert r.value == r.value.lower() and " " not in r.value


@pytest.mark.parametrize("module", [
    "callback_server/guard/velocity.py", "callback_server/guard/brake.py",
    "callback_server/guard/caps.py", "callback_server/guard/reasons.py",
    "shared/destination.py", "shared/refusals.py"])
def test_pure_guard_modules_import_no_io(module: str) -> None:
    path = Path(caps.__file__).parents[2] / module
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    assert [n for n in names if n.split(".")[0] in {"aiohttp", "asyncpg", "asyncio"}] == []


def test_a_cps_cap_paces_a_leg_up_to_the_bound_other_caps_refuse() -> None:
    paced = caps.CapSettings(cps_max_wait_s=3.0)
    assert paced.paces
    assert caps.pace(paced, "cps", 0.0, 0.4) == 0.4
    assert caps.pace(paced, "cps", 2.5, 0.5) == 0.5               # 3.0 s in all: still
    assert caps.pace(paced, "cps", 2.6, 0.5) is None              # past the bound: refused
    assert caps.pace(paced, "cps", 0.0, 0.0) == caps.MIN_PACE_S   # frees now: claim soon
    assert caps.pace(paced, "channels", 0.0, 0.4) is None
    assert caps.pace(paced, "spend_daily", 0.0, None) is None
    for off in (caps.CapSettings(cps_max_wait_s=0),
                caps.CapSettings(latch=frozenset({"spend_daily", "cps"}))):
        assert not off.paces and caps.pace(off, "cps", 0.0, 0.4) is None
    limits = caps.CapLimits(channels=2, cps=1)
    assert caps.check("global", limits, caps.Usage(0, 1), pace_cps=True) is None
    hit = caps.check("global", limits, caps.Usage(2, 1), pace_cps=True)
    assert hit is not None and hit[0] == "channels"
