"""The toll-fraud and harassment guard on the real stack: Asterisk, SIPp, PostgreSQL.

Triggers are validly signed with the edge's key, as a compromised or buggy edge
would send them: the callback site must refuse them by itself. What counts is
what reached the carriers on the SIP wire.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest

from callback_server.ivr_flow import load_named
from demo.stack import MerchantOptions, Stack
from tests.harness.asterisk import prompt_seconds

pytestmark = pytest.mark.e2e

VICTIM = "+818011112222"
# The victim never presses 1; velocity is relaxed so that the confirm-lockout
# (2 unconfirmed call-backs -> locked 24 h) is what stops the harassment.
GUARD_ENV = {
    "CALLBACK__GUARD__VELOCITY__UNKNOWN__MIN_GAP_S": "1",
    "CALLBACK__GUARD__VELOCITY__UNKNOWN__PER_HOUR": "1000",
    "CALLBACK__GUARD__VELOCITY__UNKNOWN__PER_DAY": "1000",
}


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with Stack(tmp_path_factory.mktemp("guard"),
                     merchants=(MerchantOptions(pre_callback_delay_s="0"),),
                     db_prefix="cbgw_e2e_guard", extra_env=GUARD_ENV) as running:
        yield running


def irsf_corpus(size: int = 1000) -> list[str]:
    """Caller IDs an attacker would spoof to make us call expensive or odd places."""
    rnd = random.Random(3567313)

    def digits(n: int) -> str:
        return "".join(rnd.choice("0123456789") for _ in range(n))

    makers = [
        lambda: "+4470" + digits(8),           # UK personal numbers (premium-like)
        lambda: "+881" + digits(9),            # global satellite
        lambda: "+81570" + digits(6),          # Navi Dial (UAN)
        lambda: "+81990" + digits(6),          # premium rate
        lambda: "+8120" + digits(8),           # M2M / pager
        lambda: "+81120" + digits(6),          # toll-free
        lambda: "+1900" + digits(7),           # US premium
        lambda: "+882" + digits(8),            # international networks
        lambda: "anonymous",
        lambda: "09012345678&PJSIP/x",
        lambda: "+819012345678;foo",
        lambda: "+81 90 1234 5678\r\nX-Evil: 1",
        lambda: "",
    ]
    return [maker() for maker in itertools.islice(itertools.cycle(makers), size)]


def trigger(caller: str) -> dict[str, str]:
    return {"edge_call_id": f"edge-test-{uuid.uuid4()}", "merchant_id": "acme",
            "caller": caller, "dialed": "+81120123456",
            "received_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "announce_mode": "early_media"}


async def test_irsf_corpus_originates_nothing_and_every_refusal_has_a_reason(
        stack: Stack) -> None:
    corpus = irsf_corpus()
    latencies: list[float] = []
    async with stack.carriers(a="uas_answer_hold.xml", b="uas_answer_hold.xml") as roles:
        connector = aiohttp.TCPConnector(ssl=stack.client_ssl(), limit=4)
        async with aiohttp.ClientSession(connector=connector) as session:
            semaphore = asyncio.Semaphore(4)

            async def send(caller: str) -> tuple[int, dict[str, object]]:
                async with semaphore:
                    started = time.perf_counter()
                    status, body = await stack.post_link(session, "/v1/link/callbacks",
                                                         trigger(caller))
                    latencies.append((time.perf_counter() - started) * 1000)
                    return status, body

            answers = await asyncio.gather(*(send(c) for c in corpus))
        await asyncio.sleep(2.0)                       # anything queued would dial by now
        invites = [m for r in roles.values() for m in r.invites_received()]

    assert invites == [], f"{len(invites)} call-backs reached a carrier: {invites[:3]}"
    refused = [(s, b) for s, b in answers
               if s == 422 or (s == 202 and b.get("status") == "refused")]
    assert len(refused) == len(corpus), [a for a in answers if a not in refused][:5]
    reasons = {str(b.get("reason") or b.get("error", {}).get("reason")) for _, b in refused}
    assert "None" not in reasons and len(reasons) >= 5, reasons
    rows = await stack.fetch("callback", "SELECT count(*) AS n, coalesce(sum(occurrences), 0) "
                             "AS total FROM guard_refusals")
    assert rows[0]["total"] >= len(corpus)
    assert not await stack.fetch("callback", "SELECT 1 FROM callback_attempts")
    latencies.sort()
    print(f"\nIRSF corpus: {len(corpus)} triggers, 0 originations, reasons {sorted(reasons)}; "
          f"intake p50 {statistics.median(latencies):.1f} ms, "
          f"p99 {latencies[int(0.99 * (len(latencies) - 1))]:.1f} ms over signed HTTPS, "
          "4 concurrent (target: decision p99 <= 50 ms)")


async def test_harassment_of_one_victim_stops_after_two_unconfirmed_call_backs(
        stack: Stack) -> None:
    answers = []
    async with stack.carriers(a="uas_answer_hold.xml", b="uas_answer_hold.xml") as roles:
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=stack.client_ssl())) as session:
            # ~two unanswered confirm windows: the merchant's (Japanese) confirm prompt, the
            # gate's timeout, then the goodbye prompt before the hang-up
            gate = load_named("order").node("confirm_callback")
            window_s = (prompt_seconds(stack.callback_site, "ja", "confirm-callback")
                        + gate.timeout_s
                        + prompt_seconds(stack.callback_site, "ja", "goodbye"))
            deadline = time.monotonic() + 2 * window_s + 2
            sent = 0
            while sent < 200:
                status, body = await stack.post_link(session, "/v1/link/callbacks",
                                                     trigger(VICTIM))
                answers.append((status, body))
                sent += 1
                await asyncio.sleep(max(0.0, (deadline - time.monotonic()) / (200 - sent + 1)))
        await asyncio.sleep(1.0)
        invites = [m for r in roles.values() for m in r.invites_received()
                   if m.ruri_user == VICTIM[1:]]

    assert 1 <= len(invites) <= 2, f"the victim was rung {len(invites)} times"
    locked = await stack.fetch("callback", "SELECT locked_until FROM guard_numbers "
                               "WHERE number = $1", VICTIM)
    assert locked and locked[0]["locked_until"] is not None, "the number was not locked"
    reasons = [b.get("reason") for s, b in answers if b.get("status") == "refused"]
    assert "number_locked" in reasons, sorted(set(map(str, reasons)))
    assert len(reasons) >= 198
