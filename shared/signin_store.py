"""One-time sign-in links and the browser sessions they open, in PostgreSQL: the part the
advisor's page (``advisor_signin_links`` / ``advisor_sessions``) and the operators' page
(``operator_signin_links`` / ``operator_sessions``) share.

Both pairs of tables have the same shape: a link row (``token_sha256``, ``merchant_id``,
``created_at``, ``expires_at``, ``used_at``) and a session row (``id``, ``token_sha256``,
``csrf_token``, ``merchant_id``, ``created_at``, ``expires_at``, ``revoked_at``), each
with the same *subject* columns naming whom the session acts for besides the merchant
(``advisor_id`` for an advisor; none for a merchant's operators). Only tokens' SHA-256
digests are stored (:func:`shared.browser_session.digest`). Issuing a link is each
caller's own (what it may be issued for differs).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import asyncpg

from shared.browser_session import digest, new_csrf_token, new_token


class SigninTables:
    """The queries over one pair of link and session tables. Table and column names are
    the caller's constants, never input."""

    def __init__(self, links: str, sessions: str, subject: Sequence[str] = ()) -> None:
        self.links = links
        self.sessions = sessions
        self.subject = tuple(subject)
        cols = "".join(f", {c}" for c in self.subject)
        self._returning = f"id, merchant_id{cols}, csrf_token, expires_at"
        self._sign_in = f"""WITH used AS (
                   UPDATE {links} SET used_at = $2
                   WHERE token_sha256 = $1 AND used_at IS NULL AND expires_at > $2
                   RETURNING merchant_id{cols})
               INSERT INTO {sessions} (token_sha256, csrf_token, merchant_id{cols},
                   created_at, expires_at)
               SELECT $3, $4, merchant_id{cols}, $2, $5 FROM used
               RETURNING {self._returning}"""
        whose = "".join(f" AND {c} = ${i + 3}" for i, c in enumerate(self.subject))
        self._void_links = (f"UPDATE {links} SET used_at = $2 "
                            f"WHERE merchant_id = $1{whose} AND used_at IS NULL")
        self._end_sessions = f"""WITH ended AS (
               UPDATE {sessions} SET revoked_at = $2
               WHERE merchant_id = $1{whose} AND revoked_at IS NULL
               RETURNING 1)
           SELECT count(*) FROM ended"""

    async def usable(self, pool: asyncpg.Pool, link_token: str, now: datetime) -> bool:
        """Whether the link would sign in now (known, unused, not expired)."""
        return bool(await pool.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM {self.links} WHERE token_sha256 = $1 "
            "AND used_at IS NULL AND expires_at > $2)", digest(link_token), now))

    async def sign_in(self, pool: asyncpg.Pool, link_token: str, now: datetime,
                      valid_s: int) -> tuple[str, asyncpg.Record] | None:
        """Use the link (one ``UPDATE ... WHERE used_at IS NULL``: two uses race to one
        winner): the new session's cookie token and its row, or None for a link unknown,
        used or expired."""
        token = new_token()
        row = await pool.fetchrow(self._sign_in, digest(link_token), now, digest(token),
                                  new_csrf_token(), now + timedelta(seconds=valid_s))
        return None if row is None else (token, row)

    async def current(self, pool: asyncpg.Pool, token: str, now: datetime
                      ) -> asyncpg.Record | None:
        """The live session of a cookie's token: not expired, not revoked."""
        return await pool.fetchrow(
            f"SELECT {self._returning} FROM {self.sessions} "
            "WHERE token_sha256 = $1 AND revoked_at IS NULL AND expires_at > $2",
            digest(token), now)

    async def sign_out(self, pool: asyncpg.Pool, session_id: int, now: datetime) -> None:
        await pool.execute(f"UPDATE {self.sessions} SET revoked_at = $2 "
                           "WHERE id = $1 AND revoked_at IS NULL", session_id, now)

    async def revoke(self, conn: asyncpg.Connection, merchant_id: str, now: datetime,
                     *subject: object) -> int:
        """Void the unused links and end the sessions of the merchant (and subject), in
        the caller's transaction; the number of sessions ended."""
        await conn.execute(self._void_links, merchant_id, now, *subject)
        ended: int = await conn.fetchval(self._end_sessions, merchant_id, now, *subject)
        return ended
