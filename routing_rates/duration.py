"""Call-duration distributions and expected cost, pure.

Increments make cost non-linear in duration (with 60/60 billing a 30 s call
costs a full minute), so the decision uses E[cost(d)] over a distribution of
durations, never cost(E[d]).

A :class:`DurationModel` is a discrete distribution: durations in whole
seconds with Decimal probabilities summing to 1. It comes from a configured
histogram, from observed CDR durations, or the built-in default: an
exponential distribution with a mean of about 155 s (the average Japanese
mobile call, 2 min 35 s), discretised into 5 s buckets up to 30 min, each
bucket's mass placed at its upper end (conservative: it never under-bills).

Expected costs are cached per model (a model is immutable, so the model object
*is* its version): for each tariff shape X/Y the model keeps a
:class:`BilledProfile`, the distribution of billed blocks. A billed call's cost
is linear in its number of blocks but for the rounding up to the deck's last
decimal (and the minimum), so E[cost] = P(billed) * (rate * X / unit + connect
fee) + rate * Y / unit * E[blocks], plus the expected rounding, which repeats
with the blocks and is summed over one period of them: O(period) per tariff once
the profile is known (one term when a block costs whole units), not one term per point.
It equals, exactly, the sum over the points (``expected_cost_by_points``); each
result is kept per ``Terms``.
"""

from __future__ import annotations

import math
import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction

from routing_rates.tariff import Terms, billed_seconds, ceil_seconds
from shared.money import Money

_ONE = Decimal(1)
_ZERO = Decimal(0)
#: expected costs kept per model for so many distinct ``Terms`` (then computed each time)
COST_MEMO_SIZE = 8192


@dataclass(frozen=True, slots=True)
class BilledProfile:
    """The distribution of billed seconds under one X/Y for one :class:`DurationModel`.

    A billed call bills ``first + k * increment_s`` seconds (k = 0, 1, ...; ``first``
    is X, or Y when X = 0): ``blocks`` holds each k with its probability."""

    first: int
    increment_s: int
    answered: Decimal                        # P(billed > 0)
    mean_k: Decimal                          # E[k] over billed calls (weighted, not normalised)
    blocks: tuple[tuple[int, Decimal], ...]  # k -> probability, k ascending
    _residues: dict[int, tuple[Decimal, ...]] = field(default_factory=dict, compare=False,
                                                      hash=False, repr=False)

    @classmethod
    def of(cls, model: DurationModel, initial_s: int, increment_s: int) -> BilledProfile:
        first = initial_s or increment_s
        merged: dict[int, Decimal] = {}
        for seconds, prob in model.points:
            billed = billed_seconds(seconds, initial_s, increment_s)
            if billed:
                k = (billed - first) // increment_s
                merged[k] = merged.get(k, _ZERO) + prob
        blocks = tuple(sorted(merged.items()))
        return cls(first, increment_s, sum((p for _, p in blocks), _ZERO),
                   sum((k * p for k, p in blocks), _ZERO), blocks)

    def residues(self, period: int) -> tuple[Decimal, ...]:
        """Probability of k mod ``period`` = r, for each r (computed once per period)."""
        sums = self._residues.get(period)
        if sums is None:
            acc = [_ZERO] * period
            for k, p in self.blocks:
                acc[k % period] += p
            sums = self._residues[period] = tuple(acc)
        return sums

    def expected_cost(self, terms: Terms) -> Decimal:
        """E[cost] exactly as ``Terms.cost`` bills each call, without a sum per point.

        In units of the deck's last decimal q, a call of k blocks costs
        ``max(ceil((A + k B) / D), m)``: A / D = (rate * first / unit + connect fee) / q,
        B / D = rate * increment / unit / q (integers A, B, D), m = ceil(minimum / q).
        ``ceil(x) = x + ((-num) mod D) / D`` and that remainder repeats every
        D / gcd(B, D) blocks, so E[ceil] = (A P + B E[k]) / D + sum over the residues of
        their probability times their remainder; the minimum is a correction over the
        first blocks it lifts. All of it is integer or Decimal arithmetic: exact."""
        scale = Fraction(10) ** terms.decimals
        step = Fraction(terms.rate) * self.increment_s / terms.unit_s * scale
        base = (Fraction(terms.rate) * self.first / terms.unit_s
                + Fraction(terms.connect_fee)) * scale
        den = math.lcm(step.denominator, base.denominator)
        a = base.numerator * (den // base.denominator)
        b = step.numerator * (den // step.denominator)
        period = den // math.gcd(b, den)
        if period <= len(self.blocks):
            rounding = sum((prob * ((-(a + r * b)) % den)
                            for r, prob in enumerate(self.residues(period)) if prob), _ZERO)
        else:
            rounding = sum((prob * ((-(a + k * b)) % den) for k, prob in self.blocks), _ZERO)
        units = (a * self.answered + b * self.mean_k + rounding) / den
        floor = math.ceil(Fraction(terms.min_cost) * scale)
        if floor:
            for k, prob in self.blocks:
                billed = -((-(a + k * b)) // den)
                if billed >= floor:
                    break
                units += prob * (floor - billed)
        return units.scaleb(-terms.decimals)


class DistributionError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class DurationModel:
    """A discrete distribution of call durations (seconds -> probability)."""

    name: str
    points: tuple[tuple[int, Decimal], ...]
    _profiles: dict[tuple[int, int], BilledProfile] = field(
        default_factory=dict, compare=False, hash=False, repr=False)
    _costs: dict[Terms, Decimal] = field(default_factory=dict, compare=False, hash=False,
                                         repr=False)
    _mean: Decimal = field(default=_ZERO, init=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if not self.points:
            raise DistributionError(f"distribution {self.name!r} has no points")
        if any(s < 0 or p < 0 for s, p in self.points):
            raise DistributionError(f"distribution {self.name!r}: negative value")
        total = sum((p for _, p in self.points), Decimal(0))
        if abs(total - _ONE) > Decimal("1e-9"):
            raise DistributionError(
                f"distribution {self.name!r}: probabilities sum to {total}, not 1")
        object.__setattr__(self, "_mean", sum((s * p for s, p in self.points), _ZERO))

    @property
    def mean(self) -> Decimal:
        return self._mean

    def billed_profile(self, initial_s: int, increment_s: int) -> BilledProfile:
        """The billed seconds under X/Y = ``initial_s``/``increment_s`` (computed once)."""
        key = (initial_s, increment_s)
        profile = self._profiles.get(key)
        if profile is None:
            profile = self._profiles[key] = BilledProfile.of(self, initial_s, increment_s)
        return profile

    def expected_cost(self, terms: Terms) -> Money:
        """E[cost(d)] under ``terms`` (each cost rounded as billed, the mean not)."""
        amount = self._costs.get(terms)
        if amount is None:
            profile = self.billed_profile(terms.initial_s, terms.increment_s)
            amount = profile.expected_cost(terms)
            whole = amount.quantize(Decimal(1).scaleb(-terms.decimals))
            amount = whole if whole == amount else amount  # "150.0" as billed, not "150"
            if len(self._costs) < COST_MEMO_SIZE:
                self._costs[terms] = amount
        return Money(amount, terms.currency)

    def expected_cost_by_points(self, terms: Terms) -> Money:
        """E[cost(d)] summed over every point, uncached: the reference for the fast path."""
        acc = _ZERO
        for seconds, prob in self.points:
            acc += terms.cost(seconds).amount * prob
        return Money(acc, terms.currency)

    @classmethod
    def fixed(cls, seconds: int | Decimal, name: str | None = None) -> DurationModel:
        s = ceil_seconds(seconds)
        return cls(name or f"fixed-{s}s", ((s, _ONE),))

    @classmethod
    def from_histogram(cls, name: str,
                       weights: Mapping[int, Decimal | int] | Iterable[tuple[int, Decimal | int]],
                       ) -> DurationModel:
        """Normalise non-negative weights (any scale) into probabilities."""
        items = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
        merged: dict[int, Decimal] = {}
        for seconds, weight in items:
            w = Decimal(weight)
            if w < 0:
                raise DistributionError(f"distribution {name!r}: negative weight {w}")
            merged[int(seconds)] = merged.get(int(seconds), Decimal(0)) + w
        total = sum(merged.values(), Decimal(0))
        if total <= 0:
            raise DistributionError(f"distribution {name!r}: weights sum to 0")
        points = [(s, w / total) for s, w in sorted(merged.items()) if w > 0]
        drift = _ONE - sum((p for _, p in points), Decimal(0))
        last_s, last_p = points[-1]
        points[-1] = (last_s, last_p + drift)
        return cls(name, tuple(points))

    @classmethod
    def from_samples(cls, name: str, durations: Iterable[int | Decimal],
                     bucket_s: int = 1) -> DurationModel:
        """Learned from observed durations (e.g. a merchant's answered CDRs).

        Durations are rounded up to ``bucket_s`` seconds (conservative)."""
        counts: Counter[int] = Counter()
        for d in durations:
            s = ceil_seconds(d)
            counts[-(-s // bucket_s) * bucket_s] += 1
        if not counts:
            raise DistributionError(f"distribution {name!r}: no samples")
        return cls.from_histogram(name, {s: Decimal(n) for s, n in counts.items()})

    @classmethod
    def exponential(cls, name: str, mean_s: Decimal, bucket_s: int = 5,
                    cap_s: int = 1800) -> DurationModel:
        """Exponential durations, discretised; mass in (t-b, t] placed at t."""
        if mean_s <= 0:
            raise DistributionError("mean must be positive")
        weights: list[tuple[int, Decimal]] = []
        prev = _ONE
        t = bucket_s
        while t < cap_s:
            survive = (-Decimal(t) / mean_s).exp()
            weights.append((t, prev - survive))
            prev = survive
            t += bucket_s
        weights.append((cap_s, prev))
        return cls.from_histogram(name, weights)

    @classmethod
    def lognormal(cls, name: str, mean_s: Decimal, sigma: Decimal, bucket_s: int = 1,
                  cap_s: int = 3600) -> DurationModel:
        """Log-normal durations with mean ``mean_s`` and shape ``sigma`` (of ln d),
        discretised like :meth:`exponential` (mass in (t-b, t] at t, the tail at the cap).

        mu = ln(mean) - sigma^2 / 2. The CDF is computed in floats (``math.erf``): these
        are probabilities, not money; the weights are normalised in Decimal."""
        if mean_s <= 0 or sigma <= 0:
            raise DistributionError(f"distribution {name!r}: log-normal mean and sigma "
                                    "must be positive")
        s = float(sigma)
        mu = math.log(float(mean_s)) - s * s / 2

        def cdf(t: int) -> float:
            return 0.5 * (1 + math.erf((math.log(t) - mu) / (s * math.sqrt(2))))

        weights: list[tuple[int, Decimal]] = []
        prev = 0.0
        for t in range(bucket_s, cap_s, bucket_s):
            now = cdf(t)
            weights.append((t, Decimal(repr(now - prev))))
            prev = now
        weights.append((cap_s, Decimal(repr(1 - prev))))
        return cls.from_histogram(name, weights)


# Mean of the discretised model: about 155 s (the exponential's 152.5 + half a bucket).
DEFAULT_DURATION = DurationModel.exponential("default", Decimal("152.5"))

BUILTIN: dict[str, DurationModel] = {
    "default": DEFAULT_DURATION,
    # Short enquiries: a stress case for 60/60 carriers.
    "short": DurationModel.exponential("short", Decimal("30")),
    "long": DurationModel.exponential("long", Decimal("400"), bucket_s=10, cap_s=3600),
}


_SHAPES = ({"points"}, {"exponential_mean_s"}, {"lognormal_mean_s", "lognormal_sigma"})


def model_from_config(name: str, config: Mapping[str, object]) -> DurationModel:
    """A model from one ``[distributions.NAME]`` table (parsed with ``parse_float=Decimal``).

    ``points = [[30, 20], [120, 50], ...]`` (whole seconds, weights of any scale),
    ``exponential_mean_s = 155``, or ``lognormal_mean_s = 25`` with
    ``lognormal_sigma = 0.8``; exactly one of them."""
    keys = set(config)
    if keys not in _SHAPES:
        raise DistributionError(f"distribution {name!r}: needs exactly one of points, "
                                "exponential_mean_s, or lognormal_mean_s with lognormal_sigma "
                                f"(found {sorted(keys)})")
    if "lognormal_mean_s" in config:
        mean, sigma = _number(config["lognormal_mean_s"]), _number(config["lognormal_sigma"])
        if mean is None or sigma is None or mean <= 0 or sigma <= 0 or sigma > 5:
            raise DistributionError(f"distribution {name!r}: lognormal_mean_s must be "
                                    "seconds > 0 and lognormal_sigma a number in (0, 5]")
        return DurationModel.lognormal(name, mean, sigma)
    if "exponential_mean_s" in config:
        mean = _number(config["exponential_mean_s"])
        if mean is None or mean <= 0:
            raise DistributionError(f"distribution {name!r}: exponential_mean_s must be a "
                                    f"number of seconds > 0: {config['exponential_mean_s']!r}")
        return DurationModel.exponential(name, mean)
    raw = config["points"]
    if not isinstance(raw, list) or not raw:
        raise DistributionError(f"distribution {name!r}: points must be a list of "
                                "[seconds, weight]")
    pairs: list[tuple[int, Decimal | int]] = []
    for i, item in enumerate(raw):
        seconds, weight = (item if isinstance(item, list) and len(item) == 2 else (None, None))
        w = _number(weight)
        if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 0 \
                or w is None or w < 0:
            raise DistributionError(f"distribution {name!r}: points[{i}] must be [seconds, "
                                    f"weight], whole seconds >= 0 and a weight >= 0: {item!r}")
        pairs.append((seconds, w))
    return DurationModel.from_histogram(name, pairs)


def _number(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        return None
    try:
        number = Decimal(value)
    except ArithmeticError:
        return None
    return number if number.is_finite() else None


def load_distributions(text: str, source: str) -> dict[str, DurationModel]:
    """The ``[distributions.NAME]`` tables of a TOML file (the CLI's ``--distributions``).

    Errors name the file and the distribution's key."""
    try:
        data = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise DistributionError(f"{source}: {exc}") from exc
    tables = data.get("distributions")
    if not isinstance(tables, dict) or not tables:
        raise DistributionError(f"{source}: no [distributions.NAME] table")
    models: dict[str, DurationModel] = {}
    for name, config in tables.items():
        try:
            if not isinstance(config, dict):
                raise DistributionError(f"distribution {name!r}: must be a table")
            models[name] = model_from_config(name, config)
        except DistributionError as exc:
            raise DistributionError(f"{source}: [distributions.{name}]: {exc}") from exc
    return models
