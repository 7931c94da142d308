"""The customer's number verified before the click-to-call page may ask for a call, in
PostgreSQL (migration ``0950_click_web.sql``).

A code (:data:`CODE_DIGITS` digits, valid :data:`CODE_VALID_S`) is sent by SMS through
the SMS outbox (its ``sms_messages`` row is written in the code's transaction; the SMS
worker sends it): at most :data:`CODES_PER_NUMBER` per number and
:data:`CODES_PER_CLIENT` per client address in :data:`WINDOW_S`. The newest unused code
of the number is the one checked; the :data:`WRONG_LIMIT`-th wrong code for the number
in :data:`WINDOW_S` (whichever of its codes) locks the number for :data:`LOCK_S`
(nothing is sent to it or checked for it meanwhile). The
right code opens a verified session (:data:`VERIFIED_S`; the cookie's token and a CSRF
token, only the token's SHA-256 kept) for that number at that merchant, and a call may be
asked for at most :data:`CALLS_PER_NUMBER` times per number and :data:`CALLS_PER_CLIENT`
per client address in :data:`WINDOW_S` (every request counts, refused or not).

Refusals are :class:`~shared.http.ApiError`: 429 ``rate-limited`` (with
``retry_after_s``), 423 ``number-locked`` (with ``retry_after_s``), 400 ``code-wrong``
(with ``attempts_left``), 410 ``code-expired`` (no live code: ask for one again).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from ivr_platform.sms_store import enqueue
from shared.browser_session import csrf_matches, digest, new_csrf_token, new_token
from shared.http import ApiError
from shared.phone import E164

CODE_DIGITS = 6
CODE_VALID_S = 300
WINDOW_S = 900
CODES_PER_NUMBER = 3
CODES_PER_CLIENT = 10
WRONG_LIMIT = 3
LOCK_S = 1800
VERIFIED_S = 1800
CALLS_PER_NUMBER = 3
CALLS_PER_CLIENT = 10


@dataclass(frozen=True, slots=True)
class Verified:
    """A number verified at a merchant, for a while."""

    merchant_id: str
    number: E164
    csrf_token: str
    expires_at: datetime

    def csrf_ok(self, sent: str) -> bool:
        return csrf_matches(sent, self.csrf_token)


@dataclass(frozen=True, slots=True)
class Opened:
    token: str
    verified: Verified


class RateLimited(ApiError):
    def __init__(self, what: str, retry_after_s: int) -> None:
        super().__init__(429, "rate-limited", f"too many {what}; try again later",
                         retry_after_s=retry_after_s)


class NumberLocked(ApiError):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(423, "number-locked", "too many wrong codes for this number; "
                         "try again later", field="number", retry_after_s=retry_after_s)


class PhoneCodes:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def send(self, merchant_id: str, number: E164, client: str, sender: str,
                   text: str, provider: str, now: datetime) -> None:
        """A new code for the number, its SMS queued (``text`` with ``{code}``)."""
        code = f"{secrets.randbelow(10 ** CODE_DIGITS):0{CODE_DIGITS}d}"
        since = now - timedelta(seconds=WINDOW_S)
        async with self.pool.acquire() as conn, conn.transaction():
            # one number at a time: its count and lock are read and written in turn
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                               f"click-phone:{merchant_id}:{number}")
            await _not_locked(conn, merchant_id, number, now)
            by_number, by_client = await conn.fetchrow(
                """SELECT (SELECT count(*) FROM click_phone_codes
                           WHERE merchant_id = $1 AND number = $2 AND sent_at > $4),
                          (SELECT count(*) FROM click_phone_codes
                           WHERE client = $3 AND sent_at > $4)""",
                merchant_id, str(number), client, since)
            if by_number >= CODES_PER_NUMBER or by_client >= CODES_PER_CLIENT:
                raise RateLimited("codes", WINDOW_S)
            sms_id = await enqueue(conn, merchant_id, number, sender,
                                   text.format(code=code), provider)
            await conn.execute(
                """INSERT INTO click_phone_codes (merchant_id, number, client, code_sha256,
                       sms_id, sent_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                merchant_id, str(number), client, digest(code), sms_id, now,
                now + timedelta(seconds=CODE_VALID_S))

    async def verify(self, merchant_id: str, number: E164, code: str, now: datetime
                     ) -> Opened:
        """The verified session the right code opens; else the refusal, raised once the
        wrong code is counted (and the number locked at the limit) for good."""
        async with self.pool.acquire() as conn, conn.transaction():
            outcome = await self._check(conn, merchant_id, number, code, now)
        if isinstance(outcome, ApiError):
            raise outcome
        return outcome

    async def _check(self, conn: asyncpg.Connection, merchant_id: str, number: E164,
                     code: str, now: datetime) -> Opened | ApiError:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                           f"click-phone:{merchant_id}:{number}")
        await _not_locked(conn, merchant_id, number, now)
        row = await conn.fetchrow(
            """SELECT id, code_sha256 FROM click_phone_codes
               WHERE merchant_id = $1 AND number = $2 AND used_at IS NULL
                 AND expires_at > $3 ORDER BY sent_at DESC LIMIT 1""",
            merchant_id, str(number), now)
        if row is None:
            raise ApiError(410, "code-expired", "no live code for this number: ask for a "
                           "new one", field="code")
        if not hmac.compare_digest(row["code_sha256"], digest(code)):
            await conn.execute("UPDATE click_phone_codes SET wrong = wrong + 1 WHERE id = $1",
                               row["id"])
            # the number's wrong codes in the window: a new code does not start again
            wrong: int = await conn.fetchval(
                """SELECT sum(wrong) FROM click_phone_codes
                   WHERE merchant_id = $1 AND number = $2 AND sent_at > $3""",
                merchant_id, str(number), now - timedelta(seconds=WINDOW_S))
            if wrong < WRONG_LIMIT:
                return ApiError(400, "code-wrong", "the code is not the one sent",
                                field="code", attempts_left=WRONG_LIMIT - wrong)
            await conn.execute(
                """INSERT INTO click_phone_locks (merchant_id, number, locked_until)
                   VALUES ($1, $2, $3) ON CONFLICT (merchant_id, number)
                   DO UPDATE SET locked_until = $3""",
                merchant_id, str(number), now + timedelta(seconds=LOCK_S))
            await conn.execute(
                "UPDATE click_phone_codes SET used_at = $3 WHERE merchant_id = $1 "
                "AND number = $2 AND used_at IS NULL", merchant_id, str(number), now)
            return NumberLocked(LOCK_S)
        await conn.execute("UPDATE click_phone_codes SET used_at = $2 WHERE id = $1",
                           row["id"], now)
        token, csrf = new_token(), new_csrf_token()
        expires = now + timedelta(seconds=VERIFIED_S)
        await conn.execute(
            """INSERT INTO click_verified (token_sha256, csrf_token, merchant_id, number,
                   created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)""",
            digest(token), csrf, merchant_id, str(number), now, expires)
        return Opened(token, Verified(merchant_id, number, csrf, expires))

    async def verified(self, merchant_id: str, token: str, now: datetime) -> Verified | None:
        row = await self.pool.fetchrow(
            """SELECT number, csrf_token, expires_at FROM click_verified
               WHERE token_sha256 = $1 AND merchant_id = $2 AND expires_at > $3""",
            digest(token), merchant_id, now)
        if row is None:
            return None
        return Verified(merchant_id, E164.parse(row["number"]), row["csrf_token"],
                        row["expires_at"])

    async def call_asked(self, verified: Verified, client: str, now: datetime) -> int:
        """The call asked for, counted (refused or not: its id); 429 once the number or
        the client address asked for too many."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                               f"click-phone:{verified.merchant_id}:{verified.number}")
            by_number, by_client = await conn.fetchrow(
                """SELECT (SELECT count(*) FROM click_web_calls
                           WHERE merchant_id = $1 AND number = $2 AND requested_at > $4),
                          (SELECT count(*) FROM click_web_calls
                           WHERE client = $3 AND requested_at > $4)""",
                verified.merchant_id, str(verified.number), client,
                now - timedelta(seconds=WINDOW_S))
            if by_number >= CALLS_PER_NUMBER or by_client >= CALLS_PER_CLIENT:
                raise RateLimited("calls", WINDOW_S)
            asked: int = await conn.fetchval(
                """INSERT INTO click_web_calls (merchant_id, number, client, requested_at)
                   VALUES ($1, $2, $3, $4) RETURNING id""",
                verified.merchant_id, str(verified.number), client, now)
        return asked

    async def called(self, asked: int, callback_id: str) -> None:
        """The call asked for was stored as this job."""
        await self.pool.execute("UPDATE click_web_calls SET callback_id = $2 WHERE id = $1",
                                asked, callback_id)

    async def call_of(self, verified: Verified, callback_id: str) -> bool:
        """Whether the call was asked for by this verified number."""
        return bool(await self.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM click_web_calls WHERE callback_id = $1 AND "
            "merchant_id = $2 AND number = $3)", callback_id, verified.merchant_id,
            str(verified.number)))


async def _not_locked(conn: asyncpg.Connection, merchant_id: str, number: E164,
                      now: datetime) -> None:
    until = await conn.fetchval(
        "SELECT locked_until FROM click_phone_locks WHERE merchant_id = $1 AND number = $2 "
        "AND locked_until > $3", merchant_id, str(number), now)
    if until is not None:
        raise NumberLocked(int((until - now).total_seconds()) + 1)
