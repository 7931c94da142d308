"""``make demo``: one full call-back through both sites, printed as a timeline.

A SIPp phone calls the merchant's toll-free number at the edge with a
Japanese mobile caller ID. The edge plays the announcement as early media and
rejects the call with 486, never answering. The callback site ranks carriers
by expected cost; the cheapest (B) refuses with 503 and the next (A) reaches
the customer's phone, which confirms the call-back with 1 and then
the customer orders item 1234, quantity 2, and confirms. The CDR and the order
travel back to the edge, where the call center reads them.

Then a consultation on a second merchant of the same stack (``demo/consult.py``): a
customer of a fortune-telling line keys an advisor's 4-digit code on the call-back and
talks to the advisor, shown with the advisor's presence, the billing settlement and the
record reaching the edge.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

from demo import consult
from demo.stack import REPO, TOLL_FREE, MerchantOptions, Stack, StackError
from demo.timeline import cost_summary, db_entries, render, sip_entries
from shared.money import DEFAULT_FX_RATES, FxTable

# Customer's key presses on the call-back: confirm the call-back (guard), order (1),
# item 1234#, quantity 2#, confirm (1). Gaps let each prompt start first.
ORDER_DIGITS = "1" + "1" + "1234#" + "2#" + "1"
FX_USD_JPY = DEFAULT_FX_RATES["USD"]   # as in deploy/*.example.toml [rates.fx_rates]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=REPO / "demo-out")
    parser.add_argument("--caller", default="09012345678")
    parser.add_argument("--mode", choices=["early_media", "answer"], default="early_media")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    print("== bringing up both sites (PostgreSQL, 2× Asterisk 22, edge_server, callback_server)")
    started = time.monotonic()
    stack = Stack(args.workdir, merchants=(MerchantOptions(announce_mode=args.mode,
                                                           pre_callback_delay_s="1"),
                                    consult.LINE),
                  db_prefix="cbgw_demo", stop_asterisks=True)
    async with stack:
        print(f"   up in {time.monotonic() - started:.1f} s; Asterisk "
              f"{stack.edge_site.version}; logs in {args.workdir}")
        async with stack.carriers(digits=ORDER_DIGITS) as roles:
            print(f"== customer {args.caller} dials 186-{TOLL_FREE} at the edge")
            phone = stack.customer_call(args.caller)
            phone.wait(timeout=40)
            row = await stack.wait_for_row(
                "edge", "SELECT edge_call_id FROM edge_calls ORDER BY id DESC LIMIT 1")
            edge_call_id = row["edge_call_id"]
            print("== waiting for the call-back, the IVR and the CDR to reach the edge")
            await stack.wait_for_row("edge", "SELECT 1 FROM cdrs WHERE edge_call_id = $1 "
                                     "AND disposition = 'answered'", edge_call_id,
                                     timeout_s=90)
            await asyncio.sleep(0.5)
            entries = sip_entries(phone, "customer→edge")
            entries += sip_entries(roles["carrier-b"], "carrier B (cheapest)")
            entries += sip_entries(roles["carrier-a"], "carrier A → customer")
            db, facts = await db_entries(stack, edge_call_id)
            entries += db
        print("\n== timeline (wall clock, from the first SIP message)")
        print(render(entries))
        statuses = phone.statuses_received()
        print(f"\n== inbound leg: responses {statuses}; "
              f"{'never answered (no 200 OK)' if 200 not in statuses else 'answered'}")
        print("\n== why a call-back: the edge's decision for this caller, made before it "
              "hung up\n   (python -m routing_rates decide; expected cost over the call-length "
              "distribution)")
        print(stack.run_cli(["-m", "routing_rates", "--database-url", stack.edge_db_url,
                             "--currency", "JPY", "--fx", f"USD={FX_USD_JPY}", "decide",
                             args.caller], name="routing_rates").rstrip())
        print("\n== what this particular call cost")
        print(cost_summary(facts, FxTable.from_mapping("JPY", {"USD": FX_USD_JPY})))
        print("\n== a consultation")
        consultation = await consult.run(stack)
        print("\n== consultation timeline (wall clock, from the first fact)")
        print(render(consultation))
    print(f"\n== stopped what the demo started: the servers and "
          f"{', '.join(f'Asterisk {n}' for n in stack.stopped_asterisks) or 'no Asterisk'}"
          f" (one already running is left alone)")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return asyncio.run(run(args))
    except StackError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
