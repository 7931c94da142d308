"""Asterisk's own record of a leg, for legs whose ARI events the server missed.

Every leg is originated with a hangup handler (``[cbgw-leg-end]`` in the
callback site's extensions.conf) that writes, when the leg ends, into
Asterisk's database (AstDB: on disk, kept across restarts)::

    cbgw_leg_<UTC day>/<channel id> = <answer epoch, 0 if never>|<end epoch>|<cause>

Normally the server sees a leg end over ARI and never reads this. It reads it
when it could not see: the events websocket was down when the leg ended, the
server was killed, or a rescued job's leg is gone. Then an answered call still
gets its CDR, with Asterisk's answer and end times, and is never dialled again.

ARI cannot read AstDB directly (``DB()`` is a "dangerous" function, refused to
external interfaces unless ``live_dangerously``), so the lookup is a Local
channel into ``[cbgw-leg-lookup]``, whose dialplan reads the record and brings
it into our Stasis app as ``StasisStart`` arguments. That costs one Local
channel per lookup, which only happens after faults.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

from shared import ari

if TYPE_CHECKING:
    from callback_server.answerlog import AnswerLog

log = logging.getLogger(__name__)

LOOKUP_ENDPOINT = "Local/s@cbgw-leg-lookup/n"
PURGE_ENDPOINT = "Local/s@cbgw-leg-purge/n"
RECORD_ARG = "leg-record"
PURGED_ARG = "leg-purged"
KEEP_DAYS = 2


@dataclass(frozen=True, slots=True)
class LegRecord:
    """What Asterisk saw of one leg when it ended.

    ``ended_at`` None: Asterisk logged the leg's answer but died with the leg up
    (:mod:`callback_server.answerlog`), so when it ended, and why, are unknown."""

    answered_at: datetime | None
    ended_at: datetime | None
    cause: int

    @property
    def answered(self) -> bool:
        return self.answered_at is not None

    @classmethod
    def parse(cls, value: str) -> LegRecord | None:
        """``answer|end|cause`` (epochs with fractions); None for an empty record.

        Raises ``ValueError`` for a malformed one."""
        if not value.strip():
            return None
        parts = value.strip().split("|")
        if len(parts) != 3:
            raise ValueError(f"leg record {value!r}: expected answer|end|cause")
        try:
            answered_at = answer_time(parts[0])
            ended_at = _epoch(Decimal(parts[1]))
            cause = int(parts[2] or "0")
        except (InvalidOperation, ValueError):
            raise ValueError(f"leg record {value!r}: not numbers") from None
        if answered_at is not None and ended_at < answered_at:
            # The answer time is in microseconds, the end in milliseconds: a leg
            # hung up within the same millisecond can read as ending first.
            ended_at = answered_at
        return cls(answered_at, ended_at, cause)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch(value: Decimal) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value * 1_000_000))


def answer_time(value: str | None) -> datetime | None:
    """Asterisk's ``CDR(answer,u)`` (``1764600000.123456``; ``0`` or empty: never answered)
    as a UTC time, exactly (no float). Raises ``decimal.InvalidOperation`` if malformed."""
    answer = Decimal(value or "0")
    return _epoch(answer) if answer > 0 else None


def days_for(started_at: datetime, now: datetime) -> list[str]:
    """The UTC days (``yyyymmdd``) a leg started at ``started_at`` may have ended on."""
    first = started_at.astimezone(UTC).date()
    last = min(now.astimezone(UTC).date(), first + timedelta(days=1))
    days = [first.strftime("%Y%m%d")]
    if last > first:
        days.append(last.strftime("%Y%m%d"))
    return days


class LegRecords:
    """Reads (and purges) leg records through the app's own Asterisk.

    ``on_stasis_start`` must see every ``StasisStart`` no call owns (the
    StasisApp's stray handler calls it first): the lookup channel arrives there.
    """

    def __init__(self, client: ari.AriClient, *, timeout_s: float = 5.0,
                 answers: AnswerLog | None = None) -> None:
        self.client = client
        self.timeout_s = timeout_s
        #: Asterisk's log of answers: read for a leg with no record (Asterisk died)
        self.answers = answers
        self._waiting: dict[str, asyncio.Future[str]] = {}
        self._lookups: dict[str, asyncio.Task[LegRecord | None]] = {}

    async def fetch(self, channel_id: str, started_at: datetime) -> LegRecord | None:
        """Asterisk's record of ``channel_id`` (its answer alone if the leg ended with
        Asterisk); None if it has none.

        Concurrent fetches of one channel share one lookup (its answer comes
        back keyed by the channel id); a cancelled caller does not cancel it for
        the others. Raises ``ari.AriError`` or ``TimeoutError`` when Asterisk
        cannot be asked."""
        lookup = self._lookups.get(channel_id)
        if lookup is None:
            lookup = asyncio.create_task(self._lookup(channel_id, started_at),
                                         name=f"leg record {channel_id}")
            self._lookups[channel_id] = lookup
            lookup.add_done_callback(lambda done: self._forget(channel_id, done))
        return await asyncio.shield(lookup)

    def _forget(self, channel_id: str, lookup: asyncio.Task[LegRecord | None]) -> None:
        if self._lookups.get(channel_id) is lookup:
            del self._lookups[channel_id]
        if not lookup.cancelled():
            lookup.exception()  # retrieved: every caller may have gone

    async def _lookup(self, channel_id: str, started_at: datetime) -> LegRecord | None:
        days = days_for(started_at, datetime.now(UTC))
        token = f"lookup-{secrets.token_hex(6)}"
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[channel_id] = future
        try:
            await self.client.originate(
                LOOKUP_ENDPOINT, channel_id=token, app_args=["lookup"],
                variables={"__CBGW_LEG": channel_id, "__CBGW_DAYS": "-".join(days),
                           "__CBGW_APP": self.client.app})
            value = await asyncio.wait_for(future, self.timeout_s)
        finally:
            self._waiting.pop(channel_id, None)
            await _hang_up_quietly(self.client, token)
        record = LegRecord.parse(value)
        if record is None and self.answers is not None:
            answered_at = await self.answers.answered_at(channel_id)
            if answered_at is not None:
                record = LegRecord(answered_at, None, 0)
        log.info("leg record of %s: %s", channel_id, record or "none")
        return record

    async def purge(self, now: datetime | None = None) -> None:
        """Delete the records of the days before the last ``KEEP_DAYS`` (best effort)."""
        today = (now or datetime.now(UTC)).astimezone(UTC).date()
        for back in (KEEP_DAYS + 1, KEEP_DAYS + 2):
            day = (today - timedelta(days=back)).strftime("%Y%m%d")
            token = f"purge-{secrets.token_hex(6)}"
            try:
                await self.client.originate(
                    PURGE_ENDPOINT, channel_id=token, app_args=["purge"],
                    variables={"__CBGW_DAY": day, "__CBGW_APP": self.client.app})
            except ari.AriError as exc:
                log.warning("purge of leg records of %s failed: %s", day, exc)

    def on_stasis_start(self, start: ari.StasisStart) -> bool:
        """True if ``start`` is one of ours (a lookup or purge half); it must be hung up."""
        if not start.args or start.args[0] not in (RECORD_ARG, PURGED_ARG):
            return False
        if start.args[0] == RECORD_ARG and len(start.args) >= 2:
            future = self._waiting.get(start.args[1])
            if future is not None and not future.done():
                future.set_result(",".join(start.args[2:]))
        return True


async def _hang_up_quietly(client: ari.AriClient, channel_id: str) -> None:
    try:
        await client.hangup(channel_id)
    except ari.AriError:
        pass            # already gone with its other half
