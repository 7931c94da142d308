"""The callback site's repository, one module per step of the data path.

- :mod:`~callback_server.store.intake_store`: call-back requests in (and the merchants)
- :mod:`~callback_server.store.click_store`: web click-to-call requests in (jobs too)
- :mod:`~callback_server.store.queue_store`: the job queue, its leases, a round's end
- :mod:`~callback_server.store.leg_store`: the legs each round originates
- :mod:`~callback_server.store.cdr_store`: a CDR per leg
- :mod:`~callback_server.store.info_store`: what the customer gave the IVR
- :mod:`~callback_server.store.base`: the shared state, fact ids, retry of live-call writes

:class:`CallbackStore` is all of them over one pool and one lease owner: the worker,
the call runners, the HTTP handlers and the reconciler share it.
"""

from __future__ import annotations

from callback_server.store.cdr_store import CdrStore
from callback_server.store.click_store import ClickStore
from callback_server.store.info_store import InfoStore
from callback_server.store.intake_store import IntakeStore
from callback_server.store.leg_store import LegStore
from callback_server.store.queue_store import QueueStore


class CallbackStore(IntakeStore, ClickStore, QueueStore, LegStore, CdrStore, InfoStore):
    """The callback site's store (see the module docstring for its parts)."""
