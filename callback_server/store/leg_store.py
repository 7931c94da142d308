"""Legs: one ``callback_attempts`` row per originated channel.

Every leg row is inserted only while the job's lease is still ours
(:meth:`LegStore.persist_leg`), and ``channel_id`` is the primary key: two workers
can never both originate the same leg.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from callback_server.dialer import LastLeg
from callback_server.dialer_messages import PersistAttempt, capped
from callback_server.store.base import StoreBase
from callback_server.store.leg_end import LegEnd, write_leg_end, write_leg_result
from callback_server.store.queue_store import LeaseLost
from shared.db import survives_database_restarts


@dataclass(frozen=True, slots=True)
class LegRow:
    """A persisted leg (``callback_attempts``) with its request's caller and edge call."""

    channel_id: str
    callback_id: str
    merchant_id: str
    leg: str
    carrier_id: str
    endpoint: str
    status: str
    answered: bool
    answered_at: datetime | None
    cause: int | None
    created_at: datetime
    asterisk: str | None
    caller: str
    edge_call_id: str

    @property
    def last(self) -> LastLeg:
        return LastLeg(self.status, self.answered, self.cause)

    @property
    def destination(self) -> str:
        return self.caller if self.leg == "customer" else self.endpoint


#: the first parameter of the guard's admission in :data:`_PERSIST` (after its 13)
_ADMISSION_FROM = 14
#: the job's lease held, as :data:`_PERSIST`'s CTE ``held``: checked and its row share-
#: locked till the commit (a concurrent change of the job waits, one committed meanwhile
#: is seen), not renewed while more than half of it is left. The worker's heartbeat
#: (at most every half lease, ``[callback] heartbeat_s``) keeps it so; renewing it here
#: wrote a new version of the request's row and an entry in each of its five indexes
#: for every leg, the claim's a few milliseconds before.
_HELD = """held AS (
                  SELECT true FROM callback_requests
                  WHERE callback_id = $1 AND lease_owner = $2 AND status = 'dialing'
                    AND lease_expires_at > now() + $3 * interval '500 milliseconds'
                  FOR SHARE)"""
#: the job's lease extended to its full length, as :data:`_PERSIST`'s CTE ``held``: when
#: :data:`_HELD` found less than half of it left (a late heartbeat, or one that renewed
#: it meanwhile), or our lease gone
_RENEWED = """held AS (
                  UPDATE callback_requests
                  SET lease_expires_at = now() + $3 * interval '1 second', heartbeat_at = now()
                  WHERE callback_id = $1 AND lease_owner = $2 AND status = 'dialing'
                  RETURNING true)"""
#: a leg's row stored only while the job's lease holds (``held``: :data:`_HELD`, else
#: :data:`_RENEWED`), the round's flow with it, and only if ``admitted`` (the guard's
#: admission, ``guard.store.admission_ctes``, or :data:`_ADMITTED` for a leg the guard
#: does not admit): one statement
_PERSIST = """WITH {held},
              flow AS (
                  INSERT INTO callback_round_flows (callback_id, attempt_no, merchant_id,
                      flow_name, version)
                  SELECT $1, $4, $5, $6, $7 FROM held WHERE $6::text IS NOT NULL
                  ON CONFLICT (callback_id, attempt_no) DO UPDATE
                      SET flow_name = EXCLUDED.flow_name, version = EXCLUDED.version,
                          started_at = now()),
              {admitted},
              leg AS (
                  INSERT INTO callback_attempts (channel_id, callback_id, merchant_id,
                      attempt_no, leg_seq, leg, carrier_id, endpoint, worker, asterisk,
                      cap_scopes, cap_shards, admitted_at)
                  SELECT $8, $1, $5, $4, $9, $10, $11, $12, $2, $13, a.cap_scopes,
                         a.cap_shards, a.admitted_at
                  FROM admitted a WHERE a.ok)
              SELECT EXISTS (SELECT 1 FROM held) AS held, a.* FROM admitted a"""
_ADMITTED = """admitted AS (SELECT EXISTS (SELECT 1 FROM held) AS ok, '{}'::text[] AS cap_scopes,
                                '{}'::int[] AS cap_shards, NULL::timestamptz AS admitted_at)"""


class LegStore(StoreBase):
    """The legs of the jobs: written under the lease, settled, read back for CDRs."""

    async def persist_leg(self, cmd: PersistAttempt, merchant_id: str) -> None:
        """Commit the leg row before its originate, only while our lease holds.

        With a guard, a leg through a carrier must also pass the caps, and its own number
        (an advisor's, a transfer's) the destination screening (raises
        :class:`~callback_server.guard.reasons.GuardRefused`; nothing is dialled). A CPS
        cap that paces makes it wait for the cap's window between two transactions,
        holding no connection, then try again (``[guard.caps] cps_max_wait_s`` in all).
        A leg to another party than the customer is screened by the guard first
        (:meth:`~callback_server.guard.service.Guard.screen_leg`).
        """
        loop = asyncio.get_running_loop()
        started, waited_s = loop.time(), 0.0
        while True:
            pace_s = await self._persist_leg(cmd, merchant_id, waited_s)
            if pace_s is None:
                if self.leg_results is not None:    # its originate follows, then its result
                    self.leg_results.expect(cmd.channel_id)
                return
            await asyncio.sleep(pace_s)
            waited_s = loop.time() - started

    async def _persist_leg(self, cmd: PersistAttempt, merchant_id: str, waited_s: float
                           ) -> float | None:
        """One try of :meth:`persist_leg`: None (stored), else how long to wait for the
        CPS window (nothing stored, nothing held). One statement (its own transaction, so
        no session waits idle in one for this loop): the lease checked (and extended when
        less than half of it is left: a second statement, :data:`_RENEWED`), the round's flow
        kept with its first leg, the guard's admission, the leg's row."""
        flow = self.round_flows.get(cmd.callback_id)
        if flow is not None and flow.attempt_no != cmd.attempt_no:
            flow = None
        admission = None
        if self.guard is not None and capped(cmd.leg, cmd.carrier_id):
            if cmd.number is not None:
                refused = await self.guard.screen_leg(cmd.number, cmd.callback_id,
                                                      merchant_id)
                if refused is not None:
                    raise refused
            admission = self.guard.leg_admission(cmd.carrier_id, merchant_id,
                                                 _ADMISSION_FROM)
        args = (cmd.callback_id, self.owner, self.lease_s, cmd.attempt_no, merchant_id,
                flow.name if flow else None, flow.version if flow else None, cmd.channel_id,
                cmd.leg_seq, cmd.leg, cmd.carrier_id, cmd.endpoint, self.asterisk,
                *(() if admission is None else admission.args))
        ctes = _ADMITTED if admission is None else admission.ctes
        row = await self.pool.fetchrow(_PERSIST.format(held=_HELD, admitted=ctes), *args)
        assert row is not None
        if not row["held"]:     # nothing written: less than half the lease left, or lost
            row = await self.pool.fetchrow(_PERSIST.format(held=_RENEWED, admitted=ctes),
                                           *args)
            assert row is not None
        if not row["held"]:
            raise LeaseLost(f"{cmd.callback_id}: lease lost before originating "
                            f"{cmd.channel_id}")
        if flow is not None:        # stored with the leg (or its refusal)
            self.round_flows.pop(cmd.callback_id, None)
        if admission is None or self.guard is None:
            return None
        admitted = await self.guard.admitted(admission, row, cmd.callback_id, merchant_id,
                                             waited_s=waited_s)
        if admitted.refused is not None:    # stored: the refusal (and a trip); no leg row
            raise admitted.refused
        return admitted.pace_s

    @survives_database_restarts
    async def leg_result(self, channel_id: str, status: str, cause: int | None) -> None:
        """A leg's result, committed when this returns: with the results of other legs
        that come at the same moment in one statement (:attr:`leg_results`), else alone."""
        if self.leg_results is not None:
            await self.leg_results.record(channel_id, status, cause)
            return
        async with self.pool.acquire() as conn:
            await write_leg_result(conn, channel_id, status, cause)

    @survives_database_restarts
    async def end_leg(self, end: LegEnd) -> None:
        """A leg's result and its CDR (its spend with it) in one statement committed on
        its own (a round that goes on: its next route; a round that ends writes them with
        its finish)."""
        if self.leg_results is not None:
            self.leg_results.forget(end.channel_id)
        async with self.pool.acquire() as conn:
            await write_leg_end(self, conn, end)

    # The columns of a LegRow: the leg and what a CDR needs from its request.
    _LEG_ROW = """SELECT a.channel_id, a.callback_id, a.merchant_id, a.leg, a.carrier_id,
                         a.endpoint, a.status, a.answered, a.answered_at, a.cause,
                         a.created_at, a.asterisk, r.caller, r.edge_call_id
                  FROM callback_attempts a JOIN callback_requests r USING (callback_id)"""

    async def leg(self, channel_id: str) -> LegRow | None:
        """One persisted leg, with what a CDR needs (for legs no call runner owns)."""
        row = await self.pool.fetchrow(f"{self._LEG_ROW} WHERE a.channel_id = $1", channel_id)
        return None if row is None else LegRow(**dict(row))

    @survives_database_restarts
    async def settle_leg(self, channel_id: str, *, answered: bool,
                         answered_at: datetime | None, cause: int) -> bool:
        """Mark a leg no call runner owns as ended. False if it had already ended."""
        done = await self.pool.fetchval(
            """UPDATE callback_attempts SET status = 'ended', answered = answered OR $2,
                   answered_at = coalesce(answered_at, $3), cause = coalesce(cause, $4),
                   updated_at = now()
               WHERE channel_id = $1 AND status <> 'ended' RETURNING true""",
            channel_id, answered, answered_at, cause)
        return bool(done)

    async def last_leg(self, callback_id: str) -> LegRow | None:
        """The job's last customer leg (one round trip: it is on every claim's path)."""
        row = await self.pool.fetchrow(
            f"""{self._LEG_ROW} WHERE a.callback_id = $1 AND a.leg = 'customer'
                ORDER BY a.leg_seq DESC LIMIT 1""", callback_id)
        return None if row is None else LegRow(**dict(row))
