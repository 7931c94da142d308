"""The what-if simulator's totals equal a call-by-call recomputation with the rating
service (decide, then each leg's cost, in Decimal), on a generated log."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from routing_rates.call_lengths import number_class
from routing_rates.carriers import Carrier
from routing_rates.index import Row
from routing_rates.service import RatingService
from routing_rates.simulate import CallLog, SimulationError, read_calls, simulate
from routing_rates.tariff import Period, Terms
from shared.money import FxTable, Money
from shared.phone import E164

D = Decimal
FX = FxTable.from_mapping("JPY", {"USD": "155.5"})


def usd(rate: str, x: int, y: int, decimals: int = 4) -> Terms:
    return Terms(D(rate), 60, x, y, D(0), D(0), "USD", decimals)


def service() -> RatingService:
    off_peak = (Period.parse("night", ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                             "20:00", "08:00"),)
    carriers = [Carrier("a", "A", dial_string="PJSIP/{digits}@a"),
                Carrier("b", "B", dial_string="PJSIP/{digits}@b", timezone="Asia/Tokyo",
                        periods=off_peak),
                Carrier("ntt-freedial", "NTT", kind="inbound", currency="JPY",
                        timezone="Asia/Tokyo")]
    rows = {"a": [Row("8190", "mobile", usd("0.1398", 60, 60)),
                  Row("813", "Tokyo", usd("0.0385", 60, 60))],
            "b": [Row("8190", "mobile", usd("0.1500", 6, 6)),
                  Row("8190", "mobile night", usd("0.0900", 6, 6), period="night"),
                  Row("8150", "IP", usd("0.0500", 30, 6))],
            "ntt-freedial": [
                Row("81", "fixed", Terms(D("8.5"), 180, 180, 180, D(0), D(0), "JPY", 1)),
                Row("8190", "mobile", Terms(D(10), 20, 20, 20, D(0), D(0), "JPY", 1))]}
    return RatingService.from_rows(carriers, rows, FX)


def generated_log(n: int, rng: random.Random) -> CallLog:
    pool = [E164(f"8190{rng.randint(0, 10**8 - 1):08d}") for _ in range(60)] + \
           [E164(f"813{rng.randint(0, 10**8 - 1):08d}") for _ in range(20)] + \
           [E164(f"8150{rng.randint(0, 10**8 - 1):08d}") for _ in range(10)]
    start = datetime(2026, 11, 30, tzinfo=UTC)
    at = [int(start.timestamp()) + rng.randint(0, 7 * 86400) for _ in range(n)]
    talk = [0 if rng.random() < 0.05 else int(rng.lognormvariate(3.5, 1.1)) for _ in range(n)]
    return CallLog(np.asarray(at, np.int64), [rng.choice(pool) for _ in range(n)],
                   np.asarray(talk, np.int64))


@pytest.mark.parametrize("announce_mode", ["early_media", "answer"])
def test_totals_match_a_call_by_call_recomputation(announce_mode: str) -> None:
    rates = service()
    log = generated_log(3000, random.Random(7))
    result = simulate(rates, log, announce_mode=announce_mode)
    keep = callback = project = hindsight = D(0)
    by_class: dict[str, Decimal] = {}
    groups: dict[tuple[object, ...], list[Decimal]] = {}
    for i, (number, talk) in enumerate(zip(log.callers, log.talk_s.tolist(), strict=True)):
        at = log.at(i)
        d = rates.decide(number, at, announce_mode=announce_mode)
        direct = rates.row_for("ntt-freedial", number, at)
        kept = rates.fx.convert(direct.terms.cost(talk), "JPY").amount if direct else D(0)
        edge = D(0) if announce_mode == "early_media" or not direct else \
            direct.terms.cost(5).amount
        if d.route is None:
            called = kept
        else:
            called = edge + rates.fx.convert(d.route.row.terms.cost(talk), "JPY").amount
        chosen = called if d.callback else kept
        keep, callback, project = keep + kept, callback + called, project + chosen
        hindsight += chosen - min(kept, called)
        cls = number_class(number)
        by_class[cls] = by_class.get(cls, D(0)) + chosen
        # calls with the same costs and class are decided alike: one group
        group = groups.setdefault((d.callback, direct.terms if direct else None,
                                   d.route.row.terms if d.route else None, edge, cls),
                                  [D(0), D(0), D(0)])
        for k, amount in enumerate((kept, called, chosen)):
            group[k] += amount
    regret = sum((p - min(k, c) for k, c, p in groups.values()), D(0))
    assert (result.keep, result.callback, result.project, result.regret,
            result.hindsight) == (keep, callback, project, regret, hindsight)
    assert result.regret < result.hindsight
    assert {c: p for c, (_, _, p) in result.by_class.items() if p} == by_class
    assert sum(calls for calls, _, _ in result.by_hour) == 3000
    assert sum((p for _, _, p in result.by_hour), D(0)) == project
    assert result.worst == sorted(result.worst, key=lambda w: -w[1])
    assert 0 < result.hindsight_calls < 3000 and result.saving > 0


def test_a_bad_log_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "calls.csv"
    path.write_text("time,caller,talk_s\n2026-12-01T09:00:00+09:00,09012345678,30\n"
                    "2026-12-01T09:01:00,09012345678,30\n")
    with pytest.raises(SimulationError, match=r"calls.csv:3: .*time"):
        read_calls(path)
    path.write_text("time,caller\n")
    with pytest.raises(SimulationError, match=r"calls.csv:1: missing column\(s\) talk_s"):
        read_calls(path)


def test_money_is_exact_decimal() -> None:
    rates = service()
    log = generated_log(50, random.Random(1))
    result = simulate(rates, log)
    assert isinstance(result.keep, Decimal)
    assert Money(result.project, "JPY").currency == "JPY"


def drawn_log(rates: RatingService, n: int, seed: int) -> CallLog:
    """Talk seconds drawn (seeded) from the very distribution each call's decision assumes."""
    rng = np.random.default_rng(seed)
    pool = [E164(f"8190{i:08d}") for i in range(0, 10**8, 10**8 // 30)] + \
           [E164(f"813{i:08d}") for i in range(0, 10**8, 10**8 // 10)] + \
           [E164(f"8150{i:08d}") for i in range(0, 10**8, 10**8 // 5)]
    callers = [pool[i] for i in rng.integers(0, len(pool), n)]
    start = int(datetime(2026, 11, 30, tzinfo=UTC).timestamp())
    at = start + rng.integers(0, 7 * 86400, n)
    talk = np.empty(n, np.int64)
    models = {id(m): m for m in (rates.call_length(None, c).model for c in callers)}
    for key, model in models.items():
        seconds = np.asarray([s for s, _ in model.points], np.int64)
        weights = np.asarray([float(p) for _, p in model.points])
        mine = np.asarray([id(rates.call_length(None, c).model) == key for c in callers])
        talk[mine] = rng.choice(seconds, size=int(mine.sum()), p=weights / weights.sum())
    return CallLog(np.asarray(at, np.int64), callers, talk)


@pytest.mark.parametrize("announce_mode", ["early_media", "answer"])
def test_regret_on_a_log_drawn_from_the_assumed_distribution_is_small(
        announce_mode: str) -> None:
    """The decision is taken before the call's talk time is known: every call with the
    same costs and number class gets the same choice, the one of lower *expected* cost
    under the assumed distribution. Its regret is, per such group, what the project paid
    minus the cheaper of keeping all the group's calls or calling all of them back. On a
    log drawn from the assumed distribution the sample means approach the expected
    costs, so that regret is small: at most 0.5 % of the project's total here.

    The per-call hindsight gap (each call against its own cheaper choice) is not that
    quantity: it is what knowing every talk time in advance would save, positive even
    for the optimal decision (a short call is cheaper kept, a long one called back, under
    the same expected costs). Here it is well above 0.5 %, which is why it is reported
    apart (``hindsight``) and not bounded."""
    rates = service()
    log = drawn_log(rates, 20_000, 11)
    result = simulate(rates, log, announce_mode=announce_mode)
    assert result.regret <= result.project * D("0.005"), (result.regret, result.project)
    assert result.hindsight > result.project * D("0.005")
