"""The edge's call store: merchants, inbound calls and their call-back requests.

A call-back request is stored *before* the caller hears anything: one
transaction writes the ``edge_calls`` row (state ``stored``) and the outbox
message to the callback site, held. When the caller is gone the flow releases
it (state ``released``; the outbox NOTIFY wakes the relay at once). If the
process dies in between, :meth:`CallStore.sweep_held` releases requests held
for longer than a minute: an acknowledged request is never lost.

Errors::

    StoreError
      ├── DuplicateCall      edge_call_id already used by a call in another state
      └── UnknownMerchant    a merchant id that is not in the merchants table
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from advisors.record_store import MIGRATIONS as CONSULTATION_MIGRATIONS
from billing.records import MIGRATIONS as BILLING_RECORD_MIGRATIONS
from edge_server.flow_messages import CancelRequest, Outcome, RecordCall, StoreRequest
from shared.config import Merchant
from shared.db import MigrationSet, package_migrations
from shared.outbox import Outbox, OutboxRelay, encode, isoformat

log = logging.getLogger("edge.store")

CALLBACK_KIND = "callback_request"
CALLBACK_PATH = "/v1/link/callbacks"
SWEEP_AFTER_S = 60
_MESSAGE_NS = uuid.UUID("6f1c1f4e-1d0c-4c55-9a57-7d7a4d0f1e01")

#: the calls whose request is held, found through their held messages (the outbox_held
#: index: the callers on the line) and edge_calls' unique message_id; a request is 'stored'
#: exactly while its message is held. No index on edge_calls' state: the release of a
#: request is a HOT update (migration 0008)
_HELD_CALLS = ("outbox o JOIN edge_calls c ON c.message_id = o.message_id "
               "WHERE o.held AND o.delivered_at IS NULL")

#: :meth:`CallStore.release`'s first half: the call released, its message id returned
_RELEASE_CALL = """WITH call AS (
        UPDATE edge_calls SET state = 'released', outcome = $2,
            hungup_at = coalesce($3, now()), released_at = now()
        WHERE edge_call_id = $1 AND state = 'stored' RETURNING message_id)"""
_RELEASE = f"""{_RELEASE_CALL}
    UPDATE outbox o SET {Outbox.RELEASE_SET}
    FROM call WHERE o.message_id = call.message_id AND o.held RETURNING true"""
#: the same, leasing the message to the relay (``OutboxRelay.lease()`` at $4 and $5)
_RELEASE_LEASED = f"""{_RELEASE_CALL}
    UPDATE outbox o SET {Outbox.RELEASE_SET}, {Outbox.LEASE_SET.format(owner=4, seconds=5)}
    FROM call WHERE o.message_id = call.message_id AND o.held
    RETURNING {", ".join("o." + c for c in Outbox.LEASED_COLUMNS.split(", "))}"""

_STATE_FOR_OUTCOME = {
    Outcome.WITHHELD: "refused", Outcome.MALFORMED: "refused", Outcome.INVALID: "refused",
    Outcome.NOT_ALLOWED: "direct", Outcome.KEPT_DIRECT: "direct",
    Outcome.STORE_TIMEOUT: "direct", Outcome.ABANDONED: "abandoned",
    Outcome.CLOSED: "closed",
}


class StoreError(Exception):
    pass


class DuplicateCall(StoreError):
    def __init__(self, edge_call_id: str, state: str) -> None:
        super().__init__(f"call {edge_call_id} already stored in state {state}")
        self.edge_call_id = edge_call_id
        self.state = state


class UnknownMerchant(StoreError):
    def __init__(self, merchant_id: str) -> None:
        super().__init__(f"unknown merchant {merchant_id!r}")
        self.merchant_id = merchant_id


def edge_migrations(*, with_rates: bool = False) -> list[MigrationSet]:
    """Every migration set the edge database needs, in order."""
    import shared

    sets = [package_migrations("link", shared.__file__)]
    if with_rates:
        import routing_rates

        sets.append(package_migrations("routing_rates", routing_rates.__file__))
    return [*sets, package_migrations("edge", __file__), CONSULTATION_MIGRATIONS,
            BILLING_RECORD_MIGRATIONS]


def message_id_for(edge_call_id: str) -> str:
    """The outbox message id of a call's request: fixed, so a re-store is a no-op."""
    return str(uuid.uuid5(_MESSAGE_NS, edge_call_id))


@dataclass(frozen=True, slots=True)
class CallRow:
    edge_call_id: str
    merchant_id: str
    caller: str | None
    dialed: str
    state: str
    outcome: str | None
    message_id: str | None
    received_at: datetime
    stored_at: datetime | None
    released_at: datetime | None
    callback_status: str | None

    @classmethod
    def of(cls, row: asyncpg.Record) -> CallRow:
        mid = row["message_id"]
        return cls(row["edge_call_id"], row["merchant_id"], row["caller"], row["dialed"],
                   row["state"], row["outcome"], None if mid is None else str(mid),
                   row["received_at"], row["stored_at"], row["released_at"],
                   row["callback_status"])


class CallStore:
    """Repository over a pool; every method is one short transaction."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        #: the edge's outbox relay, once it runs (``edge_server.app.link_ctx``): a release
        #: leases its request's message to it in the same statement and hands it over, so
        #: the relay sends it without a claim (a transaction a call-back)
        self.relay: OutboxRelay | None = None

    async def sync_merchants(self, merchants: Sequence[Merchant]) -> None:
        """Upsert the configured merchants; mark the others inactive (rows keep their FK)."""
        async with self.pool.acquire() as conn, conn.transaction():
            for m in merchants:
                await conn.execute(
                    """INSERT INTO merchants (id, name, numbers, announce_mode, active, synced_at)
                       VALUES ($1, $2, $3, $4, true, now())
                       ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name,
                           numbers = EXCLUDED.numbers, announce_mode = EXCLUDED.announce_mode,
                           active = true, synced_at = now()""",
                    m.id, m.name, [str(n) for n in m.numbers], m.announce_mode.value)
            await conn.execute("UPDATE merchants SET active = false WHERE NOT (id = ANY($1))",
                               [m.id for m in merchants])

    async def store_request(self, cmd: StoreRequest, received_at: datetime) -> str:
        """Write the call and its held outbox message in one statement (one round trip).

        Returns the request id (the edge call id). Storing the same call twice
        is a no-op; :class:`DuplicateCall` if the id is taken by a call that is
        not a request.
        """
        mid = message_id_for(cmd.edge_call_id)
        payload = {"edge_call_id": cmd.edge_call_id, "merchant_id": cmd.merchant_id,
                   "caller": str(cmd.caller), "dialed": str(cmd.dialed),
                   "received_at": isoformat(received_at), "hungup_at": None,
                   "announce_mode": cmd.announce_mode.value}
        try:
            row = await self.pool.fetchrow(
                f"""WITH call AS (
                        INSERT INTO edge_calls (edge_call_id, channel_id, merchant_id, caller,
                            dialed, announce_mode, state, decision_reason, message_id,
                            received_at, stored_at)
                        VALUES ($1, $2, $3, $4, $5, $6, 'stored', $7, $8, $9, now())
                        ON CONFLICT (edge_call_id) DO NOTHING RETURNING message_id),
                    message AS (
                        INSERT INTO outbox ({Outbox.INSERT_COLUMNS})
                        SELECT message_id, $10, $11, $12, $3, true FROM call
                        ON CONFLICT (message_id) DO NOTHING)
                    SELECT EXISTS (SELECT FROM call) AS inserted,
                           (SELECT state FROM edge_calls WHERE edge_call_id = $1
                            AND NOT EXISTS (SELECT FROM call)) AS state""",
                cmd.edge_call_id, cmd.channel_id, cmd.merchant_id, str(cmd.caller),
                str(cmd.dialed), cmd.announce_mode.value, cmd.decision_reason,
                uuid.UUID(mid), received_at, CALLBACK_KIND, CALLBACK_PATH, encode(payload))
        except asyncpg.ForeignKeyViolationError:
            raise UnknownMerchant(cmd.merchant_id) from None
        assert row is not None
        if row["inserted"]:
            return cmd.edge_call_id
        # The statement's snapshot misses a row another transaction committed while this
        # one waited on it: read it again then.
        state = row["state"] or await self.pool.fetchval(
            "SELECT state FROM edge_calls WHERE edge_call_id = $1", cmd.edge_call_id)
        if state not in ("stored", "released"):
            raise DuplicateCall(cmd.edge_call_id, str(state))
        return cmd.edge_call_id

    async def release(self, request_id: str, outcome: Outcome,
                      hungup_at: datetime | None = None) -> bool:
        """The caller is gone: make the request's message sendable, in one statement.
        False if not held. With :attr:`relay` running the statement also leases the
        message to it, which then delivers it (:meth:`OutboxRelay.take_leased`)."""
        relay = self.relay
        lease = None if relay is None else relay.lease()
        if relay is not None and lease is not None:
            rows = await self.pool.fetch(_RELEASE_LEASED, request_id, outcome.value,
                                         hungup_at, *lease)
            relay.take_leased(rows)
            return bool(rows)
        released = await self.pool.fetchval(_RELEASE, request_id, outcome.value, hungup_at)
        return bool(released)

    async def cancel(self, cmd: CancelRequest) -> bool:
        """Withdraw a stored request that must not be called back (it committed too late),
        with its held message (never sent), in one statement: the calls that come here are
        those the overloaded store already kept waiting. False if it was not stored."""
        cancelled = await self.pool.fetchval(
            """WITH call AS (
                   UPDATE edge_calls SET state = 'cancelled', outcome = $2
                   WHERE edge_call_id = $1 AND state = 'stored' RETURNING message_id),
               message AS (
                   DELETE FROM outbox USING call
                   WHERE outbox.message_id = call.message_id AND outbox.held)
               SELECT EXISTS (SELECT FROM call)""",
            cmd.request_id, cmd.reason.value)
        return bool(cancelled)

    async def record_call(self, cmd: RecordCall, received_at: datetime) -> None:
        """Keep a call that produced no request (refused, kept direct, abandoned)."""
        state = _STATE_FOR_OUTCOME.get(cmd.outcome, "refused")
        await self.pool.execute(
            """INSERT INTO edge_calls (edge_call_id, channel_id, merchant_id, caller, dialed,
                   state, outcome, detail, received_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (edge_call_id) DO NOTHING""",
            cmd.edge_call_id, cmd.channel_id, cmd.merchant_id,
            None if cmd.caller is None else str(cmd.caller),
            "" if cmd.dialed is None else str(cmd.dialed), state, cmd.outcome.value,
            cmd.detail[:500], received_at)

    async def sweep_held(self, older_than_s: int = SWEEP_AFTER_S) -> list[str]:
        """Crash recovery: release requests stored more than ``older_than_s`` ago.

        Not the hot path: a live call releases its own request within the flow's
        guards (well under a minute). Returns the edge call ids released.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                f"""UPDATE edge_calls SET state = 'released', outcome = $2, released_at = now()
                    WHERE id IN (SELECT c.id FROM {_HELD_CALLS} AND c.state = 'stored'
                                 AND c.stored_at < now() - $1 * interval '1 second'
                                 ORDER BY c.stored_at LIMIT 500 FOR UPDATE OF c SKIP LOCKED)
                    RETURNING edge_call_id, message_id""", older_than_s,
                Outcome.RELEASED_BY_SWEEPER.value)
            for row in rows:
                await Outbox.release(conn, str(row["message_id"]))
        released = [str(r["edge_call_id"]) for r in rows]
        if released:
            log.warning("sweeper released %d held request(s): %s", len(released),
                        ", ".join(released[:10]))
        return released

    async def get_call(self, edge_call_id: str) -> CallRow | None:
        row = await self.pool.fetchrow("SELECT * FROM edge_calls WHERE edge_call_id = $1",
                                       edge_call_id)
        return None if row is None else CallRow.of(row)

    async def held_for_channel_ids(self, channel_ids: Sequence[str]) -> list[str]:
        """Requests still held for these channels (recovery after a reconnect)."""
        rows = await self.pool.fetch(
            f"SELECT c.edge_call_id FROM {_HELD_CALLS} AND c.state = 'stored' "
            "AND c.channel_id = ANY($1)", list(channel_ids))
        return [str(r["edge_call_id"]) for r in rows]
