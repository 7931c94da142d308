"""The callback Asterisk's CPU per call-back playing the IVR's prompts, by what is installed.

On the real callback Asterisk (under the stack's lock), this process originates ``--calls``
calls at ``--rate`` a second to a SIPp carrier that answers with PCMU and sends the order
IVR's keys as RFC 4733 DTMF on its RTP (as the carrier of ``bench.load_sweep --mode
media`` does) and, on each answer, plays the order IVR's first two prompts in Japanese in one ARI
play (``confirm-callback``, ``enter-quantity``: 9.1 s, about the 8–9 s a call-back's IVR
lasts), then hangs up. The same calls run in phases, one after the other, ``--rounds``
times over (the phases interleaved, so a change in the machine's speed hits all alike):

* ``no prompts``: answered and hung up at once: what a call costs without media;
* ``silent``: answered, nothing played for as long as the prompts last, hung up: what an
  answered channel costs while the IVR waits for a key (``transmit_silence = yes``);
* ``wav only``: copies of the prompts' ``.wav`` alone (``sounds/ja/cbgw-bench-wav/``,
  removed after): what was installed before, so Asterisk translates signed linear to
  μ-law for every 20 ms frame;
* ``wav+ulaw+alaw``: the installed ``sound:cbgw/NAME`` (``deploy/asterisk/instance.py``
  writes ``.ulaw`` and ``.alaw`` beside every ``.wav``): no translation;
* the same with full.log's ``verbose`` off (logger.conf rewritten in the root and
  ``logger reload``; restored after): what the verbose lines cost (until session 31
  full.log also logged ``dtmf``, which this phase turned off too).

Per phase it prints the Asterisk process's CPU seconds (``/proc/<pid>/stat``, all
threads) less what it uses idle (measured for ``--idle-s`` first), per call and per
second of media played, SIPp's CPU per call, the bytes full.log grew by per call, and
what ``core show channel`` says of one call's translation while it plays (the proof of
which file was played).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.ari import AriClient
    from shared.ari.router import EventRouter
    from tests.harness.asterisk import AsteriskSite

CUSTOMER = "09012345678"
PROMPTS = ("confirm-callback", "enter-quantity")
LANGUAGE = "ja"
#: the prompts as a .wav only: the baseline, under sounds/LANG/ of the site
WAV_ONLY_DIR = "cbgw-bench-wav"
#: the call of each phase whose translation ``core show channel`` shows, while it plays
SHOWN_CALL = 10


#: full.log's line in deploy/asterisk/callback/logger.conf (with dtmf until session 31), and
#: without verbose
FULL_LOG = "full.log => notice,warning,error,verbose"
QUIET_FULL_LOG = "full.log => notice,warning,error"


@dataclass(frozen=True)
class Phase:
    name: str
    sound_dir: str | None   # under sounds/LANG/: ``cbgw`` (installed), the .wav-only copy,
                            # or None: no prompts (answered and hung up)
    quiet_log: bool = False
    silent: bool = False    # with no prompts: up as long as the prompts would play


PHASES = (Phase("no prompts", None),
          Phase("silent", None, silent=True),
          Phase("wav only", WAV_ONLY_DIR),
          Phase("wav+ulaw+alaw", "cbgw"),
          Phase("wav+ulaw+alaw, quiet full.log", "cbgw", quiet_log=True))


@dataclass
class Result:
    phase: Phase
    calls: int
    played: int
    asterisk_s: float
    sipp_s: float
    wall_s: float
    full_log_bytes: int
    transcode: str


def _wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


async def _one_call(ari: AriClient, router: EventRouter, n: int, phase: Phase, silent_s: float,
                    seen: list[str], transcode: list[str], cli: Callable[[str], str]) -> bool:
    """One call: originate, play the prompts on answer, hang up when they end. True if
    every prompt played to its end."""
    from shared.ari import ChannelDestroyed, PlaybackFinished, StasisEnd, StasisStart

    cid = f"bench-media-{PHASES.index(phase)}-{n}-{time.monotonic_ns()}"
    queue = router.subscribe(cid)
    try:
        await ari.originate(f"PJSIP/{CUSTOMER}@carrier-b", channel_id=cid,
                            caller_id="0120123456", timeout=10)
        async with asyncio.timeout(60):
            while not isinstance(event := await queue.get(), StasisStart):
                if isinstance(event, ChannelDestroyed):
                    return False
            if phase.sound_dir is not None:
                await ari.play(cid, [f"sound:{phase.sound_dir}/{p}" for p in PROMPTS],
                               playback_id=f"{cid}-p", lang=LANGUAGE)
                if n == SHOWN_CALL:   # mid-play: which file Asterisk opened
                    await asyncio.sleep(2)
                    shown = await asyncio.to_thread(cli,
                                                    f"core show channel {event.channel.name}")
                    transcode.extend(line.strip() for line in shown.splitlines()
                                     if "Transcode" in line)
                while not isinstance(event := await queue.get(), PlaybackFinished):
                    if isinstance(event, (StasisEnd, ChannelDestroyed)):
                        return False
            await asyncio.sleep(silent_s)
            seen.append(cid)
            await ari.hangup(cid)
            while not isinstance(await queue.get(), StasisEnd | ChannelDestroyed):
                pass
        return True
    finally:
        router.release(cid)


async def _run_phase(site: AsteriskSite, phase: Phase, calls: int, rate: float, pid: int,
                     sipp_pids: list[int], log: Path, logger_conf: Path, media_s: float
                     ) -> Result:
    from bench._stack_load import cpu_seconds
    from shared.ari.router import EventRouter
    from tests.harness.asterisk import reset

    await reset(site)
    router = EventRouter()
    seen: list[str] = []
    transcode: list[str] = []
    with _quiet_full_log(site, logger_conf) if phase.quiet_log else contextlib.nullcontext():
        async with site.client("cbgw-bench-media") as ari:
            reader = asyncio.create_task(router.run(ari.events()))
            await asyncio.sleep(0.5)          # the events websocket is up
            log_before = _size(log)
            a0 = cpu_seconds(pid) or 0.0
            s0 = sum(cpu_seconds(p) or 0.0 for p in sipp_pids)
            t0 = time.monotonic()
            tasks = []
            for n in range(calls):
                await asyncio.sleep(max(0.0, t0 + n / rate - time.monotonic()))
                tasks.append(asyncio.create_task(
                    _one_call(ari, router, n, phase, media_s if phase.silent else 0.0, seen,
                              transcode, site.cli)))
            done = await asyncio.gather(*tasks, return_exceptions=True)
            wall = time.monotonic() - t0
            a1 = cpu_seconds(pid) or 0.0
            s1 = sum(cpu_seconds(p) or 0.0 for p in sipp_pids)
            grown = _size(log) - log_before
            reader.cancel()
    failed = [d for d in done if d is not True]
    if failed:
        print(f"  {phase.name}: {len(failed)} calls did not play to the end "
              f"(first: {failed[0]!r})", file=sys.stderr)
    return Result(phase, calls, len(seen), a1 - a0, s1 - s0, wall, grown,
                  "; ".join(transcode) or "-")


async def _run(calls: int, rate: float, idle_s: float, rounds: int) -> int:
    from bench._stack_load import children, cpu_seconds
    from bench.load_sweep import ORDER_KEYS
    from tests.harness.asterisk import (
        instance_tool,
        qualify,
        running_locked,
        running_pid,
        sounds_dir,
    )
    from tests.harness.sipp import role

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="cbgw-bench-media-") as tmp, \
            running_locked("callback") as callback:
        host_cbgw, _ = sounds_dir("callback", f"{LANGUAGE}/cbgw", callback.root)
        wav_only = host_cbgw.parent / WAV_ONLY_DIR
        media_s = sum(_wav_seconds(host_cbgw / f"{p}.wav") for p in PROMPTS)
        missing = [f"{p}.{ext}" for p in PROMPTS for ext in ("ulaw", "alaw")
                   if not (host_cbgw / f"{p}.{ext}").is_file()]
        if missing:
            print(f"not installed in {host_cbgw}: {', '.join(missing)}")
            return 1
        pid = running_pid(callback.name)
        if pid is None:
            print("the callback Asterisk is not running")
            return 1
        installed = instance_tool().load_site(callback.name, callback.root)
        log = installed.host(installed.directories()["astlogdir"]) / "full.log"
        logger_conf = installed.host(installed.directories()["astetcdir"]) / "logger.conf"
        try:
            wav_only.mkdir(exist_ok=True)
            for p in PROMPTS:
                shutil.copy2(host_cbgw / f"{p}.wav", wav_only / f"{p}.wav")
                shutil.chown(wav_only / f"{p}.wav", *_owner(host_cbgw))
            shutil.chown(wav_only, *_owner(host_cbgw))
            with role("uas_answer_dtmf.xml", "carrier-b", Path(tmp), digits=ORDER_KEYS,
                      timeout_s=int(rounds * len(PHASES) * (calls / rate + 60))) as carrier:
                await qualify(callback, "carrier-b")
                sipp = children(carrier.process.pid) or [carrier.process.pid]
                a0, t0 = cpu_seconds(pid) or 0.0, time.monotonic()
                await asyncio.sleep(idle_s)
                idle_per_s = ((cpu_seconds(pid) or 0.0) - a0) / (time.monotonic() - t0)
                print(f"callback Asterisk pid {pid} ({callback.version}); idle "
                      f"{idle_per_s * 1000:.1f} ms CPU a second over {idle_s:.0f} s; "
                      f"{rounds} rounds of {calls} calls at {rate:g}/s a phase, "
                      f"{media_s:.2f} s of prompts "
                      f"each ({', '.join(PROMPTS)}, {LANGUAGE}), answered with PCMU, keys "
                      f"{ORDER_KEYS} sent",
                      flush=True)
                for _ in range(rounds):
                    for phase in PHASES:
                        results.append(await _run_phase(callback, phase, calls, rate, pid,
                                                        sipp, log, logger_conf, media_s))
        finally:
            shutil.rmtree(wav_only, ignore_errors=True)
    _report(results, idle_per_s, media_s)
    return 0 if all(r.played == r.calls for r in results) else 1


def _report(results: list[Result], idle_per_s: float, media_s: float) -> None:
    """One line a phase, its rounds summed."""
    print(f"\n{'phase':31} {'played':>7} {'Asterisk CPU s':>15} {'ms a call':>10} "
          f"{'ms a media s':>13} {'SIPp ms a call':>15} {'full.log B a call':>18}  "
          "translation of one call while it plays\n(ms a call: all rounds, then each round's; "
          "ms a media s: a second of prompts, or of silence)")
    for phase in PHASES:
        mine = [r for r in results if r.phase is phase]
        played = max(1, sum(r.played for r in mine))
        own = sum(r.asterisk_s - idle_per_s * r.wall_s for r in mine)
        seconds = media_s if phase.sound_dir is not None or phase.silent else 0.0
        per_media = f"{own / (played * seconds) * 1000:.2f}" if seconds else "-"
        rounds = "/".join(f"{(r.asterisk_s - idle_per_s * r.wall_s) / max(1, r.played) * 1000:.1f}"
                          for r in mine)
        print(f"{phase.name:31} {played:>7} {sum(r.asterisk_s for r in mine):>15.2f} "
              f"{own / played * 1000:>10.1f} ({rounds}) {per_media:>13} "
              f"{sum(r.sipp_s for r in mine) / played * 1000:>15.1f} "
              f"{sum(r.full_log_bytes for r in mine) / played:>18.0f}  {mine[0].transcode}")


@contextlib.contextmanager
def logger_line_swapped(site: AsteriskSite, logger_conf: Path, line: str,
                        replacement: str) -> Iterator[None]:
    """``logger_conf`` with its whole line ``line`` replaced by ``replacement`` inside (the
    running Asterisk reloads its logger); the installed logger.conf again after."""
    configured = logger_conf.read_text()
    if f"{line}\n" not in configured:
        raise RuntimeError(f"{logger_conf} has no line {line!r}")
    logger_conf.write_text(configured.replace(f"{line}\n", f"{replacement}\n"))
    try:
        site.cli("logger reload")
        yield
    finally:
        logger_conf.write_text(configured)
        site.cli("logger reload")


def _quiet_full_log(site: AsteriskSite, logger_conf: Path
                    ) -> contextlib.AbstractContextManager[None]:
    """full.log without verbose inside."""
    return logger_line_swapped(site, logger_conf, FULL_LOG, QUIET_FULL_LOG)


def _size(path: Path) -> int:
    return path.stat().st_size


def _owner(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_uid, stat.st_gid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.asterisk_media", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=150, help="calls a phase")
    parser.add_argument("--rate", type=float, default=10.0, help="calls started a second")
    parser.add_argument("--rounds", type=int, default=3,
                        help="times every phase runs, the phases interleaved")
    parser.add_argument("--idle-s", type=float, default=10.0,
                        help="seconds the idle Asterisk's CPU is measured first")
    args = parser.parse_args(argv)
    from bench._machine import speed_line

    print(speed_line(), flush=True)
    return asyncio.run(_run(args.calls, args.rate, args.idle_s, args.rounds))


if __name__ == "__main__":
    sys.exit(main())
