"""Savings report: what the calls cost against keeping every call toll-free.

Reads ``rates_cdr_ratings`` over a period: per day, the actual cost (every
leg: carriers plus billed edge legs) and the counterfactual (the toll-free
cost of each customer conversation), both in the base currency, and draws a
PNG (matplotlib, Agg backend: no display needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from shared.db import Connection


@dataclass(frozen=True, slots=True)
class DayLine:
    day: date
    calls: int
    actual: Decimal
    toll_free: Decimal

    @property
    def saving(self) -> Decimal:
        return self.toll_free - self.actual


@dataclass(frozen=True, slots=True)
class SavingsReport:
    start: datetime
    end: datetime
    merchant_id: str | None
    currency: str
    days: list[DayLine]
    unrated: int                 # legs that could not be rated (no deck / no rate)

    @property
    def actual(self) -> Decimal:
        return sum((d.actual for d in self.days), Decimal(0))

    @property
    def toll_free(self) -> Decimal:
        return sum((d.toll_free for d in self.days), Decimal(0))

    @property
    def saving(self) -> Decimal:
        return self.toll_free - self.actual

    def to_json(self) -> dict[str, Any]:
        return {"from": self.start.isoformat(), "to": self.end.isoformat(),
                "merchant_id": self.merchant_id, "currency": self.currency,
                "actual": str(self.actual), "toll_free": str(self.toll_free),
                "saving": str(self.saving), "unrated_legs": self.unrated,
                "days": [{"day": d.day.isoformat(), "calls": d.calls, "actual": str(d.actual),
                          "toll_free": str(d.toll_free), "saving": str(d.saving)}
                         for d in self.days]}


async def savings(conn: Connection, start: datetime, end: datetime,
                  merchant_id: str | None = None) -> SavingsReport:
    rows = await conn.fetch(
        """SELECT (started_at AT TIME ZONE 'UTC')::date AS day,
                  count(DISTINCT call_id) AS calls,
                  coalesce(sum(cost_base), 0) AS actual,
                  coalesce(sum(direct_base), 0) AS toll_free,
                  min(base_currency) AS currency,
                  count(*) FILTER (WHERE problem IS NOT NULL) AS unrated
           FROM rates_cdr_ratings
           WHERE started_at >= $1 AND started_at < $2
             AND ($3::text IS NULL OR merchant_id = $3)
           GROUP BY 1 ORDER BY 1""", start, end, merchant_id)
    currency = next((r["currency"] for r in rows if r["currency"]), "JPY")
    return SavingsReport(start, end, merchant_id, currency,
                         [DayLine(r["day"], r["calls"], r["actual"], r["toll_free"])
                          for r in rows], sum(r["unrated"] for r in rows))


def chart_values(values: Sequence[Decimal]) -> Any:
    """Money as float64 for a chart: a picture is the one place money becomes a float
    (exactly through its decimal text); every figure reported stays Decimal."""
    import numpy as np

    return np.array([str(v) for v in values], dtype=np.float64)


def chart(report: SavingsReport, path: Path) -> Path:
    """Daily cost bars (actual vs all toll-free) and the cumulative saving line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    days = [d.day for d in report.days]
    cumulative: list[Decimal] = []
    running = Decimal(0)
    for d in report.days:
        running += d.saving
        cumulative.append(running)
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    x = np.arange(len(days))
    ax.bar(x - 0.2, chart_values([d.toll_free for d in report.days]), width=0.4,
           label="all toll-free", color="#c0504d")
    ax.bar(x + 0.2, chart_values([d.actual for d in report.days]), width=0.4,
           label="with call-back", color="#4f81bd")
    ax2 = ax.twinx()
    ax2.plot(x, chart_values(cumulative), color="#2c7a2c", marker="o",
             label="cumulative saving")
    ax.set_xticks(list(x), [d.isoformat() for d in days], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"cost per day ({report.currency})")
    ax2.set_ylabel(f"cumulative saving ({report.currency})")
    who = report.merchant_id or "all merchants"
    ax.set_title(f"Savings vs all toll-free, {who}: {report.saving:.0f} {report.currency}")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
