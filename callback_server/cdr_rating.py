"""Rating a finished leg's CDR (carrier cost, toll-free counterfactual) and storing it.

Used by the call runner for the legs it owns and by the reconciler for legs no
runner owns.
"""

from __future__ import annotations

import logging

from callback_server.call_ports import CallStore, Rater
from callback_server.dialer_messages import EDGE_TRUNK, RATED_LEGS, RecordCdr
from callback_server.store.leg_end import StoredCdr
from shared.money import Money
from shared.phone import E164

log = logging.getLogger("callback.stasis")


async def store_cdr(store: CallStore, rater: Rater, cmd: RecordCdr, *,
                    destination: E164 | None,
                    inbound_tariff: str, edge_call_id: str, merchant_id: str) -> Money | None:
    """Rate one leg's CDR (:func:`rate_cdr`) and store it; the carrier cost is returned
    (None: not rated)."""
    stored = rate_cdr(rater, cmd, destination=destination, inbound_tariff=inbound_tariff,
                      edge_call_id=edge_call_id, merchant_id=merchant_id)
    await store.record_cdr(cmd, edge_call_id=edge_call_id, merchant_id=merchant_id,
                           billed_s=stored.billed_s, carrier_cost=stored.carrier_cost,
                           direct_cost=stored.direct_cost)
    logged(cmd)
    return stored.carrier_cost


def rate_cdr(rater: Rater, cmd: RecordCdr, *, destination: E164 | None,
             inbound_tariff: str, edge_call_id: str, merchant_id: str) -> StoredCdr:
    """One leg's CDR rated: its carrier cost and toll-free counterfactual.

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
    return StoredCdr(cmd, edge_call_id, merchant_id, billed_s, carrier_cost, direct)


#: what the line of a stored CDR says (:func:`logged`; a round's last leg's CDR begins its
#: round's line instead)
CDR_LINE = "CDR %s %s %s %ss cause %s"


def cdr_facts(cmd: RecordCdr) -> tuple[object, ...]:
    """:data:`CDR_LINE`'s arguments."""
    return cmd.call_id, cmd.carrier_id, cmd.disposition, cmd.duration_s, cmd.hangup_cause


def logged(cmd: RecordCdr) -> None:
    """The line every stored CDR leaves (but a round's last leg's: its round's line)."""
    log.info(CDR_LINE, *cdr_facts(cmd))
