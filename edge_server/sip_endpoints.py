"""Advisors' SIP endpoints at the edge, in PostgreSQL.

An advisor whose contact is ``{"kind": "sip", "user": U}`` at merchant ``M`` is rung by
the callback site as ``sip:M.U@edge`` over its trunk; their softphone registers to the
edge Asterisk as the endpoint ``M.U`` with digest auth. This module keeps those
endpoints (merchant, user, realm and the digest hash ``md5("M.U:realm:password")``:
the password itself is never stored, logged or returned) and announces every change
on the NOTIFY channel ``sip_endpoints`` (payload: the endpoint id) in the change's
transaction, so every edge server pushes it to its own Asterisk
(:mod:`edge_server.sip_push`).

The callback site is told every change of an endpoint's state (created, deleted,
registered at some edge Asterisk or at none: :meth:`SipEndpoints.registrations`, fed by
:mod:`edge_server.sip_registrations`) through the outbox in the change's transaction, as
link kind ``sip_endpoint`` (:mod:`advisors.edge_phones`), each with the endpoint's next
version (sequence ``sip_endpoint_versions``), so the callback site keeps the latest
whatever order the messages arrive in.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from advisors.edge_phones import KIND, PATH, EndpointState
from shared.http import InvalidField
from shared.outbox import Outbox, fact_message_id

#: the NOTIFY channel of changes; the payload is the endpoint id
CHANNEL = "sip_endpoints"
#: what a SIP user may be at the edge: a URI user part and a sorcery id needing no quoting
SIP_USER = re.compile(r"\A[A-Za-z0-9._-]{1,64}\Z")
MIN_PASSWORD = 12
MAX_PASSWORD = 128


def check_user(user: str) -> str:
    """``user`` if it may be a SIP user at the edge; 400 ``invalid-field`` otherwise."""
    if not SIP_USER.match(user):
        raise InvalidField("user", "expected 1..64 of A-Z a-z 0-9 . _ -")
    return user


def check_password(password: object) -> str:
    """``password`` if it may be a softphone's password; 400 ``invalid-field`` (which
    never quotes it) otherwise."""
    if not isinstance(password, str):
        raise InvalidField("password", "required string")
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidField("password", f"expected {MIN_PASSWORD}..{MAX_PASSWORD} characters")
    if not password.isprintable():     # no control characters, no lone surrogates
        raise InvalidField("password", "must be printable characters")
    return password


def endpoint_id(merchant_id: str, user: str) -> str:
    """The endpoint's name in Asterisk (and its auth's and aor's): merchant ids hold no
    ``.``, so the first one separates the merchant from the user."""
    return f"{merchant_id}.{user}"


def advisor_of_channel(channel_name: str) -> tuple[str, str] | None:
    """``(merchant, user)`` of the advisor endpoint a channel belongs to, from its name
    (``PJSIP/acme.hoshino-0000002a``); None for any other channel."""
    tech, _, rest = channel_name.partition("/")
    endpoint = rest.rpartition("-")[0]
    merchant, dot, user = endpoint.partition(".")
    if tech != "PJSIP" or not dot or not merchant or not SIP_USER.match(user):
        return None
    return merchant, user


def digest_ha1(endpoint: str, realm: str, password: str) -> str:
    """RFC 2617's HA1 for the endpoint's user name: what Asterisk's ``md5_cred`` takes."""
    return hashlib.md5(f"{endpoint}:{realm}:{password}".encode(), usedforsecurity=False
                       ).hexdigest()


@dataclass(frozen=True, slots=True)
class SipEndpoint:
    merchant_id: str
    user: str
    realm: str
    ha1: str
    created_at: datetime
    updated_at: datetime

    @property
    def endpoint_id(self) -> str:
        return endpoint_id(self.merchant_id, self.user)

    def to_json(self) -> dict[str, Any]:
        """What the API shows: never the hash."""
        return {"user": self.user, "endpoint": self.endpoint_id, "realm": self.realm,
                "created_at": self.created_at.isoformat(),
                "updated_at": self.updated_at.isoformat()}


def _endpoint(row: asyncpg.Record) -> SipEndpoint:
    return SipEndpoint(row["merchant_id"], row["sip_user"], row["realm"], row["ha1"],
                       row["created_at"], row["updated_at"])


_COLUMNS = "merchant_id, sip_user, realm, ha1, created_at, updated_at"


async def _registered(conn: asyncpg.Connection, endpoint_ids: list[str]) -> set[str]:
    """Which of ``endpoint_ids`` have a registered contact at some edge Asterisk."""
    return {r["endpoint_id"] for r in await conn.fetch(
        "SELECT DISTINCT endpoint_id FROM sip_registrations WHERE endpoint_id = ANY($1)",
        endpoint_ids)}


async def _announce(conn: asyncpg.Connection, merchant_id: str, user: str, version: int, *,
                    exists: bool, registered: bool) -> None:
    """Tell the callback site the endpoint's state as of ``version`` (in the caller's
    transaction)."""
    state = EndpointState(merchant_id, user, exists, registered, version)
    await Outbox.enqueue(conn, kind=KIND, path=PATH, payload=state.to_json(),
                         message_id=fact_message_id(KIND, f"{endpoint_id(merchant_id, user)}"
                                                          f":{version}"),
                         merchant_id=merchant_id)


class SipEndpoints:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def put(self, merchant_id: str, user: str, password: str, realm: str
                  ) -> tuple[SipEndpoint, bool]:
        """Create the endpoint or set its password; True if it was created."""
        name = endpoint_id(merchant_id, user)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"INSERT INTO sip_endpoints (endpoint_id, merchant_id, sip_user, realm, ha1) "
                f"VALUES ($1, $2, $3, $4, $5) ON CONFLICT (endpoint_id) DO UPDATE SET "
                f"realm = EXCLUDED.realm, ha1 = EXCLUDED.ha1, updated_at = now() "
                f"RETURNING {_COLUMNS}, version, (xmax = 0) AS created",
                name, merchant_id, user, realm, digest_ha1(name, realm, password))
            await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, name)
            assert row is not None
            if row["created"]:
                await _announce(conn, merchant_id, user, int(row["version"]),
                                exists=True, registered=False)
        return _endpoint(row), bool(row["created"])

    async def delete(self, merchant_id: str, user: str) -> bool:
        """Remove the endpoint; False if the merchant had none of that user."""
        name = endpoint_id(merchant_id, user)
        async with self.pool.acquire() as conn, conn.transaction():
            gone = await conn.fetchval("DELETE FROM sip_endpoints WHERE endpoint_id = $1 "
                                       "RETURNING true", name)
            if gone:
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, name)
                version = await conn.fetchval("SELECT nextval('sip_endpoint_versions')")
                await _announce(conn, merchant_id, user, int(version), exists=False,
                                registered=False)
        return bool(gone)

    async def registrations(self, asterisk: str, online: set[str]) -> list[str]:
        """Record that, of the advisor endpoints, exactly ``online`` have a registered
        contact at the edge Asterisk ``asterisk`` (its system name); the callback site is
        told of each endpoint registered now at some edge Asterisk and not before, or
        the other way round. Returns those endpoint ids."""
        async with self.pool.acquire() as conn, conn.transaction():
            held = {r["endpoint_id"] for r in await conn.fetch(
                "SELECT endpoint_id FROM sip_registrations WHERE asterisk = $1", asterisk)}
            moved = sorted(held ^ online)
            if not moved:
                return []
            rows = await conn.fetch(   # locked: each edge server's changes one after another
                "SELECT endpoint_id, merchant_id, sip_user FROM sip_endpoints "
                "WHERE endpoint_id = ANY($1) ORDER BY endpoint_id FOR UPDATE", moved)
            before = await _registered(conn, moved)
            await conn.execute("DELETE FROM sip_registrations WHERE asterisk = $1 "
                               "AND NOT endpoint_id = ANY($2)", asterisk, sorted(online))
            await conn.execute(
                "INSERT INTO sip_registrations (endpoint_id, asterisk) SELECT e, $1 FROM "
                "unnest($2::text[]) AS e ON CONFLICT DO NOTHING", asterisk,
                sorted({r["endpoint_id"] for r in rows} & online))
            after = await _registered(conn, moved)
            changed = []
            for row in rows:
                name = row["endpoint_id"]
                if (name in before) == (name in after):
                    continue
                version = await conn.fetchval(
                    "UPDATE sip_endpoints SET version = nextval('sip_endpoint_versions') "
                    "WHERE endpoint_id = $1 RETURNING version", name)
                await _announce(conn, row["merchant_id"], row["sip_user"], int(version),
                                exists=True, registered=name in after)
                changed.append(name)
        return changed

    async def of_merchant(self, merchant_id: str) -> list[SipEndpoint]:
        rows = await self.pool.fetch(f"SELECT {_COLUMNS} FROM sip_endpoints "
                                     f"WHERE merchant_id = $1 ORDER BY sip_user", merchant_id)
        return [_endpoint(r) for r in rows]

    async def get(self, endpoint: str) -> SipEndpoint | None:
        row = await self.pool.fetchrow(f"SELECT {_COLUMNS} FROM sip_endpoints "
                                       f"WHERE endpoint_id = $1", endpoint)
        return None if row is None else _endpoint(row)

    async def all(self) -> list[SipEndpoint]:
        rows = await self.pool.fetch(f"SELECT {_COLUMNS} FROM sip_endpoints "
                                     f"ORDER BY endpoint_id")
        return [_endpoint(r) for r in rows]

    async def fingerprint(self) -> tuple[int, datetime | None]:
        """How many endpoints there are and the last change (a deletion lowers the
        count, a creation or a new password moves the time)."""
        row = await self.pool.fetchrow("SELECT count(*) AS n, max(updated_at) AS last "
                                       "FROM sip_endpoints")
        assert row is not None
        return int(row["n"]), row["last"]
