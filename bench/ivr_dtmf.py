"""A key pressed at a menu → the next prompt sounding at the caller, through Asterisk.

On the real callback Asterisk (under the stack's lock), a call answered by a SIPp
customer that sends RFC 4733 digits, one every ``--gap-ms``: at each
``ChannelDtmfReceived`` (Asterisk raises it at the digit's end; the clock starts when
this process receives the event) the bench plays the next system prompt
(``sound:cbgw/quantity``, short enough to end before the next digit, so the line is
silent when the digit comes) and times two things from the event:

* ``PlaybackStarted`` received over ARI (the baseline in the same run: the ARI round
  trip and Asterisk opening the file), and
* the first audible RTP packet of the prompt reaching the customer's media port
  (``tests.harness.rtp.RtpCapture`` on ``lo``, μ-law that is not silence).

The prompts alternate, digit by digit in the same call, between the path the servers use
(a ``RESTRequest`` on the events websocket: ``AriClient(requests_over_events)``, as
``callback_server.stasis`` sets it) and an HTTP request, so both are measured under the
same load. Target: event → first sound p99 ≤ 100 ms on the websocket path (the servers').
Run as root (the packet socket).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET_P99_MS = 100.0
CUSTOMER = "09012345678"
PROMPT = "sound:cbgw/quantity"
MEDIA_PORT = 25080          # the carrier-b SIPp role's media port (tests.harness.sipp)
#: how a prompt's ``play`` goes: on the events websocket (the servers' path), over HTTP
PATHS = ("websocket", "HTTP")


def _summary(name: str, samples: list[float]) -> float:
    ordered = sorted(samples)
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)] if len(ordered) >= 100 else ordered[-1]
    print(f"{name:36} p50 {statistics.median(ordered):6.1f} ms  p99 {p99:6.1f} ms  "
          f"max {ordered[-1]:6.1f} ms  ({len(ordered)} digits)")
    return p99


async def _run(digits: int, gap_ms: int) -> int:
    from shared.ari import ChannelDtmfReceived, Connected, PlaybackStarted, StasisStart
    from tests.harness.asterisk import (
        events_read_aside,
        expect_event,
        qualify,
        reset,
        running_locked,
    )
    from tests.harness.rtp import RtpCapture
    from tests.harness.sipp import role

    # by path: "websocket" (the servers'), "HTTP"
    started_ms: dict[str, list[float]] = {PATHS[0]: [], PATHS[1]: []}
    sound_ms: dict[str, list[float]] = {PATHS[0]: [], PATHS[1]: []}
    with tempfile.TemporaryDirectory(prefix="cbgw-bench-dtmf-") as tmp, \
            running_locked("callback") as callback:
        await reset(callback)
        with RtpCapture("127.0.0.1", MEDIA_PORT) as rtp, \
                role("uas_answer_dtmf_long.xml", "carrier-b", Path(tmp), digits="1" * digits,
                     pcap_options={"lead_ms": 2000, "gap_ms": gap_ms}):
            await qualify(callback, "carrier-b")
            ari = callback.client("cbgw-bench-dtmf")
            ari.requests_over_events = True     # as the servers' (probed on connect)
            # Read on in a task of its own, as the servers' router does: a request on the
            # websocket is answered there, so it needs the events read meanwhile.
            async with ari, events_read_aside(ari) as events:
                await expect_event(events, Connected)
                await ari.originate(f"PJSIP/{CUSTOMER}@carrier-b", channel_id="bench-dtmf",
                                    caller_id="0120123456", timeout=10)
                await expect_event(events, StasisStart, channel_id="bench-dtmf")
                if not ari.requests_on_events:
                    print("the Asterisk did not answer the websocket probe: "
                          "nothing measured on the servers' path")
                    return 1
                for n in range(digits):
                    path = PATHS[n % 2]
                    ari.requests_over_events = path == PATHS[0]
                    await expect_event(events, ChannelDtmfReceived,
                                       channel_id="bench-dtmf", within_s=gap_ms / 1000 + 5)
                    t0 = time.monotonic()
                    await ari.play("bench-dtmf", [PROMPT], playback_id=f"d{n}", lang="ja")
                    await expect_event(events, PlaybackStarted, channel_id="bench-dtmf")
                    started_ms[path].append((time.monotonic() - t0) * 1000)
                    deadline = time.monotonic() + 2
                    while time.monotonic() < deadline:
                        heard = [t for t in list(rtp.sounding) if t >= t0]
                        if heard:
                            sound_ms[path].append((heard[0] - t0) * 1000)
                            break
                        await asyncio.sleep(0.01)
                    else:
                        print(f"digit {n} ({path}): no sound within 2 s", file=sys.stderr)
                await ari.hangup("bench-dtmf")
    servers = sound_ms[PATHS[0]]
    if not servers:
        print("no prompt was heard: nothing measured")
        return 1
    p99_by_path: dict[str, float] = {}
    for path in PATHS:
        if sound_ms[path]:
            _summary(f"event → PlaybackStarted, {path}", started_ms[path])
            p99_by_path[path] = _summary(f"event → first sound, {path}", sound_ms[path])
    p99 = p99_by_path[PATHS[0]]
    asked = (digits + 1) // 2
    met = p99 <= TARGET_P99_MS and len(servers) == asked
    print(f"target: p99 ≤ {TARGET_P99_MS:.0f} ms on the {PATHS[0]} path, every prompt heard "
          f"({len(servers)}/{asked}): {'met' if met else 'NOT met'}")
    return 0 if met else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ivr_dtmf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--digits", type=int, default=70,
                        help="digits sent in the call (the SIPp role lives 120 s)")
    parser.add_argument("--gap-ms", type=int, default=1200, help="between two digits")
    args = parser.parse_args(argv)
    from bench._machine import speed_line

    print(speed_line(), flush=True)
    return asyncio.run(_run(args.digits, args.gap_ms))


if __name__ == "__main__":
    sys.exit(main())
