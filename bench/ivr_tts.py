"""A prompt-cache hit against the bare file system, in one run.

Renders one Japanese sentence with Open JTalk (the miss, timed once), then times per call:
``PromptCache.cached`` (key hash + stat, what a call pays on a hit), ``await
PromptCache.get`` on a hit, and the floor under both, a bare ``os.stat`` of the same file.
Target: a hit at p99 ≤ 1 ms.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench._machine import p50_p99, rounds_main

TARGET_P99_MS = 1.0
TEXT = ("お電話ありがとうございます。ただいま営業時間外です。営業時間は、平日の"
        "午前九時から午後六時までです。")


def _timed(call: Callable[[], object], rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1e6)
    return samples


async def _run(rounds: int) -> int:
    from ivr_platform.tts import PromptCache
    from shared.language import Language

    with tempfile.TemporaryDirectory(prefix="cbgw-bench-tts-") as tmp:
        cache = PromptCache(Path(tmp))
        started = time.perf_counter()
        path = await cache.get(TEXT, Language.JAPANESE)
        render_ms = (time.perf_counter() - started) * 1000
        print(f"miss: Open JTalk + sox render of {len(TEXT)} characters: {render_ms:.0f} ms")

        stat = _timed(lambda: os.stat(path), rounds)
        hit = _timed(lambda: cache.cached(TEXT, Language.JAPANESE), rounds)
        get = []
        for _ in range(rounds):
            begun = time.perf_counter()
            await cache.get(TEXT, Language.JAPANESE)
            get.append((time.perf_counter() - begun) * 1e6)
    rows = [("bare os.stat (baseline)", stat), ("PromptCache.cached (hit)", hit),
            ("await PromptCache.get (hit)", get)]
    for name, samples in rows:
        p50, p99 = p50_p99(samples)
        print(f"{name:30} p50 {p50:7.1f} µs  p99 {p99:7.1f} µs  ({rounds:,} calls)")
    worst_p99_ms = max(p50_p99(hit)[1], p50_p99(get)[1]) / 1000
    met = worst_p99_ms <= TARGET_P99_MS
    print(f"target: hit p99 ≤ {TARGET_P99_MS} ms: {'met' if met else 'NOT met'} "
          f"({worst_p99_ms * 1000:.1f} µs; {render_ms * 1000 / max(worst_p99_ms * 1000, 1e-9):,.0f}"
          f"× faster than a render)")
    return 0 if met else 1


def main(argv: list[str] | None = None) -> int:
    return rounds_main(argv, prog="python -m bench.ivr_tts", doc=__doc__, default=20_000, run=_run)


if __name__ == "__main__":
    sys.exit(main())
