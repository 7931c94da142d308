"""A merchant's billing policy (table ``billing_policies``): the billing unit, the free
grace period, the minimum charge, the longest consultation and the tax rate. With an
advisor's price per minute it makes the :class:`~billing.rating.Terms` a consultation is
reserved and rated with (:func:`terms_for`). Each change is a new row naming who made it;
the newest is in force; a merchant without one has the defaults of ``Terms``.

An advisor group may override any of those fields (table ``billing_group_policies``,
:class:`GroupPolicy`): a consultation through the group is reserved and rated with the
merchant's policy with the group's fields in their place (:func:`in_force`).
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


@dataclass(frozen=True, slots=True)
class GroupPolicy:
    """The fields a group overrides of its merchant's policy (the others: the
    merchant's), who set them and when."""

    group_id: int
    overrides: tuple[tuple[str, int], ...] = ()
    changed_by: str = ""
    changed_at: datetime | None = None

    def over(self, merchant: Policy) -> Policy:
        """The merchant's policy with this group's fields in their place."""
        own: dict[str, Any] = dict(self.overrides)
        return replace(merchant, **own)

    def to_json(self, merchant: Policy) -> dict[str, Any]:
        """Each field's value (null: the merchant's) and the policy in force for the
        group (``in_force``)."""
        own = dict(self.overrides)
        return {"group_id": self.group_id, **{n: own.get(n) for n in FIELDS},
                "in_force": {n: getattr(self.over(merchant), n) for n in FIELDS},
                "changed_by": self.changed_by or None,
                "changed_at": self.changed_at.isoformat() if self.changed_at else None}


def group_changed(current: GroupPolicy, merchant: Policy, data: Mapping[str, Any]
                  ) -> GroupPolicy:
    """``current`` with the fields of ``data`` overridden (an integer) or given back to the
    merchant's (null), ``by`` as who changed it; 400 ``invalid-field`` naming an unknown
    field, a value that is not an integer or null, or one the rating refuses over the
    merchant's policy."""
    for name in data:
        if name not in (*FIELDS, "by"):
            raise InvalidField(name, f"unknown field (expected {', '.join(FIELDS)}, by)")
    own = dict(current.overrides)
    for name in FIELDS:
        if name not in data:
            continue
        value = data[name]
        if value is None:
            own.pop(name, None)
        elif type(value) is int:
            own[name] = value
        else:
            raise InvalidField(name, "expected an integer, or null for the merchant's")
    group = GroupPolicy(current.group_id, tuple((n, own[n]) for n in FIELDS if n in own),
                        require_str(data, "by", max_len=128))
    try:
        group.over(merchant).terms(0)
    except TermsError as exc:
        raise InvalidField(exc.field, str(exc).partition(": ")[2]) from None
    return group


def _group(group_id: int, row: asyncpg.Record | None) -> GroupPolicy:
    if row is None:
        return GroupPolicy(group_id)
    return GroupPolicy(group_id, tuple((n, row[n]) for n in FIELDS if row[n] is not None),
                       row["changed_by"], row["changed_at"])


async def current_group(db: asyncpg.Pool | asyncpg.Connection, merchant_id: str,
                        group_id: int) -> GroupPolicy:
    return _group(group_id, await db.fetchrow(
        "SELECT * FROM billing_group_policies WHERE merchant_id = $1 AND group_id = $2 "
        "ORDER BY id DESC LIMIT 1", merchant_id, group_id))


async def set_group_policy(db: asyncpg.Pool | asyncpg.Connection, merchant_id: str,
                           group: GroupPolicy) -> GroupPolicy:
    own = dict(group.overrides)
    return _group(group.group_id, await db.fetchrow(
        """INSERT INTO billing_group_policies (merchant_id, group_id, unit_s, grace_s,
               minimum_yen, max_talk_s, tax_percent, changed_by)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *""",
        merchant_id, group.group_id, *(own.get(n) for n in FIELDS), group.changed_by))


async def in_force(db: asyncpg.Pool | asyncpg.Connection, merchant_id: str,
                   group_id: int | None = None) -> Policy:
    """The policy a consultation is reserved and rated with: the merchant's, with the
    group's fields in their place when it is through a group."""
    merchant = await current(db, merchant_id)
    if group_id is None:
        return merchant
    return (await current_group(db, merchant_id, group_id)).over(merchant)


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


async def terms_for(pool: asyncpg.Pool, merchant_id: str, price_per_minute_yen: int,
                    group_id: int | None = None) -> Terms:
    """The terms of a consultation at this price under the policy in force (the
    merchant's; through a group, with the group's fields)."""
    return (await in_force(pool, merchant_id, group_id)).terms(price_per_minute_yen)
