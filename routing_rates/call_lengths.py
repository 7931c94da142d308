"""Call lengths per merchant and number class: learned, configured or the default.

The decision for merchant M and a caller of class C (``number_class``: mobile,
fixed, ip, other) assumes, in this order:

1. **learned**, once M's answered calls from class C number at least
   ``min_calls`` (``[rates] learn_min_calls``, default 50): the empirical
   distribution of their talk seconds (whole seconds, rounded up, capped at
   :data:`MAX_TALK_S`) smoothed toward the prior by a pseudo-count mixture:
   ``P(s) = (n_s + k * prior(s)) / (n + k)`` with ``k = prior_calls``
   (``[rates] learn_prior_calls``, default 200) and the prior the configured
   distribution of C, else the default. With 1,240 calls the prior still weighs
   k / (n + k) = 14 %; with 20,000, 1 %.
2. **configured**: ``[merchants.call_lengths]`` C, else its ``all``
   (``shared.config.CallLengthSettings``; names resolve in the merchant's
   distributions file, then the built-ins).
3. **default**: ``routing_rates.duration.DEFAULT_DURATION``.

The counts live in PostgreSQL (``rates_call_lengths``, ``rates_call_length_totals``):
:func:`counting` adds the answered calls in the statement that stores customer legs'
CDRs arriving over the link at the edge (once per CDR) and NOTIFYs :data:`CHANNEL` with
the merchant id; ``RatingService`` reloads that
merchant's counts and swaps the new models in.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from routing_rates.duration import (
    BUILTIN,
    DEFAULT_DURATION,
    DistributionError,
    DurationModel,
    load_distributions,
    model_from_config,
)
from routing_rates.tariff import ceil_seconds
from shared.config import NUMBER_CLASSES, CallLengthSettings, Merchant
from shared.phone import E164, NumberType

CHANNEL = "routing_rates_call_lengths"
#: talk seconds are counted up to 4 h; a longer call counts as 4 h
MAX_TALK_S = 14_400

_CLASS_OF = {NumberType.MOBILE: "mobile", NumberType.FIXED_LINE: "fixed",
             NumberType.FIXED_LINE_OR_MOBILE: "fixed", NumberType.VOIP: "ip"}


def number_class(number: E164) -> str:
    """mobile | fixed | ip | other, from the number's type (``shared.phone``)."""
    return _CLASS_OF.get(number.number_type, "other")


@dataclass(frozen=True, slots=True)
class Policy:
    min_calls: int = 50
    prior_calls: int = 200
    #: new counts are loaded at most this often (each load computes the new models'
    #: expected costs for every tariff in force: about a second of CPU for 2,000 terms)
    refresh_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Learned:
    """One merchant's answered calls of one class: talk seconds -> calls."""

    calls: int
    since: datetime
    histogram: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class LengthChoice:
    model: DurationModel
    source: str                  # learned | configured | default
    detail: str                  # what ``decide`` prints

    def explain(self) -> dict[str, str]:
        return {"source": self.source, "detail": self.detail}


DEFAULT_CHOICE = LengthChoice(DEFAULT_DURATION, "default",
                              "default (exponential, mean 152.5 s): nothing configured or learned")


def configured_models(settings: CallLengthSettings,
                      builtin: Mapping[str, DurationModel]) -> dict[str, DurationModel]:
    """Class (or ``all``) -> the configured model. Errors name the key."""
    known = dict(builtin)
    if settings.file is not None:
        known |= load_distributions(settings.file.read_text(encoding="utf-8"),
                                    str(settings.file))
    models: dict[str, DurationModel] = {}
    for key, spec in settings.classes:
        if spec.distribution is not None:
            model = known.get(spec.distribution)
            if model is None:
                raise DistributionError(
                    f"call_lengths.{key}: unknown distribution {spec.distribution!r}; "
                    f"known: {', '.join(sorted(known))}")
        else:
            try:
                model = model_from_config(f"configured-{key}", spec.table())
            except DistributionError as exc:
                raise DistributionError(f"call_lengths.{key}: {exc}") from exc
        models[key] = model
    return models


def choose(configured: Mapping[str, DurationModel], cls: str, learned: Learned | None,
           policy: Policy) -> LengthChoice:
    """The distribution for one class of one merchant (rule in the module docstring)."""
    prior = configured.get(cls) or configured.get("all")
    if prior is None:
        base = DEFAULT_CHOICE
    else:
        base = LengthChoice(prior, "configured", f"configured {prior.name} "
                            f"(mean {prior.mean:.0f} s)")
    if learned is None or learned.calls < policy.min_calls:
        if learned is None:
            return base
        return LengthChoice(base.model, base.source, f"{base.detail}; {learned.calls:,} "
                            f"{cls} calls so far, learning from {policy.min_calls:,}")
    model = learned_model(f"learned-{cls}", learned, base.model, policy.prior_calls)
    return LengthChoice(model, "learned", f"learned from {learned.calls:,} {cls} calls since "
                        f"{learned.since.date().isoformat()} (mean {model.mean:.0f} s; "
                        f"prior {base.model.name} weighs {policy.prior_calls:,} calls)")


def learned_model(name: str, learned: Learned, prior: DurationModel,
                  prior_calls: int) -> DurationModel:
    """``(n_s + k * prior(s)) / (n + k)`` over the union of both supports."""
    weights: dict[int, Decimal] = {s: Decimal(n) for s, n in learned.histogram}
    k = Decimal(prior_calls)
    if k:
        for seconds, prob in prior.points:
            weights[seconds] = weights.get(seconds, Decimal(0)) + k * prob
    return DurationModel.from_histogram(name, weights)


class MerchantLengths:
    """Every merchant's configured models and the learning policy; builds the choices."""

    def __init__(self, configured: Mapping[str, Mapping[str, DurationModel]] | None = None,
                 policy: Policy | None = None) -> None:
        self.configured = dict(configured or {})
        self.policy = policy or Policy()

    def choices(self, learned: Mapping[tuple[str, str], Learned],
                merchants: Collection[str] | None = None,
                ) -> dict[tuple[str, str], LengthChoice]:
        """(merchant, class) -> choice, for ``merchants`` (None: every one known)."""
        wanted = set(self.configured) | {m for m, _ in learned}
        if merchants is not None:
            wanted &= set(merchants)
        return {(m, c): choose(self.configured.get(m, {}), c, learned.get((m, c)), self.policy)
                for m in wanted for c in NUMBER_CLASSES}


def from_merchants(merchants: Sequence[Merchant], policy: Policy) -> MerchantLengths:
    """Every merchant's ``[merchants.call_lengths]`` (DistributionError, OSError: a bad one)."""
    return MerchantLengths({m.id: configured_models(m.call_lengths, BUILTIN)
                            for m in merchants if m.call_lengths.classes}, policy)


# --- PostgreSQL --------------------------------------------------------------------------

def talk_counted(number: E164, talk_s: int | Decimal) -> tuple[str, int] | None:
    """The number class and whole talk seconds (up to :data:`MAX_TALK_S`) an answered
    call to ``number`` of ``talk_s`` seconds counts as; None when there is nothing to
    count (no talk)."""
    seconds = min(ceil_seconds(talk_s), MAX_TALK_S)
    return None if seconds <= 0 else (number_class(number), seconds)


def counting(source: str) -> str:
    """SQL that counts the answered calls of ``source`` (a relation of the statement it
    goes in, a row a call, with the columns ``merchant_id``, ``number_class``, ``talk_s``
    as :func:`talk_counted` gives them, and ``at``), as two CTEs for that statement's
    ``WITH`` (``call_length``, ``call_length_total``). The calls of one class and length
    are added together (an upsert may not touch a row twice), in the keys' order, so two
    statements counting the same keys lock them in one order. The totals' upsert NOTIFYs
    :data:`CHANNEL` with the merchant id (in its ``RETURNING``, evaluated for each row a
    data-modifying CTE writes whether or not the statement reads it), delivered when the
    statement commits."""
    return f"""call_length AS (
               INSERT INTO rates_call_lengths (merchant_id, number_class, talk_s, calls)
               SELECT merchant_id, number_class, talk_s, count(*) FROM {source}
               GROUP BY merchant_id, number_class, talk_s
               ORDER BY merchant_id, number_class, talk_s
               ON CONFLICT (merchant_id, number_class, talk_s)
               DO UPDATE SET calls = rates_call_lengths.calls + excluded.calls),
           call_length_total AS (
               INSERT INTO rates_call_length_totals AS t
                   (merchant_id, number_class, calls, first_call_at, last_call_at)
               SELECT merchant_id, number_class, count(*), min(at), max(at) FROM {source}
               GROUP BY merchant_id, number_class ORDER BY merchant_id, number_class
               ON CONFLICT (merchant_id, number_class) DO UPDATE SET
                   calls = t.calls + excluded.calls,
                   first_call_at = LEAST(t.first_call_at, excluded.first_call_at),
                   last_call_at = GREATEST(t.last_call_at, excluded.last_call_at)
               RETURNING pg_notify('{CHANNEL}', t.merchant_id))"""


async def load(conn: asyncpg.Connection, merchants: Collection[str] | None = None,
               ) -> dict[tuple[str, str], Learned]:
    """The counts of ``merchants`` (None: all)."""
    only = None if merchants is None else sorted(merchants)
    totals = await conn.fetch(
        """SELECT merchant_id, number_class, calls, first_call_at FROM rates_call_length_totals
           WHERE $1::text[] IS NULL OR merchant_id = ANY($1)""", only)
    bins = await conn.fetch(
        """SELECT merchant_id, number_class, talk_s, calls FROM rates_call_lengths
           WHERE $1::text[] IS NULL OR merchant_id = ANY($1)
           ORDER BY merchant_id, number_class, talk_s""", only)
    hist: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for b in bins:
        hist.setdefault((b["merchant_id"], b["number_class"]), []).append(
            (b["talk_s"], b["calls"]))
    return {(t["merchant_id"], t["number_class"]): Learned(
                t["calls"], t["first_call_at"], tuple(hist.get((t["merchant_id"],
                                                                t["number_class"]), ())))
            for t in totals}
