"""What-if: replay a merchant's inbound call log against the decks in force.

For every call of the log (time, caller, talk seconds) three costs in the comparison
currency: keeping it on the toll-free line (the inbound tariff's row for the caller),
calling back (the edge leg plus the carrier route the decision would take), and what
the project's decision would have cost (``RatingService.decide`` with the merchant's
call lengths, at the call's time).

Two shortfalls, not the same thing:

* **regret** (the decision's): a decision is taken before the talk time is known, so
  every call with the same costs (inbound and carrier terms, edge leg) and number class
  gets the same one. Per such group, what the project paid minus the cheaper of keeping *all* its
  calls and calling *all* of them back. When the log's talk times follow the
  distribution the decision assumes, the expected-cost choice is the cheaper on
  average, and this goes to 0 as the log grows: it measures a wrong distribution or
  a wrong decision.
* **hindsight** (per call): the project's cost minus the cheaper of the two *for that
  call's own talk time*. No decision that cannot see the talk time avoids it (a short
  call is cheaper kept and a long one called back under the same expected costs), so
  it stays positive even for the optimal decision; ``worst`` lists its largest calls.

Vectorised: decisions are taken once per distinct (matched rows, rate periods,
number class), the costs per distinct (terms, billed seconds); per call only numpy
integer arithmetic runs. **Money stays exact**: every cost is an ``int64`` count of
10^-E units of the comparison currency, E = the largest deck decimals plus the largest
FX rate's decimals (so each cost converts without rounding; an FX rate with more than
6 decimals is refused), and the reported totals are those integers as ``Decimal``.
No float touches money; floats only draw the chart.

Limits: the decks are the ones in force now (not those of each call's date); a row
with validity dates is judged at the first call of its caller and period combination.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import numpy.typing as npt

from routing_rates.call_lengths import number_class
from routing_rates.report import chart_values
from routing_rates.service import RatingService
from routing_rates.tariff import Terms, period_at
from shared.config import NUMBER_CLASSES
from shared.phone import E164, normalise
from shared.timeutil import parse_timestamp

#: Asia/Tokyo is UTC+9 all year (no daylight saving since 1951)
TOKYO_OFFSET_S = 9 * 3600
MAX_FX_DECIMALS = 6
#: a call longer than a day is a mistake in the log
MAX_TALK_S = 86_400
Ints = npt.NDArray[np.int64]


class SimulationError(ValueError):
    """A bad call log (file and line named) or FX rates that cannot convert exactly."""


@dataclass(frozen=True, slots=True)
class CallLog:
    at_s: Ints                    # call times, Unix seconds
    callers: Sequence[E164]
    talk_s: Ints

    def at(self, i: int) -> datetime:
        return datetime.fromtimestamp(int(self.at_s[i]), UTC)


class CallLogBuilder:
    """Calls added one by one (from a CSV line or a JSON item), then the log."""

    def __init__(self) -> None:
        self.at: list[int] = []
        self.callers: list[E164] = []
        self.talk: list[int] = []
        self._parsed: dict[str, E164] = {}

    def add(self, when: str, caller: str, talk_s: str | int) -> None:
        """Raises ``ValueError`` (a ``TimestampError``, an ``InvalidNumber`` ...)."""
        at = int(parse_timestamp(when, "time").timestamp())
        number = self._parsed.get(caller)
        if number is None:
            number = self._parsed[caller] = normalise(caller)
        seconds = int(talk_s)
        if not 0 <= seconds <= MAX_TALK_S:
            raise ValueError(f"talk_s must be seconds from 0 to {MAX_TALK_S}: {talk_s!r}")
        self.at.append(at)
        self.callers.append(number)
        self.talk.append(seconds)

    def log(self) -> CallLog:
        return CallLog(np.asarray(self.at, dtype=np.int64), self.callers,
                       np.asarray(self.talk, dtype=np.int64))


def read_calls(path: Path) -> CallLog:
    """CSV with the columns ``time`` (ISO 8601 with a zone), ``caller``, ``talk_s``."""
    calls = CallLogBuilder()
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        missing = {"time", "caller", "talk_s"} - set(header)
        if missing:
            raise SimulationError(f"{path}:1: missing column(s) {', '.join(sorted(missing))}")
        columns = [header.index(c) for c in ("time", "caller", "talk_s")]
        for line, fields in enumerate(reader, 2):
            try:
                calls.add(*(fields[c] for c in columns))
            except (ValueError, IndexError) as exc:
                raise SimulationError(f"{path}:{line}: {exc}") from None
    return calls.log()


@dataclass(frozen=True, slots=True)
class Result:
    currency: str
    calls: int
    keep: Decimal                 # every call kept on the toll-free line
    callback: Decimal             # every call called back
    project: Decimal              # as the project decides
    regret: Decimal               # the decisions' shortfall per group of alike calls
    regret_calls: int             # calls in the groups whose decision lost money
    hindsight: Decimal            # per call against its own cheaper choice (clairvoyant)
    hindsight_calls: int
    by_class: dict[str, tuple[int, Decimal, Decimal]]   # class -> calls, keep, project
    by_hour: list[tuple[int, Decimal, Decimal]]         # Tokyo hour -> calls, keep, project
    worst: list[tuple[int, Decimal]]                    # (call index, hindsight), largest first

    @property
    def saving(self) -> Decimal:
        return self.keep - self.project


def simulate(rates: RatingService, log: CallLog, *, merchant: str | None = None,
             inbound_tariff: str = "ntt-freedial", announce_mode: str = "early_media",
             announce_s: Decimal = Decimal("5"), worst: int = 20) -> Result:
    n = len(log.talk_s)
    snap = rates.snapshot
    carriers = [snap.carriers[c] for c in snap.carrier_index.carriers]
    inbound = snap.carriers[inbound_tariff] if inbound_tariff in snap.carriers else None
    # rate periods per distinct minute of the log
    minutes = log.at_s // 60
    uniq_min, first_of_min, min_of_call = np.unique(minutes, return_index=True,
                                                    return_inverse=True)
    combos: dict[tuple[str, ...], int] = {}
    combo_of_min = np.empty(len(uniq_min), np.int64)
    for i, first in enumerate(first_of_min):
        at = log.at(first)
        key = tuple(period_at(c.periods, at, c.tz) for c in
                    [*carriers, *([inbound] if inbound else [])])
        combo_of_min[i] = combos.setdefault(key, len(combos))
    combo_list = list(combos)
    # one decision per distinct (caller, periods), shared by identical rows and class
    caller_ids: dict[E164, int] = {}
    caller_of_call = np.fromiter((caller_ids.setdefault(c, len(caller_ids))
                                  for c in log.callers), np.int64, n)
    pair = caller_of_call * len(combo_list) + combo_of_min[min_of_call]
    uniq_pair, first_of_pair, pair_of_call = np.unique(pair, return_index=True,
                                                       return_inverse=True)
    decisions: dict[tuple[object, ...], tuple[bool, Terms | None, Terms | None, Decimal]] = {}
    per_pair: list[tuple[bool, Terms | None, Terms | None, Decimal]] = []
    classes = np.empty(len(uniq_pair), np.int64)
    group_of_pair = np.empty(len(uniq_pair), np.int64)
    group_ids: dict[tuple[object, ...], int] = {}
    for j, first in enumerate(first_of_pair):
        number, at = log.callers[first], log.at(first)
        periods = combo_list[int(combo_of_min[min_of_call[first]])]
        cls = number_class(number)
        classes[j] = NUMBER_CLASSES.index(cls)
        rows = snap.carrier_index.match(number.digits, "", periods[:len(carriers)], at)
        direct = snap.inbound_index.match_one(inbound_tariff, number.digits, "",
                                              periods[-1] if inbound else "", at)
        rows_key = (id(direct), tuple(id(r) for r in rows), periods, cls)
        if rows_key not in decisions:
            d = rates.decide(number, at, inbound_tariff=inbound_tariff,
                             announce_mode=announce_mode, announce_s=announce_s,
                             merchant=merchant)
            edge_s = Decimal(0) if announce_mode == "early_media" else announce_s
            edge = direct.terms.cost(edge_s).amount if direct else Decimal(0)
            decisions[rows_key] = (d.callback, direct.terms if direct else None,
                              d.route.row.terms if d.route else None, edge)
        per_pair.append(decisions[rows_key])
        group_of_pair[j] = group_ids.setdefault((decisions[rows_key], cls), len(group_ids))
    scale = _scale(rates, [t for _, a, b, _ in per_pair for t in (a, b) if t is not None])
    talk = log.talk_s
    keep = _costs(rates, [p[1] for p in per_pair], pair_of_call, talk, scale)
    carrier_leg = _costs(rates, [p[2] for p in per_pair], pair_of_call, talk, scale)
    edge_units = np.asarray([_units(rates, p[3], p[1].currency if p[1] else rates.currency,
                                    scale) for p in per_pair], np.int64)
    has_route = np.asarray([p[2] is not None for p in per_pair])[pair_of_call]
    callback = np.where(has_route, carrier_leg + edge_units[pair_of_call], keep)
    decided = np.asarray([p[0] for p in per_pair])[pair_of_call]
    project = np.where(decided, callback, keep)
    hindsight = project - np.minimum(keep, callback)
    group = group_of_pair[pair_of_call]
    totals = np.zeros((3, len(group_ids)), np.int64)
    for row, per_call in enumerate((keep, callback, project)):
        np.add.at(totals[row], group, per_call)
    group_regret = totals[2] - np.minimum(totals[0], totals[1])
    hour = (log.at_s + TOKYO_OFFSET_S) // 3600 % 24
    cls_of_call = classes[pair_of_call]
    order = np.argsort(-hindsight, kind="stable")[:worst]

    def money(units: int | np.integer) -> Decimal:
        return Decimal(int(units)).scaleb(-scale)

    return Result(
        rates.currency, n, money(keep.sum()), money(callback.sum()), money(project.sum()),
        money(group_regret.sum()), int((group_regret[group] > 0).sum()),
        money(hindsight.sum()), int((hindsight > 0).sum()),
        {c: (int((cls_of_call == i).sum()), money(keep[cls_of_call == i].sum()),
             money(project[cls_of_call == i].sum())) for i, c in enumerate(NUMBER_CLASSES)},
        [(int((hour == h).sum()), money(keep[hour == h].sum()),
          money(project[hour == h].sum())) for h in range(24)],
        [(int(i), money(hindsight[i])) for i in order if hindsight[i] > 0])


def _scale(rates: RatingService, terms: Iterable[Terms]) -> int:
    """E: the decimals every cost needs in the comparison currency, exactly."""
    decimals, fx_decimals = 0, 0
    for t in set(terms):
        decimals = max(decimals, t.decimals)
        rate = rates.fx.rate(t.currency, rates.currency) if t.currency != rates.currency \
            else Decimal(1)
        exponent = -rate.normalize().as_tuple().exponent  # type: ignore[operator]
        if exponent > MAX_FX_DECIMALS:
            raise SimulationError(f"FX {t.currency}->{rates.currency} = {rate}: more than "
                                  f"{MAX_FX_DECIMALS} decimals, costs would not convert "
                                  "exactly; give the rate into the comparison currency")
        fx_decimals = max(fx_decimals, exponent)
    return decimals + fx_decimals


def _units(rates: RatingService, amount: Decimal, currency: str, scale: int) -> int:
    rate = Decimal(1) if currency == rates.currency else rates.fx.rate(currency,
                                                                       rates.currency)
    value = (amount * rate).scaleb(scale)
    assert value == value.to_integral_value(), "inexact conversion"
    return int(value)


def _costs(rates: RatingService, terms_of_pair: Sequence[Terms | None], pair_of_call: Ints,
           talk: Ints, scale: int) -> Ints:
    """Per call, the cost of its talk seconds under its pair's terms (0 without terms)."""
    out = np.zeros(len(talk), np.int64)
    index: dict[int, int] = {}
    distinct: list[Terms] = []
    group_of_pair = np.full(len(terms_of_pair), -1, np.int64)
    for j, t in enumerate(terms_of_pair):
        if t is not None:
            if id(t) not in index:
                index[id(t)] = len(distinct)
                distinct.append(t)
            group_of_pair[j] = index[id(t)]
    group = group_of_pair[pair_of_call]
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(len(distinct) + 1))
    for g, t in enumerate(distinct):
        calls = order[bounds[g]:bounds[g + 1]]
        d = talk[calls]
        x, y = t.initial_s, t.increment_s
        billed = np.where(d <= 0, 0, np.where(d <= x, x, x + -(-(d - x) // y) * y))
        values, inverse = np.unique(billed, return_inverse=True)
        unit_cost = np.asarray([_units(rates, t.cost_of_billed(int(b)).amount, t.currency,
                                       scale) for b in values], np.int64)
        out[calls] = unit_cost[inverse]
    return out


def write_csv(result: Result, path: Path) -> Path:
    """One row per number class and per Tokyo hour: calls, all kept, as decided, saving."""
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["group", "key", "calls", f"keep_{result.currency}",
                      f"project_{result.currency}", f"saving_{result.currency}"])
        for cls, (calls, keep, project) in result.by_class.items():
            out.writerow(["class", cls, calls, keep, project, keep - project])
        for hour, (calls, keep, project) in enumerate(result.by_hour):
            out.writerow(["hour", f"{hour:02d}", calls, keep, project, keep - project])
        out.writerow(["total", "", result.calls, result.keep, result.project, result.saving])
    return path


def chart(result: Result, path: Path) -> Path:
    """Per Tokyo hour: the cost of keeping every call against the project's decisions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(24)
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    ax.bar(x - 0.2, chart_values([k for _, k, _ in result.by_hour]), width=0.4,
           label="all kept (toll-free)", color="#c0504d")
    ax.bar(x + 0.2, chart_values([p for _, _, p in result.by_hour]), width=0.4,
           label="as the project decides", color="#4f81bd")
    ax.set_xticks(list(x), [f"{h:02d}" for h in range(24)], fontsize=8)
    ax.set_xlabel("hour (Asia/Tokyo)")
    ax.set_ylabel(f"cost ({result.currency})")
    ax.set_title(f"What-if over {result.calls:,} calls: saving {result.saving:.0f} "
                 f"{result.currency}, regret {result.regret:.0f} on {result.regret_calls:,}")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
