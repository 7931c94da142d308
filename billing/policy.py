"""A merchant's billing policy (table ``billing_policies``): the billing unit, the free
grace period, the minimum charge, the longest consultation and the tax rate. With an
advisor's price per minute it makes the :class:`~billing.rating.Terms` a consultation is
reserved and rated with (:func:`terms_for`). Each change is a new row naming who made it;
the newest is in force; a merchant without one has the defaults of ``Terms``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

import asyncpg

from billing.rating import Terms, TermsError
from shared.http import InvalidField, require_str

#: the policy's fields: every field of Terms but the price
FIELDS = tuple(f.name for f in fields(Terms) if f.name != "price_per_minute_yen")
_DEFAULT = Terms(0)


@dataclass(frozen=True, slots=True)
class Policy:
    unit_s: int = _DEFAULT.unit_s
    grace_s: int = _DEFAULT.grace_s
    minimum_yen: int = _DEFAULT.minimum_yen
    max_talk_s: int = _DEFAULT.max_talk_s
    tax_percent: int = _DEFAULT.tax_percent
    changed_by: str = ""
    changed_at: datetime | None = None

    def terms(self, price_per_minute_yen: int) -> Terms:
        return Terms(price_per_minute_yen, self.unit_s, self.grace_s, self.minimum_yen,
                     self.max_talk_s, self.tax_percent)

    def to_json(self) -> dict[str, Any]:
        return {**{name: getattr(self, name) for name in FIELDS},
                "changed_by": self.changed_by or None,
                "changed_at": self.changed_at.isoformat() if self.changed_at else None}


def changed(current: Policy, data: Mapping[str, Any]) -> Policy:
    """``current`` with the fields of ``data`` changed and ``by`` as who changed it; 400
    ``invalid-field`` naming an unknown field or a value the rating refuses."""
    for name in data:
        if name not in (*FIELDS, "by"):
            raise InvalidField(name, f"unknown field (expected {', '.join(FIELDS)}, by)")
    policy = replace(current, **{n: data[n] for n in FIELDS if n in data},
                     changed_by=require_str(data, "by", max_len=128))
    try:
        policy.terms(0)
    except TermsError as exc:
        raise InvalidField(exc.field, str(exc).partition(": ")[2]) from None
    return policy


def _policy(row: asyncpg.Record | None) -> Policy:
    if row is None:
        return Policy()
    return Policy(**{n: row[n] for n in FIELDS}, changed_by=row["changed_by"],
                  changed_at=row["changed_at"])


async def current(db: asyncpg.Pool | asyncpg.Connection, merchant_id: str) -> Policy:
    return _policy(await db.fetchrow(
        "SELECT * FROM billing_policies WHERE merchant_id = $1 ORDER BY id DESC LIMIT 1",
        merchant_id))


async def set_policy(pool: asyncpg.Pool, merchant_id: str, policy: Policy) -> Policy:
    row = await pool.fetchrow(
        """INSERT INTO billing_policies (merchant_id, unit_s, grace_s, minimum_yen,
               max_talk_s, tax_percent, changed_by) VALUES ($1, $2, $3, $4, $5, $6, $7)
           RETURNING *""",
        merchant_id, *(getattr(policy, n) for n in FIELDS), policy.changed_by)
    return _policy(row)


async def terms_for(pool: asyncpg.Pool, merchant_id: str, price_per_minute_yen: int) -> Terms:
    """The terms of a consultation at this price under the merchant's policy in force."""
    return (await current(pool, merchant_id)).terms(price_per_minute_yen)
