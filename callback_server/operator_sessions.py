"""The merchant's operators' web sign-in in PostgreSQL (tables ``operator_signin_links``,
``operator_sessions``), as the advisor's (:mod:`advisors.sessions`): the merchant issues
a one-time link valid :data:`~advisors.sessions.LINK_VALID_S` (only its SHA-256 stored);
using it opens a session (another random token for the cookie, only its digest stored,
and a CSRF token) valid :data:`~advisors.sessions.SESSION_VALID_S` unless signed out or
revoked by the merchant. A session acts for its merchant only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from advisors.sessions import LINK_VALID_S, SESSION_VALID_S
from shared.browser_session import csrf_matches, digest, new_token
from shared.signin_store import SigninTables

TABLES = SigninTables("operator_signin_links", "operator_sessions")


@dataclass(frozen=True, slots=True)
class OperatorSession:
    id: int
    merchant_id: str
    csrf_token: str

    def csrf_ok(self, sent: str) -> bool:
        return csrf_matches(sent, self.csrf_token)


class OperatorSessions:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def issue(self, merchant_id: str, now: datetime) -> tuple[str, datetime]:
        """A sign-in link's token and when it expires."""
        token, expires = new_token(), now + timedelta(seconds=LINK_VALID_S)
        await self.pool.execute(
            "INSERT INTO operator_signin_links (token_sha256, merchant_id, created_at,"
            " expires_at) VALUES ($1, $2, $3, $4)", digest(token), merchant_id, now, expires)
        return token, expires

    async def usable(self, link_token: str, now: datetime) -> bool:
        """Whether the link would sign in now (known, unused, not expired)."""
        return await TABLES.usable(self.pool, link_token, now)

    async def sign_in(self, link_token: str, now: datetime) -> str | None:
        """Use the link (two uses race to one winner): the new session's cookie token, or
        None for a link unknown, used or expired."""
        opened = await TABLES.sign_in(self.pool, link_token, now, SESSION_VALID_S)
        return None if opened is None else opened[0]

    async def current(self, token: str, now: datetime) -> OperatorSession | None:
        """The live session of a cookie's token: not expired, not revoked."""
        row = await TABLES.current(self.pool, token, now)
        return None if row is None else OperatorSession(row["id"], row["merchant_id"],
                                                        row["csrf_token"])

    async def sign_out(self, session: OperatorSession, now: datetime) -> None:
        await TABLES.sign_out(self.pool, session.id, now)

    async def revoke(self, merchant_id: str, now: datetime) -> int:
        """End every operator session of the merchant and void its unused links; the
        number of sessions ended."""
        async with self.pool.acquire() as conn, conn.transaction():
            return await TABLES.revoke(conn, merchant_id, now)
