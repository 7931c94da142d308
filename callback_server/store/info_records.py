"""The request info the IVRs collect (a flow's ``submit``) written together: group commit.

Under load many calls' IVRs submit within the same few milliseconds (their loop turns
queue them). Each submit was one statement of its own (the row and its outbox message,
:data:`~callback_server.store.info_store.RECORD_INFO_SQL`), a pool connection, a round
trip and a commit each. :class:`InfoRecords` is a
:class:`~callback_server.store.grouped.GroupedWrites`: the submits that wait together go
out as ONE statement (the rows and their messages from arrays, its own transaction), and
each caller returns once it has committed, as before (the IVR tells the customer their
order is taken only after that). What is queued when a slot is free goes out at once: no
batch waits for a partner.

A row's message is written only if the row is new, so a repeat of the same fact (a
retried store) writes nothing twice, as alone; a repeat still queued or in flight here
waits for the same commit. Failures as :class:`~callback_server.store.grouped.
GroupedWrites`: a lost connection fails the batch's callers (each retries), any other
error has each submit of the batch written alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from callback_server.store.grouped import GroupedWrites
from shared.db import holding
from shared.outbox import EVENTS_PATH, Outbox

#: the rows of a batch and, for each row that is new, its outbox message (what
#: :data:`~callback_server.store.info_store.RECORD_INFO_SQL` writes for each row of $1..$7)
_RECORDS = f"""
    WITH v AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                             $5::timestamptz[], $6::text[], $7::bytea[])
            AS v(callback_id, merchant_id, category, fields, collected_at, message_id, body)),
    info AS (
        INSERT INTO request_info (callback_id, merchant_id, category, fields, collected_at,
                                  message_id)
        SELECT callback_id, merchant_id, category, fields::jsonb, collected_at, message_id
        FROM v
        ON CONFLICT (message_id) DO NOTHING RETURNING message_id)
    INSERT INTO outbox ({Outbox.INSERT_COLUMNS})
    SELECT v.message_id::uuid, 'request_info', $8, v.body, v.merchant_id, false
    FROM info JOIN v USING (message_id)
    ON CONFLICT (message_id) DO NOTHING"""


@dataclass(frozen=True, slots=True)
class InfoRecord:
    """One submit's row and its outbox message (``body``: its encoded payload)."""

    callback_id: str
    merchant_id: str
    category: str
    fields: Mapping[str, str]
    collected_at: datetime
    message_id: str
    body: bytes


@dataclass
class InfoRecords(GroupedWrites[InfoRecord]):
    """Group commit of the IVRs' request info (see the module docstring)."""

    kind: str = "ivr_info"

    async def record(self, info: InfoRecord) -> None:
        """Write the row and its message; returns once they have committed."""
        with holding("ivr_info"):       # a running call's write (the batch's task inherits it)
            await self.deliver(info.message_id, info)

    async def write(self, conn: asyncpg.Connection, batch: Sequence[tuple[str, InfoRecord]]
                    ) -> Mapping[str, None]:
        rows = sorted((info for _, info in batch), key=lambda i: i.message_id)  # lock order
        await conn.execute(
            _RECORDS, [i.callback_id for i in rows], [i.merchant_id for i in rows],
            [i.category for i in rows], [json.dumps(i.fields) for i in rows],
            [i.collected_at for i in rows], [i.message_id for i in rows],
            [i.body for i in rows], EVENTS_PATH)
        return dict.fromkeys((key for key, _ in batch), None)
