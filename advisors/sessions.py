"""The advisor's web sign-in in PostgreSQL: one-time sign-in links and the sessions they
open (table ``advisor_signin_links``, ``advisor_sessions``).

The merchant issues a link for one advisor (:meth:`Sessions.issue`): a random token, of
which only its SHA-256 is stored, valid :data:`LINK_VALID_S` and used once. Using it
(:meth:`Sessions.sign_in`, one ``UPDATE ... WHERE used_at IS NULL`` so two uses race to
one winner) opens a session: another random token (the cookie's value; again only its
digest is stored) and a CSRF token the page sends back with every change, valid
:data:`SESSION_VALID_S` unless revoked (signed out, or the merchant revoking the
advisor's sessions). A session names its merchant and advisor: whatever it does is to
that advisor only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from advisors.errors import NotFound
from shared.browser_session import csrf_matches, digest, new_token
from shared.signin_store import SigninTables

#: how long a sign-in link may be used
LINK_VALID_S = 15 * 60
#: how long a session lasts (a working day and then some)
SESSION_VALID_S = 12 * 3600

TABLES = SigninTables("advisor_signin_links", "advisor_sessions", ("advisor_id",))


@dataclass(frozen=True, slots=True)
class SigninLink:
    token: str
    advisor_id: int
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Session:
    id: int
    merchant_id: str
    advisor_id: int
    csrf_token: str
    expires_at: datetime

    def csrf_ok(self, sent: str) -> bool:
        return csrf_matches(sent, self.csrf_token)


@dataclass(frozen=True, slots=True)
class Opened:
    """A session just opened: its token goes in the cookie, never stored."""

    token: str
    session: Session


class Sessions:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def issue(self, merchant_id: str, advisor_id: int, now: datetime) -> SigninLink:
        """A sign-in link for the merchant's advisor (404 if not theirs)."""
        token = new_token()
        expires = now + timedelta(seconds=LINK_VALID_S)
        inserted = await self.pool.fetchval(
            """INSERT INTO advisor_signin_links (token_sha256, merchant_id, advisor_id,
                   created_at, expires_at)
               SELECT $1, merchant_id, id, $4, $5 FROM advisors
               WHERE merchant_id = $2 AND id = $3 AND retired_at IS NULL
               RETURNING advisor_id""",
            digest(token), merchant_id, advisor_id, now, expires)
        if inserted is None:
            raise NotFound("advisor", advisor_id)
        return SigninLink(token, advisor_id, expires)

    async def usable(self, link_token: str, now: datetime) -> bool:
        """Whether the link would sign in now (known, unused, not expired)."""
        return await TABLES.usable(self.pool, link_token, now)

    async def sign_in(self, link_token: str, now: datetime) -> Opened | None:
        """Use the link: a new session, or None for a link unknown, used or expired."""
        opened = await TABLES.sign_in(self.pool, link_token, now, SESSION_VALID_S)
        return None if opened is None else Opened(opened[0], _session(opened[1]))

    async def current(self, token: str, now: datetime) -> Session | None:
        """The live session of a cookie's token: not expired, not revoked."""
        row = await TABLES.current(self.pool, token, now)
        return None if row is None else _session(row)

    async def sign_out(self, session: Session, now: datetime) -> None:
        await TABLES.sign_out(self.pool, session.id, now)

    async def revoke(self, merchant_id: str, advisor_id: int, now: datetime) -> int:
        """End every session of the merchant's advisor and void their unused links; the
        number of sessions ended."""
        async with self.pool.acquire() as conn, conn.transaction():
            return await revoke(conn, merchant_id, advisor_id, now)


async def revoke(conn: asyncpg.Connection, merchant_id: str, advisor_id: int, now: datetime
                 ) -> int:
    """:meth:`Sessions.revoke` in the caller's transaction."""
    return await TABLES.revoke(conn, merchant_id, now, advisor_id)


def _session(row: asyncpg.Record) -> Session:
    return Session(row["id"], row["merchant_id"], row["advisor_id"], row["csrf_token"],
                   row["expires_at"])
