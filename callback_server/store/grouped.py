"""What the callback site's group commits of a running call's writes share
(:class:`~callback_server.store.leg_results.LegResults`,
:class:`~callback_server.store.info_records.InfoRecords`): a
:class:`~shared.intake_batch.Batcher` whose batch is one statement, its own transaction,
each caller returning once it has committed, and whose failures stay each caller's own.

Failures: a lost connection fails every caller of the batch with that error (the store's
live-call retry, :func:`shared.db.survives_database_restarts`, then writes each again);
any other error has each write of the batch made alone, so one bad write fails only its
own caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from shared.db import CONNECTION_ERRORS
from shared.intake_batch import Batcher, _Pending

T = TypeVar("T")


@dataclass
class GroupedWrites(Batcher[T, None]):
    """A group commit of a running call's writes (see the module docstring): the pool's
    connections taken for each batch and given back (``hold`` false), so the batch's
    hold is counted under its first caller's :func:`~shared.db.holding` label."""

    max_in_flight: int = 2
    hold: bool = False

    async def _write_batch(self, batch: list[_Pending[T, None]]) -> None:
        try:
            await self._write_on_held(batch)
        except CONNECTION_ERRORS as exc:    # each caller retries (survives_database_restarts)
            for pending in batch:
                self._settle_error(pending, exc)
        except Exception as exc:            # isolate the write that fails
            alone = batch if len(batch) > 1 else []
            if not alone:
                self._settle_error(batch[0], exc)
            for pending in alone:
                try:
                    await self._write_on_held([pending])
                except Exception as own:
                    self._settle_error(pending, own)
        except BaseException as exc:        # cancelled: no caller left waiting
            for pending in batch:
                self._settle_error(pending, exc)
            raise
