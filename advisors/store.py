"""The merchant's directory in PostgreSQL: settings, advisors, groups, customers.

Every method is scoped to one merchant: an id of another merchant's row is not found.
Unique violations become :class:`~advisors.errors.Duplicate` naming the field (code,
name, account, numbers); a group or advisor id that is not the merchant's is a 400
naming ``groups`` or ``members``. Presence and assignment are in :mod:`advisors.live`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import asyncpg

from advisors.errors import Duplicate, InUse, NotFound, Retired
from advisors.model import (
    Advisor,
    AfterCallMode,
    Contact,
    Customer,
    Desk,
    FirstParty,
    Group,
    PstnContact,
    Rules,
    SipContact,
    WhenLinesBusy,
)
from advisors.presence import Presence, Session
from advisors.schemas import AdvisorInput, CustomerInput, GroupInput
from shared.http import InvalidField
from shared.phone import E164

#: why a group cannot be deleted now (the site's consultations and flows that use it);
#: empty: it can
GroupInUse = Callable[[asyncpg.Connection, str, Group], Awaitable[list[str]]]

_UNIQUE_FIELDS = {"advisors_merchant_id_code_key": ("code", "another advisor has this code"),
                  "advisor_groups_merchant_id_name_key": ("name", "a group has this name"),
                  "customers_merchant_id_account_key": ("account", "an account has this id"),
                  "customer_numbers_pkey": ("numbers", "a number belongs to another customer")}

_ADVISOR_SELECT = """
    SELECT a.*, p.desk, p.sessions, p.misses, p.reason, p.idle_since, p.wrap_up_token,
           coalesce((SELECT array_agg(m.group_id ORDER BY m.group_id)
                     FROM advisor_group_members m WHERE m.advisor_id = a.id), '{}') AS groups,
           (SELECT e.registered FROM edge_sip_endpoints e WHERE a.contact_kind = 'sip'
              AND e.merchant_id = a.merchant_id AND e.sip_user = a.contact AND e.present
           ) AS sip_registered
    FROM advisors a JOIN advisor_presence p ON p.advisor_id = a.id
    WHERE a.merchant_id = $1"""
#: the current advisors only (a retired one is read by id alone)
_CURRENT_SELECT = _ADVISOR_SELECT + " AND a.retired_at IS NULL"


def _contact(row: asyncpg.Record) -> Contact:
    if row["contact_kind"] == "pstn":
        return PstnContact(E164.parse(row["contact"]))
    return SipContact(row["contact"])


def _contact_columns(contact: Contact) -> tuple[str, str]:
    match contact:
        case PstnContact(number=number):
            return "pstn", str(number)
        case SipContact(user=user):
            return "sip", user


def presence_of(row: asyncpg.Record) -> Presence:
    """A presence row (with the advisor's ``max_concurrent``) as the machine's state."""
    return Presence(desk=Desk(row["desk"]), max_concurrent=row["max_concurrent"],
                    sessions=tuple(Session(s["consultation_id"], s["answered"])
                                   for s in row["sessions"]),
                    misses=row["misses"], reason=row["reason"], idle_since=row["idle_since"],
                    wrap_up_token=row["wrap_up_token"])


def _advisor(row: asyncpg.Record) -> tuple[Advisor, Presence]:
    advisor = Advisor(id=row["id"], merchant_id=row["merchant_id"],
                      display_name=row["display_name"], name_prompt=row["name_prompt"],
                      code=row["code"], contact=_contact(row),
                      price_per_minute_yen=row["price_per_minute_yen"],
                      max_concurrent=row["max_concurrent"], groups=tuple(row["groups"]),
                      created_at=row["created_at"], sip_registered=row["sip_registered"],
                      retired_at=row["retired_at"])
    return advisor, presence_of(row)


def rules_of(row: asyncpg.Record | None) -> Rules:
    if row is None:
        return Rules()
    return Rules(after_call=AfterCallMode(row["after_call"]), wrap_up_s=row["wrap_up_s"],
                 ring_timeout_s=row["ring_timeout_s"],
                 misses_before_break=row["misses_before_break"], lines=row["lines"],
                 click_to_call_first=FirstParty(row["click_to_call_first"]),
                 lines_busy=WhenLinesBusy(row["lines_busy"]),
                 queue_announce_s=row["queue_announce_s"])


async def lock_settings(conn: asyncpg.Connection, merchant_id: str) -> asyncpg.Record:
    """The merchant's settings row (made with the defaults if none), locked ``FOR UPDATE``:
    what serialises a merchant's assignments (and what must not run beside one)."""
    await conn.execute("INSERT INTO advisor_settings (merchant_id) VALUES ($1) "
                       "ON CONFLICT DO NOTHING", merchant_id)
    row: asyncpg.Record = await conn.fetchrow(
        "SELECT * FROM advisor_settings WHERE merchant_id = $1 FOR UPDATE", merchant_id)
    return row


def _duplicate(exc: asyncpg.UniqueViolationError) -> Duplicate:
    field, message = _UNIQUE_FIELDS.get(exc.constraint_name or "", ("id", "already exists"))
    return Duplicate(field, message)


async def check_contact(conn: asyncpg.Connection, merchant_id: str, contact: Contact,
                        operator: str | None) -> None:
    """400 ``invalid-field`` ``contact.user`` for a SIP contact that the edge has no
    endpoint of (the merchant's ``operator`` extension is the edge's operator phone, no
    endpoint: always taken)."""
    if not isinstance(contact, SipContact) or contact.user == operator:
        return
    present = await conn.fetchval("SELECT present FROM edge_sip_endpoints WHERE "
                                  "merchant_id = $1 AND sip_user = $2",
                                  merchant_id, contact.user)
    if not present:
        raise InvalidField("contact.user", "no SIP endpoint of this user at the edge: "
                           "create it there first (PUT /v1/sip-endpoints/{user})")


class AdvisorStore:
    """``operators``: each merchant's operator extension; given, an advisor's SIP contact
    is taken only if the edge has its endpoint (or it is that extension), else 400
    ``contact.user`` (:func:`check_contact`; the edge's endpoints:
    :mod:`advisors.edge_phones`)."""

    def __init__(self, pool: asyncpg.Pool, operators: Mapping[str, str] | None = None
                 ) -> None:
        self.pool = pool
        self.operators = operators

    async def _check_contact(self, conn: asyncpg.Connection, merchant_id: str,
                             contact: Contact | None) -> None:
        if self.operators is not None and contact is not None:
            await check_contact(conn, merchant_id, contact, self.operators.get(merchant_id))

    # --- settings -------------------------------------------------------------------------

    async def rules(self, merchant_id: str) -> Rules:
        return rules_of(await self.pool.fetchrow(
            "SELECT * FROM advisor_settings WHERE merchant_id = $1", merchant_id))

    async def set_rules(self, merchant_id: str, rules: Rules) -> Rules:
        await self.pool.execute(
            """INSERT INTO advisor_settings AS s (merchant_id, after_call, wrap_up_s,
                   ring_timeout_s, misses_before_break, lines, click_to_call_first,
                   lines_busy, queue_announce_s)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (merchant_id) DO UPDATE SET after_call = $2, wrap_up_s = $3,
                   ring_timeout_s = $4, misses_before_break = $5, lines = $6,
                   click_to_call_first = $7, lines_busy = $8, queue_announce_s = $9,
                   updated_at = now()""",
            merchant_id, rules.after_call.value, rules.wrap_up_s, rules.ring_timeout_s,
            rules.misses_before_break, rules.lines, rules.click_to_call_first.value,
            rules.lines_busy.value, rules.queue_announce_s)
        return rules

    # --- advisors -------------------------------------------------------------------------

    async def advisors(self, merchant_id: str) -> list[tuple[Advisor, Presence]]:
        """The current advisors (not retired)."""
        rows = await self.pool.fetch(_CURRENT_SELECT + " ORDER BY a.id", merchant_id)
        return [_advisor(r) for r in rows]

    async def advisor(self, merchant_id: str, advisor_id: int,
                      conn: asyncpg.Connection | None = None) -> tuple[Advisor, Presence]:
        """The advisor of this id, retired or not."""
        row = await (conn or self.pool).fetchrow(_ADVISOR_SELECT + " AND a.id = $2",
                                                 merchant_id, advisor_id)
        if row is None:
            raise NotFound("advisor", advisor_id)
        return _advisor(row)

    async def advisor_by_code(self, merchant_id: str, code: str) -> Advisor | None:
        row = await self.pool.fetchrow(_CURRENT_SELECT + " AND a.code = $2", merchant_id, code)
        return None if row is None else _advisor(row)[0]

    async def advisors_by_contact(self, merchant_id: str, contacts: Sequence[Contact],
                                  conn: asyncpg.Connection | None = None, *,
                                  lock: bool = False) -> list[tuple[Advisor, Presence]]:
        """The merchant's current advisors reached at any of ``contacts`` (a phone calling in is
        looked up by its number, or by its SIP user), lowest id first; ``lock``: their
        presence rows ``FOR UPDATE`` (pass ``conn`` in a transaction)."""
        columns = [_contact_columns(c) for c in contacts]
        if not columns:
            return []
        rows = await (conn or self.pool).fetch(
            _CURRENT_SELECT + " AND (a.contact_kind, a.contact) IN "
            "(SELECT * FROM unnest($2::text[], $3::text[])) ORDER BY a.id"
            + (" FOR UPDATE OF p" if lock else ""),
            merchant_id, [k for k, _ in columns], [c for _, c in columns])
        return [_advisor(r) for r in rows]

    async def create_advisor(self, merchant_id: str, new: AdvisorInput
                             ) -> tuple[Advisor, Presence]:
        assert new.contact is not None  # parse_advisor(create=True) requires these
        kind, contact = _contact_columns(new.contact)
        async with self._transaction() as conn:
            await self._check_contact(conn, merchant_id, new.contact)
            advisor_id = await conn.fetchval(
                """INSERT INTO advisors (merchant_id, display_name, name_prompt, code,
                       contact_kind, contact, price_per_minute_yen, max_concurrent)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id""",
                merchant_id, new.display_name, new.name_prompt or "", new.code, kind, contact,
                new.price_per_minute_yen, new.max_concurrent or 1)
            await conn.execute("INSERT INTO advisor_presence (advisor_id, merchant_id) "
                               "VALUES ($1, $2)", advisor_id, merchant_id)
            if new.groups:
                await _join(conn, merchant_id, [(g, advisor_id) for g in new.groups], "groups")
            return await self.advisor(merchant_id, advisor_id, conn)

    async def update_advisor(self, merchant_id: str, advisor_id: int, changes: AdvisorInput
                             ) -> tuple[Advisor, Presence]:
        columns: dict[str, Any] = {
            k: getattr(changes, k) for k in ("display_name", "name_prompt", "code",
                                             "price_per_minute_yen", "max_concurrent")
            if getattr(changes, k) is not None}
        if changes.contact is not None:
            columns["contact_kind"], columns["contact"] = _contact_columns(changes.contact)
        async with self._transaction() as conn:
            if (await self.advisor(merchant_id, advisor_id, conn))[0].retired_at is not None:
                raise Retired(advisor_id)
            await self._check_contact(conn, merchant_id, changes.contact)
            if columns:
                sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(columns, start=3))
                await conn.execute(f"UPDATE advisors SET {sets} WHERE merchant_id = $1 "
                                   "AND id = $2", merchant_id, advisor_id, *columns.values())
            if changes.groups is not None:
                await conn.execute("DELETE FROM advisor_group_members WHERE advisor_id = $1",
                                   advisor_id)
                await _join(conn, merchant_id, [(g, advisor_id) for g in changes.groups],
                            "groups")
            return await self.advisor(merchant_id, advisor_id, conn)

    # --- groups ---------------------------------------------------------------------------

    async def groups(self, merchant_id: str, group_id: int | None = None,
                     conn: asyncpg.Connection | None = None) -> list[Group]:
        rows = await (conn or self.pool).fetch(
            """SELECT g.id, g.merchant_id, g.name, g.price_per_minute_yen,
                      coalesce(array_agg(m.advisor_id ORDER BY m.advisor_id)
                               FILTER (WHERE m.advisor_id IS NOT NULL), '{}') AS members
               FROM advisor_groups g LEFT JOIN advisor_group_members m ON m.group_id = g.id
               WHERE g.merchant_id = $1 AND ($2::bigint IS NULL OR g.id = $2)
               GROUP BY g.id ORDER BY g.id""", merchant_id, group_id)
        return [Group(r["id"], r["merchant_id"], r["name"], tuple(r["members"]),
                      r["price_per_minute_yen"]) for r in rows]

    async def group(self, merchant_id: str, group_id: int,
                    conn: asyncpg.Connection | None = None) -> Group:
        found = await self.groups(merchant_id, group_id, conn)
        if not found:
            raise NotFound("group", group_id)
        return found[0]

    async def create_group(self, merchant_id: str, new: GroupInput) -> Group:
        async with self._transaction() as conn:
            group_id = await conn.fetchval(
                "INSERT INTO advisor_groups (merchant_id, name, price_per_minute_yen) "
                "VALUES ($1, $2, $3) RETURNING id",
                merchant_id, new.name, None if new.price is None else new.price.yen)
            await _join(conn, merchant_id, [(group_id, a) for a in new.members or ()],
                        "members")
            return await self.group(merchant_id, group_id, conn)

    async def update_group(self, merchant_id: str, group_id: int, changes: GroupInput
                           ) -> Group:
        async with self._transaction() as conn:
            await self.group(merchant_id, group_id, conn)
            if changes.name is not None:
                await conn.execute("UPDATE advisor_groups SET name = $2 WHERE id = $1",
                                   group_id, changes.name)
            if changes.price is not None:
                await conn.execute(
                    "UPDATE advisor_groups SET price_per_minute_yen = $2 WHERE id = $1",
                    group_id, changes.price.yen)
            if changes.members is not None:
                await conn.execute("DELETE FROM advisor_group_members WHERE group_id = $1",
                                   group_id)
                await _join(conn, merchant_id, [(group_id, a) for a in changes.members],
                            "members")
            return await self.group(merchant_id, group_id, conn)

    async def delete_group(self, merchant_id: str, group_id: int,
                           in_use: GroupInUse | None = None) -> Group:
        """Delete the group (404 if not the merchant's): its memberships go with it, the
        consultation records naming it stay. Under the merchant's settings lock (no
        assignment starts meanwhile): 409 ``group-in-use`` naming what ``in_use`` finds."""
        async with self._transaction() as conn:
            await lock_settings(conn, merchant_id)
            group = await self.group(merchant_id, group_id, conn)
            uses = [] if in_use is None else await in_use(conn, merchant_id, group)
            if uses:
                raise InUse(group_id, uses)
            await conn.execute("DELETE FROM advisor_groups WHERE id = $1", group_id)
            return group

    # --- customers ------------------------------------------------------------------------

    async def customers(self, merchant_id: str, customer_id: int | None = None,
                        conn: asyncpg.Connection | None = None) -> list[Customer]:
        rows = await (conn or self.pool).fetch(
            """SELECT c.id, c.merchant_id, c.account, c.name,
                      coalesce(array_agg(n.number ORDER BY n.number)
                               FILTER (WHERE n.number IS NOT NULL), '{}') AS numbers
               FROM customers c LEFT JOIN customer_numbers n ON n.customer_id = c.id
               WHERE c.merchant_id = $1 AND ($2::bigint IS NULL OR c.id = $2)
               GROUP BY c.id ORDER BY c.id""", merchant_id, customer_id)
        return [Customer(r["id"], r["merchant_id"], r["account"], r["name"],
                         tuple(E164.parse(n) for n in r["numbers"])) for r in rows]

    async def customer(self, merchant_id: str, customer_id: int,
                       conn: asyncpg.Connection | None = None) -> Customer:
        found = await self.customers(merchant_id, customer_id, conn)
        if not found:
            raise NotFound("customer", customer_id)
        return found[0]

    async def customer_by_number(self, merchant_id: str, number: E164) -> Customer | None:
        customer_id = await self.pool.fetchval(
            "SELECT customer_id FROM customer_numbers WHERE merchant_id = $1 AND number = $2",
            merchant_id, str(number))
        return None if customer_id is None else await self.customer(merchant_id, customer_id)

    async def account_by_number(self, merchant_id: str, number: E164,
                                db: asyncpg.Pool | asyncpg.Connection | None = None
                                ) -> str | None:
        """The account of the merchant's customer with this number (one statement on
        ``db``, default the pool: the question billing asks before each consultation)."""
        account: str | None = await (db or self.pool).fetchval(
            """SELECT c.account FROM customer_numbers n
               JOIN customers c ON c.merchant_id = n.merchant_id AND c.id = n.customer_id
               WHERE n.merchant_id = $1 AND n.number = $2""", merchant_id, str(number))
        return account

    async def create_customer(self, merchant_id: str, new: CustomerInput) -> Customer:
        async with self._transaction() as conn:
            customer_id = await conn.fetchval(
                "INSERT INTO customers (merchant_id, account, name) VALUES ($1, $2, $3) "
                "RETURNING id", merchant_id, new.account, new.name or "")
            await _numbers(conn, merchant_id, customer_id, new.numbers or ())
            return await self.customer(merchant_id, customer_id, conn)

    async def update_customer(self, merchant_id: str, customer_id: int,
                              changes: CustomerInput) -> Customer:
        async with self._transaction() as conn:
            await self.customer(merchant_id, customer_id, conn)
            for column in ("account", "name"):
                value = getattr(changes, column)
                if value is not None:
                    await conn.execute(f"UPDATE customers SET {column} = $2 WHERE id = $1",
                                       customer_id, value)
            if changes.numbers is not None:
                await conn.execute("DELETE FROM customer_numbers WHERE customer_id = $1",
                                   customer_id)
                await _numbers(conn, merchant_id, customer_id, changes.numbers)
            return await self.customer(merchant_id, customer_id, conn)

    # ---------------------------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self.pool)


class _Transaction:
    """A pooled connection in a transaction; a unique violation leaves as ``Duplicate``."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def __aenter__(self) -> asyncpg.Connection:
        self.conn = await self.pool.acquire()
        self.tx = self.conn.transaction()
        await self.tx.start()
        return self.conn

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: object) -> None:
        try:
            if exc is None:
                await self.tx.commit()
            else:
                await self.tx.rollback()
        finally:
            await self.pool.release(self.conn)
        if isinstance(exc, asyncpg.UniqueViolationError):
            raise _duplicate(exc) from None


async def _join(conn: asyncpg.Connection, merchant_id: str, pairs: Sequence[tuple[int, int]],
                field: str) -> None:
    """Group memberships (group id, advisor id); an id not of this merchant is a 400."""
    if not pairs:
        return
    if await conn.fetchval("SELECT true FROM advisors WHERE id = ANY($1::bigint[]) "
                           "AND retired_at IS NOT NULL", [a for _, a in pairs]):
        raise InvalidField(field, "a retired advisor" if field == "members"
                           else "a retired advisor joins no group")
    try:
        await conn.executemany(
            "INSERT INTO advisor_group_members (merchant_id, group_id, advisor_id) "
            "VALUES ($1, $2, $3)", [(merchant_id, g, a) for g, a in pairs])
    except asyncpg.ForeignKeyViolationError:
        raise InvalidField(field, "an id that is not one of this merchant's "
                           + ("groups" if field == "groups" else "advisors")) from None


async def _numbers(conn: asyncpg.Connection, merchant_id: str, customer_id: int,
                   numbers: Sequence[E164]) -> None:
    await conn.executemany(
        "INSERT INTO customer_numbers (merchant_id, number, customer_id) VALUES ($1, $2, $3)",
        [(merchant_id, str(n), customer_id) for n in numbers])
