"""Where a sweep step's hang-up -> INVITE goes: each call-back's clock split into stages.

For each call-back of a step, from what the stack already keeps (nothing is added to the
servers' hot path):

* the 486 at the customer and the call-back INVITE at a carrier (SIPp's message logs, as
  ``bench._stack_load`` reads them);
* the edge's ``edge_calls.hungup_at`` (when the edge server saw the hang-up) and
  ``released_at`` (its release committed: the request's outbox message sendable);
* the callback site's ``callback_requests.accepted_at`` (the intake's transaction);
* the callback server's JSON log: ``job claimed`` (the worker's line once the job is
  claimed, screened by the guard and its routes chosen) and ``originated`` (the ARI
  originate of the first leg returned);
* ``callback_attempts.created_at`` of the first leg (its row written before the
  originate);
* and off the chain, the edge's ``outbox.delivered_at`` (the relay recorded the intake's
  answer) against the intake.

Each stage is the time between two consecutive points, per call-back; a stage can be
negative when its points are a few milliseconds apart and recorded by different clocks'
readers (the 486 is logged by SIPp when it arrives, the hang-up by the edge when Asterisk's
event arrives). ``lines()`` prints the p50 / p99 / mean of each stage over the step, and
per window of ``WINDOW_S`` by the 486's time the call-backs, their total's p50 / p99 and
each stage's mean: a steady queue shows in every window, one episode in a few.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench._stack_load import percentile

#: seconds a window of the over-time table spans (by the 486's time)
WINDOW_S = 5.0

#: the points of a call-back's clock, in the order they happen, and what each is
POINTS = (
    ("486", "the edge's 486 at the customer (SIPp)"),
    ("edge_hungup", "edge_calls.hungup_at"),
    ("edge_released", "edge_calls.released_at"),
    ("intake", "callback_requests.accepted_at"),
    ("claimed", "the callback server's 'job claimed' line (after guard and routes)"),
    ("leg_row", "callback_attempts.created_at of the first leg"),
    ("originated", "the callback server's 'originated' line (ARI originate returned)"),
    ("invite", "the call-back INVITE at the carrier (SIPp)"),
)
NAMES = tuple(name for name, _ in POINTS)
#: the stages' short names (consecutive points)
STAGES = tuple(f"{a}->{b}" for a, b in zip(NAMES, NAMES[1:], strict=False))

EDGE_QUERY = """SELECT c.caller, c.hungup_at, c.released_at, o.delivered_at
                FROM edge_calls c LEFT JOIN outbox o USING (message_id)
                WHERE c.caller = ANY($1::text[])"""
CALLBACK_QUERY = """SELECT r.callback_id, r.caller, r.accepted_at,
                           (SELECT a.created_at FROM callback_attempts a
                            WHERE a.callback_id = r.callback_id
                            ORDER BY a.leg_seq LIMIT 1) AS leg_row
                    FROM callback_requests r WHERE r.caller = ANY($1::text[])"""


def log_points(paths: Iterable[Path]) -> dict[str, dict[str, datetime]]:
    """callback_id -> {"claimed": ..., "originated": ...}: each the first such line of
    the request in the callback servers' JSON logs."""
    out: dict[str, dict[str, datetime]] = {}
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as log:
            for line in log:
                if '"job claimed' not in line and '"originated ' not in line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                request = record.get("request_id")
                message = record.get("message", "")
                point = ("claimed" if message.startswith("job claimed")
                         else "originated" if message.startswith("originated ") else None)
                if request is None or point is None:
                    continue
                at = datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))
                out.setdefault(request, {}).setdefault(point, at)
    return out


@dataclass
class Stages:
    """The points of each call-back of a step (customer digits -> point -> time)."""

    points: dict[str, dict[str, datetime]]
    delivered_after_intake_ms: list[float]

    @classmethod
    def build(cls, hung: dict[str, datetime], invited: dict[str, datetime],
              edge_rows: Sequence[dict[str, object]], callback_rows: Sequence[dict[str, object]],
              logged: dict[str, dict[str, datetime]]) -> Stages:
        points: dict[str, dict[str, datetime]] = {
            n: {"486": t, "invite": invited[n]} for n, t in hung.items() if n in invited}
        intake_at: dict[str, datetime] = {}
        for row in callback_rows:
            digits = str(row["caller"]).lstrip("+")
            if digits not in points:
                continue
            p = points[digits]
            p["intake"] = intake_at[digits] = row["accepted_at"]   # type: ignore[assignment]
            if row["leg_row"] is not None:
                p["leg_row"] = row["leg_row"]                      # type: ignore[assignment]
            p.update(logged.get(str(row["callback_id"]), {}))
        delivered = []
        for row in edge_rows:
            digits = str(row["caller"]).lstrip("+")
            if digits not in points:
                continue
            p = points[digits]
            for point, column in (("edge_hungup", "hungup_at"), ("edge_released", "released_at")):
                if row[column] is not None:
                    p[point] = row[column]                         # type: ignore[assignment]
            if row["delivered_at"] is not None and digits in intake_at:
                delivered.append((row["delivered_at"] - intake_at[digits])  # type: ignore[operator]
                                 .total_seconds() * 1000)
        return cls(points, sorted(delivered))

    def complete(self) -> dict[str, dict[str, datetime]]:
        """The call-backs every point was found for."""
        return {n: p for n, p in self.points.items() if all(k in p for k in NAMES)}

    @staticmethod
    def _ms(p: dict[str, datetime], a: str, b: str) -> float:
        return (p[b] - p[a]).total_seconds() * 1000

    def lines(self) -> list[str]:
        full = self.complete()
        if not full:
            return [f"stages: no call-back with every point ({len(self.points)} called back)"]
        out = [f"stages of hang-up -> INVITE, {len(full)} of {len(self.points)} call-backs "
               "with every point (ms: p50 / p99 / mean):"]
        for name, a, b in [(f"{a} -> {b}", a, b) for a, b in zip(NAMES, NAMES[1:], strict=False)
                           ] + [("486 -> invite (total)", "486", "invite")]:
            values = sorted(self._ms(p, a, b) for p in full.values())
            out.append(f"  {name:32s} {percentile(values, 0.5):8.1f} "
                       f"{percentile(values, 0.99):8.1f} {sum(values) / len(values):8.1f}")
        if self.delivered_after_intake_ms:
            d = self.delivered_after_intake_ms
            out.append(f"  (off the chain: intake -> the edge's delivered_at "
                       f"{percentile(d, 0.5):.1f} / {percentile(d, 0.99):.1f} ms)")
        out.extend(self.window_lines(full))
        return out

    def window_lines(self, full: dict[str, dict[str, datetime]]) -> list[str]:
        """Per ``WINDOW_S`` of 486 times: count, total p50 / p99, each stage's mean."""
        first = min(p["486"] for p in full.values())
        windows: dict[int, list[dict[str, datetime]]] = {}
        for p in full.values():
            index = int((p["486"] - first).total_seconds() // WINDOW_S)
            windows.setdefault(index, []).append(p)
        short = [s.replace("edge_", "e_") for s in STAGES]
        out = [f"  per {WINDOW_S:g} s by the 486 (ms): window  n  total p50 / p99  | means: "
               + "  ".join(short)]
        for index in sorted(windows):
            group = windows[index]
            total = sorted(self._ms(p, "486", "invite") for p in group)
            means = [sum(self._ms(p, a, b) for p in group) / len(group)
                     for a, b in zip(NAMES, NAMES[1:], strict=False)]
            out.append(f"  {index * WINDOW_S:5.0f} s {len(group):4d} "
                       f"{percentile(total, 0.5):7.0f} / {percentile(total, 0.99):7.0f} | "
                       + " ".join(f"{m:7.0f}" for m in means))
        return out
