"""What billing made of one consultation (read only): its prepaid reservation and
settlement (the ledger) and its postpaid charge (``billing.postpaid``), by the
consultation id the call-back gave it — the revenue side beside the consultation record
(``advisors.records``: talk seconds and the legs' costs).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from billing.ledger import RESERVATION
from billing.standing import CHARGES, charge_of


def _prepaid(row: asyncpg.Record) -> dict[str, Any]:
    settled = row["settled_talk_s"] is not None
    return {"kind": "prepaid", "id": row["id"], "account": row["account"],
            "price_per_minute_yen": row["terms"]["price_per_minute_yen"],
            "held_yen": row["held_yen"], "allowed_s": row["allowed_s"],
            "state": "settled" if settled else "live",
            "talk_s": row["settled_talk_s"], "billed_s": row["settled_billed_s"],
            "total_yen": row["settled_total_yen"], "tax_yen": row["settled_tax_yen"],
            "released_yen": row["released_yen"]}


async def consultation_charges(pool: asyncpg.Pool, merchant_id: str, consultation_id: str
                               ) -> list[dict[str, Any]]:
    """The consultation's reservations (``prepaid``: live or settled) and postpaid
    charges (``postpaid``), oldest first; empty when billing has none."""
    prepaid = await pool.fetch(RESERVATION + " WHERE a.merchant_id = $1 AND "
                               "r.consultation_id = $2 ORDER BY r.id", merchant_id,
                               consultation_id)
    postpaid = await pool.fetch(CHARGES + " WHERE c.merchant_id = $1 AND c.consultation_id"
                                " = $2 ORDER BY c.id", merchant_id, consultation_id)
    return [*(_prepaid(r) for r in prepaid),
            *({"kind": "postpaid", **charge_of(r).to_json()} for r in postpaid)]
