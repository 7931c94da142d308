"""Group-committed intake of call-back requests.

Concurrent ``POST /v1/link/callbacks`` (and the messages of ``POST
/v1/link/callbacks/batch``) share one transaction per batch
(:class:`shared.intake_batch.GroupCommit`): message ids, guard screening under
per-number locks, request rows, answers, one WAL flush, one round trip (one statement,
its own transaction) whatever the batch size
(:meth:`callback_server.store.intake_store.IntakeStore.intake_batch`).
Each request is answered only after its batch committed; a batch that fails on
an SQL error is retried request by request, so one bad request fails alone; an
unreachable database fails every waiting request (the edge retries). While the
database does not keep up (:meth:`~shared.intake_batch.GroupCommit.overloaded`),
new requests are refused at once with 503 ``overloaded`` + Retry-After rather
than queued: the edge's relay waits that long, and nothing queued is lost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import asyncpg

from callback_server.schemas import IntakeRequest
from callback_server.store import CallbackStore
from callback_server.store.intake_store import Intake
from shared.config import Merchant
from shared.db import holding
from shared.intake_batch import GroupCommit, IntakeFailed
from shared.link import Answer

KIND = "callback_request"
#: a request that waited this long for the database means it does not keep up: new ones
#: are refused (503 ``overloaded`` + Retry-After) until it does
SHED_AFTER_S = 2.0


class CallbackIntake(GroupCommit[Intake]):
    def __init__(self, store: CallbackStore, *, max_batch: int = 128, max_in_flight: int = 2,
                 linger_s: float = 0.0, shed_after_s: float | None = SHED_AFTER_S) -> None:
        super().__init__(store.pool, KIND, max_batch, max_in_flight, linger_s, shed_after_s)
        self.store = store

    async def submit(self, message_id: str, req: IntakeRequest, merchant: Merchant) -> Answer:
        """Store the request once under ``message_id``; the first answer, after the commit.
        Raises :class:`shared.intake_batch.IntakeFailed` when it was not stored."""
        with holding("intake"):     # the batcher's task, started by a request, inherits it
            return await self.deliver(message_id, Intake(req, merchant))

    async def submit_many(self, requests: Sequence[tuple[str, IntakeRequest, Merchant]]
                          ) -> list[Answer | IntakeFailed]:
        """:meth:`submit` for the messages of one batch request, queued together; each
        one's first answer, or the :class:`IntakeFailed` saying it was not stored."""
        with holding("intake"):
            return await self.deliver_many([(mid, Intake(req, merchant))
                                            for mid, req, merchant in requests])

    async def write(self, conn: asyncpg.Connection, batch: Sequence[tuple[str, Intake]]
                    ) -> Mapping[str, Answer]:
        return await self.store.intake_batch(conn, batch)
