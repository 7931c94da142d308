"""What the advisors benchmarks share: a fresh advisors database, a merchant seeded with
N advisors in G groups in a realistic presence mix, and percentiles.

Seeding writes the rows in bulk (SQL), not through the API: the presence rows are the
state :mod:`advisors.presence` would have reached (standby idle for up to ten minutes,
talking, ringing, after-call work, working, break, offline). After-call work is due a day
later, so the site's timers change nothing while a benchmark runs.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

#: the presence mix of a busy afternoon: share of the advisors in each shown state
MIX = (("standby", 0.25), ("talking", 0.30), ("ringing", 0.05), ("wrap_up", 0.10),
       ("working", 0.05), ("break", 0.10), ("offline", 0.15))
DATABASE = "cbgw_bench_advisors"


async def database() -> str:
    """A freshly created database (``DATABASE_URL``'s server, else the embedded one) with
    the advisors migrations applied; its URL."""
    import advisors
    from shared.db import fresh_database, migrate_url, package_migrations, resolve_url

    server = await asyncio.to_thread(resolve_url, None, "postgres")
    url = await fresh_database(server, DATABASE)
    await migrate_url(url, [package_migrations("advisors", advisors.__file__)])
    return url


@dataclass(frozen=True)
class Merchant:
    merchant_id: str
    lines: int
    advisors: tuple[int, ...]
    #: group id -> its members
    groups: dict[int, frozenset[int]]
    #: shown state -> advisors in it
    states: dict[str, tuple[int, ...]]

    def describe(self) -> str:
        sizes = sorted(len(m) for m in self.groups.values())
        counts = ", ".join(f"{state} {len(self.states.get(state, ()))}" for state, _ in MIX)
        standby = set(self.states.get("standby", ()))
        busy = sum(not m & standby for m in self.groups.values())
        return (f"{self.merchant_id}: {len(self.advisors):,} advisors in {len(self.groups)} "
                f"groups ({sizes[0]}-{sizes[-1]} members, mean {sum(sizes) / len(sizes):.0f}; "
                f"{busy} with nobody in standby), {self.lines} lines; {counts}")


def _presence(state: str, advisor_id: int, now: datetime, rng: random.Random
              ) -> tuple[str, list[dict[str, Any]], datetime | None, datetime | None]:
    """(desk, sessions, idle_since, wrap_up_due) of an advisor shown in ``state``."""
    idle_since = now - timedelta(seconds=rng.uniform(1, 600))
    session = {"consultation_id": f"seed-{advisor_id}", "answered": state == "talking"}
    match state:
        case "standby":
            return "standby", [], idle_since, None
        case "talking" | "ringing":
            return "standby", [session], idle_since, None
        case "wrap_up":
            return "wrap_up", [], idle_since, now + timedelta(days=1)
        case "working" | "break":
            return state, [], idle_since, None
        case _:
            return "offline", [], None, None


async def seed(pool: asyncpg.Pool, merchant_id: str, advisors: int, groups: int, *,
               lines: int, now: datetime, rng: random.Random, busy_groups: int = 0
               ) -> Merchant:
    """The merchant's settings, ``advisors`` advisors (one in ten takes two calls at once),
    ``groups`` groups (each advisor in one, half of them in a second one) and their
    presence rows in the :data:`MIX`, except that no member of the first ``busy_groups``
    groups is in standby (they talk instead): a customer waiting there waits for one."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO advisor_settings (merchant_id, lines, wrap_up_s) "
                           "VALUES ($1, $2, 30)", merchant_id, lines)
        ids = tuple(r["id"] for r in await conn.fetch(
            """INSERT INTO advisors (merchant_id, display_name, code, contact_kind, contact,
                   price_per_minute_yen, max_concurrent)
               SELECT $1, 'advisor ' || n, lpad(n::text, 4, '0'), 'sip', 'advisor' || n,
                      300, CASE WHEN n % 10 = 0 THEN 2 ELSE 1 END
               FROM generate_series(1, $2) n ORDER BY n RETURNING id""", merchant_id, advisors))
        group_ids = [r["id"] for r in await conn.fetch(
            """INSERT INTO advisor_groups (merchant_id, name)
               SELECT $1, 'group ' || n FROM generate_series(1, $2) n ORDER BY n
               RETURNING id""", merchant_id, groups)]
        pairs = {(group_ids[i % groups], a) for i, a in enumerate(ids)}
        pairs |= {(rng.choice(group_ids), a) for a in ids if rng.random() < 0.5}
        await conn.executemany("INSERT INTO advisor_group_members (merchant_id, group_id, "
                               "advisor_id) VALUES ($1, $2, $3)",
                               [(merchant_id, g, a) for g, a in sorted(pairs)])
        busy = {a for g, a in pairs if g in group_ids[:busy_groups]}
        states = ["talking" if s == "standby" and a in busy else s for a, s in zip(
            ids, rng.choices([s for s, _ in MIX], [w for _, w in MIX], k=len(ids)),
            strict=True)]
        await conn.executemany(
            """INSERT INTO advisor_presence (advisor_id, merchant_id, desk, sessions,
                   idle_since, wrap_up_due) VALUES ($1, $2, $3, $4, $5, $6)""",
            [(a, merchant_id, *_presence(s, a, now, rng)) for a, s in zip(ids, states,
                                                                          strict=True)])
    members: dict[int, set[int]] = {g: set() for g in group_ids}
    for g, a in pairs:
        members[g].add(a)
    by_state: dict[str, list[int]] = {}
    for a, s in zip(ids, states, strict=True):
        by_state.setdefault(s, []).append(a)
    return Merchant(merchant_id, lines, ids, {g: frozenset(m) for g, m in members.items()},
                    {s: tuple(a) for s, a in by_state.items()})


def percentile(ordered: list[float], p: float) -> float:
    """The ``p`` (0-1) percentile of sorted samples (nearest rank)."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def summary(samples: list[float], unit: str = "ms") -> str:
    """``p50 … p99 … max …`` of the samples."""
    ordered = sorted(samples)
    return (f"p50 {percentile(ordered, 0.5):8.3f} {unit}  p99 {percentile(ordered, 0.99):8.3f} "
            f"{unit}  max {ordered[-1]:8.3f} {unit}")
