"""What a closed call adds before its early media starts, against the render it avoids.

The edge's closed message is rendered ahead (``edge_server.hours_prompts.ClosedPrompts``,
Open JTalk / espeak-ng); at call time the flow decides the call is closed and the adapter
looks the sentence up in the prompt cache (hash + stat, no await, no render). Timed per
call: the pure decision alone (``edge_server.flow.transition`` of the arrival, the
baseline), and the decision plus the look-up (``ClosedPrompts.media``); the render of the
same sentence, the cost a call would pay without the cache, timed once.
Target: the decision plus the look-up at p99 ≤ 1 ms.
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench._machine import p50_p99, rounds_main

TARGET_P99_MS = 1.0


async def _run(rounds: int) -> int:
    from edge_server.flow import Idle, transition
    from edge_server.flow_messages import CallArrived, MerchantSettings, Play
    from edge_server.hours_prompts import ClosedPrompts
    from ivr_platform.hours import TOKYO, BusinessHours, Window
    from ivr_platform.tts import PromptCache
    from shared.language import Language
    from shared.phone import E164

    weekdays = (Window(9 * 60, 12 * 60), Window(13 * 60, 18 * 60))
    hours = BusinessHours(weekly=(weekdays,) * 5 + ((), ()))
    night = datetime(2026, 12, 8, 20, 0, tzinfo=TOKYO)       # a Tuesday, closed
    merchant = MerchantSettings("acme", hours=hours)
    arrived = CallArrived("1", "09012345678", "allowed_not_screened", E164("81120123456"),
                          merchant, at=night)
    with tempfile.TemporaryDirectory(prefix="cbgw-bench-closed-") as tmp:
        closed = ClosedPrompts(PromptCache(Path(tmp) / "closed"), Path(tmp) / "asterisk",
                               [(hours, Language.JAPANESE), (hours, Language.ENGLISH)],
                               clock=lambda: night)
        started = time.perf_counter()
        rendered = await closed.render_ahead(night)
        render_ms = (time.perf_counter() - started) * 1000 / max(rendered, 1)
        print(f"rendered ahead: {rendered} sentences, {render_ms:.0f} ms each "
              "(what a call would wait for without the cache)")

        decision, with_lookup = [], []
        for _ in range(rounds):
            begun = time.perf_counter()
            _, commands = transition(Idle(), arrived)
            decision.append((time.perf_counter() - begun) * 1e6)
            begun = time.perf_counter()
            _, commands = transition(Idle(), arrived)
            play = next(c for c in commands if isinstance(c, Play))
            media = closed.media(play.say, play.language) if play.say else None
            with_lookup.append((time.perf_counter() - begun) * 1e6)
            if media is None:
                print("the closed sentence was not found in the cache: the bench is wrong")
                return 1
    for name, samples in (("decision alone (baseline)", decision),
                          ("decision + cache look-up", with_lookup)):
        p50, p99 = p50_p99(samples)
        print(f"{name:28} p50 {p50:7.1f} µs  p99 {p99:7.1f} µs  ({rounds:,} calls)")
    p99_ms = p50_p99(with_lookup)[1] / 1000
    met = p99_ms <= TARGET_P99_MS
    print(f"target: decision + look-up p99 ≤ {TARGET_P99_MS} ms: {'met' if met else 'NOT met'} "
          f"({p99_ms * 1000:.1f} µs; a render {render_ms / max(p99_ms, 1e-9):,.0f}× longer)")
    return 0 if met else 1


def main(argv: list[str] | None = None) -> int:
    return rounds_main(argv, prog="python -m bench.edge_closed", doc=__doc__, default=2_000,
                       run=_run)


if __name__ == "__main__":
    sys.exit(main())
