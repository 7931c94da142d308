"""The what-if simulator's totals equal a call-by-call recomputation with the rating
service (decide, then each leg's cost, in Decimal), on a generated log."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from routing_rates.call_lengths import Learned, MerchantLengths, Policy, number_class
from routing_rates.carriers import Carrier
from routing_rates.duration import DurationModel
from routing_rates.index import Row
from routing_rates.service import RatingService
from routing_rates.simulate import CallLog, Ints, SimulationError, read_calls, simulate
from routing_rates.tariff import Period, Terms
from shared.money import FxTable, Money
from shared.phone import E164

D = Decimal
FX = FxTable.from_mapping("JPY", {"USD": "155.5"})


def usd(rate: str, x: int, y: int, decimals: int = 4) -> Terms:
    return Terms(D(rate), 60, x, y, D(0), D(0), "USD", decimals)


def service(*, b_mobile: bool = True) -> RatingService:
    """Carriers a (60/60) and b (6/6, cheaper at night) and NTT Free Dial; without
    ``b_mobile`` mobiles are called back on a's 60/60 only, where short calls lose."""
    off_peak = (Period.parse("night", ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                             "20:00", "08:00"),)
    carriers = [Carrier("a", "A", dial_string="PJSIP/{digits}@a"),
                Carrier("b", "B", dial_string="PJSIP/{digits}@b", timezone="Asia/Tokyo",
                        periods=off_peak),
                Carrier("ntt-freedial", "NTT", kind="inbound", currency="JPY",
                        timezone="Asia/Tokyo")]
    rows = {"a": [Row("8190", "mobile", usd("0.1398", 60, 60)),
                  Row("813", "Tokyo", usd("0.0385", 60, 60))],
            "b": [*([Row("8190", "mobile", usd("0.1500", 6, 6)),
                    Row("8190", "mobile night", usd("0.0900", 6, 6), period="night")]
                    if b_mobile else []),
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


def _pool() -> list[E164]:
    """Mobile, fixed and IP callers (numbers of ranges the plan leaves out dropped)."""
    numbers = [E164(f"8190{i:08d}") for i in range(0, 10**8, 10**8 // 30)] + \
              [E164(f"813{i:08d}") for i in range(0, 10**8, 10**8 // 10)] + \
              [E164(f"8150{i:08d}") for i in range(0, 10**8, 10**8 // 5)]
    return [n for n in numbers if number_class(n) != "other"]


def _draw(model: DurationModel, size: int, rng: np.random.Generator) -> Ints:
    seconds = np.asarray([s for s, _ in model.points], np.int64)
    weights = np.asarray([float(p) for _, p in model.points])
    return rng.choice(seconds, size=size, p=weights / weights.sum())


def drawn_log(models: Mapping[str, DurationModel], n: int, seed: int) -> CallLog:
    """``n`` calls of the pool's callers over a week, each call's talk seconds drawn
    (seeded) from ``models[number_class(caller)]``."""
    rng = np.random.default_rng(seed)
    pool = _pool()
    callers = [pool[i] for i in rng.integers(0, len(pool), n)]
    start = int(datetime(2026, 11, 30, tzinfo=UTC).timestamp())
    at = start + rng.integers(0, 7 * 86400, n)
    talk = np.full(n, -1, np.int64)
    cls = np.asarray([number_class(c) for c in callers])
    for name, model in models.items():
        mine = cls == name
        talk[mine] = _draw(model, int(mine.sum()), rng)
    assert (talk >= 0).all(), "a caller's class has no model"
    return CallLog(np.asarray(at, np.int64), callers, talk)


def assumed(rates: RatingService, merchant: str | None) -> dict[str, DurationModel]:
    """Per number class of the pool, the distribution ``merchant``'s decisions assume."""
    return {number_class(c): rates.call_length(merchant, c).model for c in _pool()}


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
    log = drawn_log(assumed(rates, None), 20_000, 11)
    result = simulate(rates, log, announce_mode=announce_mode)
    assert result.regret <= result.project * D("0.005"), (result.regret, result.project)
    assert result.hindsight > result.project * D("0.005")


#: what the merchant's callers really talk, per class: short mobile calls (where 60/60
#: loses to the toll-free line), long fixed-line calls, IP calls in between
TRUTH = {"mobile": DurationModel.lognormal("true-mobile", D(25), D("0.8")),
         "fixed": DurationModel.lognormal("true-fixed", D(400), D("0.8")),
         "ip": DurationModel.exponential("true-ip", D(240))}
LEARNED_FROM = 1_240


def learning_service(rng: np.random.Generator) -> RatingService:
    """``service(b_mobile=False)`` whose merchant ``m`` has learned each class from 1,240
    answered calls drawn from :data:`TRUTH` (the default prior weighs 200 calls)."""
    rates = service(b_mobile=False)
    rates.lengths = MerchantLengths(policy=Policy(min_calls=50, prior_calls=200))
    since = datetime(2026, 11, 1, tzinfo=UTC)
    learned = {("m", cls): Learned(LEARNED_FROM, since, tuple(
        (int(s), int(k)) for s, k in zip(*np.unique(_draw(model, LEARNED_FROM, rng),
                                                  return_counts=True), strict=True)))
        for cls, model in TRUTH.items()}
    asyncio.run(rates.apply_learned(learned))
    for number in _pool():
        choice = rates.call_length("m", number)
        assert choice.source == "learned", choice
        assert f"learned from {LEARNED_FROM:,} " in choice.detail
    return rates


@pytest.mark.parametrize("announce_mode", ["early_media", "answer"])
def test_regret_on_a_log_drawn_from_the_learned_distribution_is_at_most_half_a_percent(
        announce_mode: str) -> None:
    """The merchant's decisions assume the distributions it learned from its CDRs; a log of
    20,000 calls drawn from those learned distributions: the regret (per group of calls the
    decision cannot tell apart, against the better fixed choice for the whole group in
    hindsight) is at most 0.5 % of the project's total. The per-call hindsight, against a
    clairvoyant that knows each call's length, is not: it is above 0.5 % on the same log.
    The regret does see a wrong distribution: the same log decided with the default
    (nothing learned) has a regret above 0.5 %."""
    rates = learning_service(np.random.default_rng(5))
    log = drawn_log(assumed(rates, "m"), 20_000, 12)
    result = simulate(rates, log, merchant="m", announce_mode=announce_mode)
    assert result.regret <= result.project * D("0.005"), (result.regret, result.project)
    assert result.hindsight > result.project * D("0.005"), (result.hindsight, result.project)
    untaught = simulate(service(b_mobile=False), log, announce_mode=announce_mode)
    assert untaught.regret > untaught.project * D("0.005"), (untaught.regret,
                                                             untaught.project)


def test_deciding_with_the_learned_lengths_costs_at_most_half_a_percent_more_than_the_truth(
        ) -> None:
    """Learning's own cost: on a log drawn from the callers' true distributions, the
    decisions made with what the merchant learned (1,240 calls a class, smoothed toward
    the default) cost at most 0.5 % more than the decisions made knowing the true
    distributions, and the default distribution (nothing learned) costs more than that:
    the mobile callers' 25 s calls are cheaper kept, which the default does not see."""
    learned = learning_service(np.random.default_rng(5))
    knowing = service(b_mobile=False)
    knowing.lengths = MerchantLengths({"m": TRUTH})
    asyncio.run(knowing.apply_learned({}))
    assert knowing.call_length("m", E164("819012345678")).source == "configured"
    log = drawn_log(TRUTH, 20_000, 13)
    truth = simulate(knowing, log, merchant="m")
    mine = simulate(learned, log, merchant="m")
    untaught = simulate(service(b_mobile=False), log)
    assert (truth.keep, truth.callback) == (mine.keep, mine.callback)
    assert mine.project - truth.project <= truth.project * D("0.005"), (mine.project,
                                                                       truth.project)
    assert untaught.project - truth.project > truth.project * D("0.005"), (
        untaught.project, truth.project)
    assert mine.regret <= mine.project * D("0.005")
