"""Rating a finished leg's CDR (carrier cost, toll-free counterfactual) and storing it.

Used by the call runner for the legs it owns and by the reconciler for legs no
runner owns.
"""

from __future__ import annotations

import logging

from callback_server.call_ports import CallStore, Rater
from callback_server.dialer_messages import EDGE_TRUNK, RATED_LEGS, RecordCdr
from shared.money import Money
from shared.phone import E164

log = logging.getLogger("callback.stasis")


async def store_cdr(store: CallStore, rater: Rater, cmd: RecordCdr, *,
                    destination: E164 | None,
                    inbound_tariff: str, edge_call_id: str, merchant_id: str) -> Money | None:
    """Rate one leg's CDR (carrier cost, toll-free counterfactual) and store it; the
    carrier cost is returned (None: not rated).

    ``destination`` is the number the leg called: the customer's, or a PSTN advisor's
    (an advisor leg has no toll-free counterfactual; None: not a number, not rated).
    A rating problem never loses the CDR: it is stored without cost."""
    seconds = int(cmd.duration_s.to_integral_value(rounding="ROUND_CEILING"))
    carrier_cost, billed_s, direct = None, seconds, None
    if cmd.leg in RATED_LEGS and cmd.carrier_id != EDGE_TRUNK \
            and cmd.answered_at is not None and destination is not None:
        try:
            carrier_cost, billed_s = rater.leg_cost(cmd.carrier_id, destination,
                                                    cmd.answered_at, seconds)
            if cmd.leg == "customer":
                direct = rater.direct_cost(inbound_tariff, destination, cmd.answered_at,
                                           seconds)
        except Exception:
            log.exception("rating %s failed; CDR stored without cost", cmd.call_id)
    await store.record_cdr(cmd, edge_call_id=edge_call_id, merchant_id=merchant_id,
                           billed_s=billed_s, carrier_cost=carrier_cost, direct_cost=direct)
    log.info("CDR %s %s %s %ss cause %s", cmd.call_id, cmd.carrier_id, cmd.disposition,
             cmd.duration_s, cmd.hangup_cause)
    return carrier_cost
