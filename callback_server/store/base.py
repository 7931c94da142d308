"""What every part of the callback store shares: the pool, the lease owner, the guard.

Every fact that the edge must hear about is written together with its outbox
message in one transaction (:meth:`shared.outbox.Outbox.enqueue`), with a
message id derived from the fact (:func:`shared.outbox.fact_message_id`), so
writing a fact twice is a no-op and never sends two messages. Writes made
during a live call retry on connection errors
(:func:`shared.db.survives_database_restarts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    from callback_server.guard.service import Guard
    from callback_server.store.info_records import InfoRecords
    from callback_server.store.leg_results import LegResults
    from ivr_platform.notify_config import NotifySettings

@dataclass(frozen=True, slots=True)
class RoundFlow:
    """The IVR flow a round runs: a stored version, or (None) the configured file flow."""

    attempt_no: int
    name: str
    version: int | None


class StoreBase:
    """The state the store's parts share: one pool, one lease owner, one guard."""

    def __init__(self, pool: asyncpg.Pool, *, owner: str, lease_s: int = 30,
                 guard: Guard | None = None, foreign_rescue_after_s: float = 300.0,
                 notify: NotifySettings | None = None,
                 customer_legs: bool = False) -> None:
        self.pool = pool
        self.owner = owner
        self.lease_s = lease_s
        self.guard = guard          # None: no toll-fraud/harassment screening (unit setups)
        # The merchants' call notifications (ivr_platform.notify_outbox), queued with the
        # facts they report; None: none.
        self.notify = notify
        # The billing records waiting for the customer leg's cost
        # (billing.records.customer_leg_rated, carried by the CDR's statement); False: no
        # billing here.
        self.customer_legs = customer_legs
        # The Asterisk (its systemname) this server places legs on; set on ARI connect.
        self.asterisk: str | None = None
        # A rescued job whose live leg is on another Asterisk waits this long for a
        # server of that Asterisk before anyone else takes it (and decides blind).
        self.foreign_rescue_after_s = foreign_rescue_after_s
        # Jobs whose round this store is giving back (finish, release), until the worker
        # forgets them: a heartbeat that no longer finds them ours is not a lost lease.
        self.ending: set[str] = set()
        # The flow each running round runs, kept with the round's first leg
        # (:meth:`~callback_server.store.info_store.InfoStore.keep_round_flow`).
        self.round_flows: dict[str, RoundFlow] = {}
        # The legs' results written together (group commit); None: each on its own.
        self.leg_results: LegResults | None = None
        # The IVRs' request info written together (group commit; without call
        # notifications); None: each on its own.
        self.info_records: InfoRecords | None = None
