"""One call-back's story in both servers' JSON logs, found by its call id alone.

The real two-site stack (both Asterisks, PostgreSQL, both servers as processes
logging JSON lines to their log files, SIPp as the customer and the carriers):
every line of both logs is a JSON object, and the lines about the call, from
the inbound call to the CDR, are found by the ``call_id`` field, each with
its merchant, without reading any message text for an id.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from demo.stack import MerchantOptions, Stack

CUSTOMER = "09012345678"
ORDER_KEYS = "1" + "1" + "1234#" + "2#" + "1"   # accept call-back, order, item, qty, confirm

pytestmark = pytest.mark.e2e


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for n, text in enumerate(path.read_text().splitlines(), 1):
        try:
            line = json.loads(text)
        except ValueError:
            raise AssertionError(f"{path.name}:{n} is not JSON: {text[:300]!r}") from None
        assert isinstance(line, dict) and {"ts", "level", "logger", "message"} <= set(line), \
            f"{path.name}:{n}: {text[:300]!r}"
        lines.append(line)
    return lines


def found(lines: list[dict[str, Any]], what: str, logger: str, pattern: str
          ) -> dict[str, Any]:
    for line in lines:
        if line["logger"] == logger and re.match(pattern, line["message"]):
            return line
    raise AssertionError(f"no {what} line ({logger}: {pattern}) among the call's lines:\n"
                         + "\n".join(f"{x['logger']}: {x['message'][:120]}" for x in lines))


async def test_every_line_of_a_call_back_is_found_by_its_call_id(tmp_path: Path) -> None:
    async with Stack(tmp_path, merchants=(MerchantOptions(pre_callback_delay_s="0"),),
                     db_prefix="cbgw_e2e_logs", log_level="DEBUG") as stack:
        async with stack.carriers(digits=ORDER_KEYS):
            phone = stack.customer_call(CUSTOMER)
            await asyncio.to_thread(phone.wait, 40)
            call = await stack.wait_for_row(
                "edge", "SELECT * FROM edge_calls WHERE state = 'released'")
            call_id = call["edge_call_id"]
            await stack.wait_for_row(
                "edge", "SELECT * FROM cdrs WHERE edge_call_id = $1 AND disposition = "
                "'answered'", call_id, timeout_s=60)
            await stack.wait_for_row(
                "edge", "SELECT * FROM requests WHERE edge_call_id = $1", call_id)
    # the servers are stopped: their logs are complete
    edge = json_lines(tmp_path / "edge.log")
    callback = json_lines(tmp_path / "callback.log")

    edge_call = [line for line in edge if line.get("call_id") == call_id]
    callback_call = [line for line in callback if line.get("call_id") == call_id]
    story = [
        found(edge_call, "call received", "edge.flow", r"Idle --CallArrived--> "),
        found(edge_call, "request stored", "edge.flow", r"Storing --RequestStored--> "),
        found(edge_call, "request sent", "shared.outbox", r"delivered a callback_request "),
        found(callback_call, "request accepted", "callback.http",
              r"call-back request for \+819012345678 answered 202"),
        found(callback_call, "job claimed", "callback.worker", r"job claimed, round 1/"),
        found(callback_call, "originate", "callback.stasis", r"originated \S+ via "),
        found(callback_call, "answer", "callback.stasis", r"\S+ answered$"),
        found(callback_call, "IVR", "callback.stasis", r"collected order "),
        found(callback_call, "CDR", "callback.stasis", r"CDR \S+ carrier-a answered "),
    ]
    for line in story:
        assert line["merchant"] == "acme", line
    assert all(line.get("merchant") == "acme" for line in edge_call + callback_call), \
        [line for line in edge_call + callback_call if line.get("merchant") != "acme"]
