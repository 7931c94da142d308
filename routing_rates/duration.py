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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from routing_rates.tariff import Terms, ceil_seconds
from shared.money import Money

_ONE = Decimal(1)


class DistributionError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class DurationModel:
    """A discrete distribution of call durations (seconds -> probability)."""

    name: str
    points: tuple[tuple[int, Decimal], ...]

    def __post_init__(self) -> None:
        if not self.points:
            raise DistributionError(f"distribution {self.name!r} has no points")
        if any(s < 0 or p < 0 for s, p in self.points):
            raise DistributionError(f"distribution {self.name!r}: negative value")
        total = sum((p for _, p in self.points), Decimal(0))
        if abs(total - _ONE) > Decimal("1e-9"):
            raise DistributionError(
                f"distribution {self.name!r}: probabilities sum to {total}, not 1")

    @property
    def mean(self) -> Decimal:
        return sum((s * p for s, p in self.points), Decimal(0))

    def expected_cost(self, terms: Terms) -> Money:
        """E[cost(d)] under ``terms`` (each cost rounded as billed, the mean not)."""
        acc = Decimal(0)
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


# Mean of the discretised model: about 155 s (the exponential's 152.5 + half a bucket).
DEFAULT_DURATION = DurationModel.exponential("default", Decimal("152.5"))

BUILTIN: dict[str, DurationModel] = {
    "default": DEFAULT_DURATION,
    # Short enquiries: a stress case for 60/60 carriers.
    "short": DurationModel.exponential("short", Decimal("30")),
    "long": DurationModel.exponential("long", Decimal("400"), bucket_s=10, cap_s=3600),
}


def model_from_config(name: str, config: Mapping[str, object]) -> DurationModel:
    """A model from TOML (``tomllib.loads(..., parse_float=Decimal)``).

    ``points = [[30, "0.2"], [120, "0.5"], ...]`` (any weights) or
    ``exponential_mean_s = 155``."""
    if "points" in config:
        raw = config["points"]
        if not isinstance(raw, list):
            raise DistributionError(f"distribution {name!r}: points must be a list")
        pairs: list[tuple[int, Decimal | int]] = []
        for item in raw:
            if not isinstance(item, list) or len(item) != 2:
                raise DistributionError(f"distribution {name!r}: each point is [seconds, weight]")
            pairs.append((int(str(item[0])), Decimal(str(item[1]))))
        return DurationModel.from_histogram(name, pairs)
    if "exponential_mean_s" in config:
        return DurationModel.exponential(name, Decimal(str(config["exponential_mean_s"])))
    raise DistributionError(f"distribution {name!r}: needs points or exponential_mean_s")
