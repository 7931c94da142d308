"""Each process's copy of the merchants' active stored flows, kept current without a
restart and read without a database round trip.

:meth:`ActiveFlows.refresh` reads the ``ivr_flow_active`` rows of a generation above the
highest it has seen (all of them the first time) and parses their versions, with their
sub-flows (the merchant's newest stored version of each name, pinned until the next
activation).
:meth:`ActiveFlows.run` refreshes when the ``ivr_flows`` NOTIFY of an activation arrives
(at its commit, in every process of the site) and at least every ``sweep_s`` (default 1 s)
in case the listening connection was lost, so a process is never staler than that. A call
in progress keeps the :class:`StoredFlow` it started with: a round asks :meth:`get` once.

A stored version that no longer validates (this code refuses what an older one
accepted) is logged and skipped: the merchant's rounds keep the flow they had.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg

from callback_server.flows_store import stored_subflows
from callback_server.ivr_flow import Flow, FlowError, parse_text, resolve
from shared.db import listening
from shared.waits import within

log = logging.getLogger("callback.flows")

CHANNEL = "ivr_flows"


@dataclass(frozen=True, slots=True)
class StoredFlow:
    """A merchant's active stored flow: the flow and its version number."""

    flow: Flow
    version: int


class ActiveFlows:
    def __init__(self, pool: asyncpg.Pool, db_url: str, *, sweep_s: float = 1.0) -> None:
        self.pool = pool
        self.db_url = db_url
        self.sweep_s = sweep_s
        self._flows: dict[str, StoredFlow] = {}
        self._generation = 0

    def get(self, merchant_id: str) -> StoredFlow | None:
        """The merchant's active stored flow (None: it uses its configured file flow)."""
        return self._flows.get(merchant_id)

    async def refresh(self) -> int:
        """Take the activations made since the last refresh; how many there were."""
        rows = await self.pool.fetch(
            """SELECT a.merchant_id, a.version, a.generation, v.source, v.filename
               FROM ivr_flow_active a JOIN ivr_flow_versions v USING (merchant_id, version)
               WHERE a.generation > $1 ORDER BY a.generation""", self._generation)
        for row in rows:
            self._generation = max(self._generation, row["generation"])
            merchant, version = row["merchant_id"], row["version"]
            try:
                flow = parse_text(row["source"], f"{merchant}/v{version}/{row['filename']}")
                if flow.calls:
                    flow = resolve(flow, await stored_subflows(self.pool, merchant))
            except FlowError as exc:
                log.error("active flow of %s (version %d) no longer validates, kept %s: %s",
                          merchant, version, self._describe(merchant), exc)
                continue
            self._flows[merchant] = StoredFlow(flow, version)
            log.info("flow of %s: %s version %d", merchant, flow.name, version)
        return len(rows)

    def _describe(self, merchant_id: str) -> str:
        held = self._flows.get(merchant_id)
        return "its configured flow" if held is None else f"version {held.version}"

    async def run(self) -> None:
        """Follow activations until cancelled; survives database outages."""
        while True:
            try:
                async with listening(self.db_url, CHANNEL) as notes:
                    while True:
                        await self.refresh()
                        await within(notes.get(), self.sweep_s)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("flow activations: database lost (%s); retrying in 1 s", exc)
                await asyncio.sleep(1.0)
