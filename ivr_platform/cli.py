"""``python -m ivr_platform``: try the building blocks from a shell.

    python -m ivr_platform hours hours.toml --at 2026-05-04T10:00 [--number 03-1234-5678]
    python -m ivr_platform say "お電話ありがとうございます。" [--lang ja] [--cache DIR]
    python -m ivr_platform sms-count "ご予約ありがとうございます。"
    python -m ivr_platform prompts [--cache DIR]
    python -m ivr_platform guidance add --dir DIR --merchant acme [--language en] welcome X.mp3
    python -m ivr_platform guidance list|delete --dir DIR --merchant acme [NAME [--language]]

``hours`` reads the ``[hours]`` table of a file (the format of
:mod:`ivr_platform.hours_config`) and prints, for ``--at`` (ISO 8601; without a zone it
is Tokyo time; default now), whether the line is open, why, when it opens next and what
the IVR would say. ``say`` renders a prompt into the cache (default
``/var/cache/cbgw/prompts``) and prints its file, ``sound:`` URI and length.
``prompts`` renders every system prompt and the Japanese digits
(:func:`ivr_platform.prompts.sounds`) into the cache and prints ``{language: {name:
file}}``, names as under ``sounds/LANG/`` (``cbgw/received``, ``digits/0``): what
``deploy/asterisk/instance.py install`` copies into each site. ``sms-count`` prints the
encoding and the messages a text is billed as. ``guidance`` manages a merchant's own
audio in a guidance library (``[media] guidance_dir`` of the callback site): ``add``
converts an mp3, m4a/mp4 or wav file (:mod:`ivr_platform.audio`) and prints what a flow
plays and what was measured; ``list``; ``delete`` (exit 1 if there is none).

Output is JSON. Exit status: 0 ok, 2 bad input (a config error names file, line and
key; a refused audio file names the file and the refusal's id), 1 a missing engine or a
failing one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import wave
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ivr_platform.audio import AudioLimits, AudioRejected
from ivr_platform.guidance import GuidanceLibrary
from ivr_platform.hours_config import parse_merchant_hours
from ivr_platform.hours_speech import closed_announcement
from ivr_platform.prompts import sounds
from ivr_platform.sms import count
from ivr_platform.speech import reading
from ivr_platform.tools import ToolError
from ivr_platform.tts import PromptCache
from shared.config import ConfigError, Section, load
from shared.language import Language
from shared.phone import InvalidNumber, normalise
from shared.timeutil import TOKYO, TimestampError, parse_timestamp

DEFAULT_CACHE = Path("/var/cache/cbgw/prompts")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ivr_platform", description=__doc__.split("\n")[0])
    verbs = p.add_subparsers(dest="verb", required=True)
    hours = verbs.add_parser("hours", help="open or closed at an instant, and why")
    hours.add_argument("file", type=Path, help="a TOML file with an [hours] table")
    hours.add_argument("--at", help="ISO 8601 instant (no zone: Tokyo time); default now")
    hours.add_argument("--number", help="one of the merchant's numbers with its own hours")
    hours.add_argument("--lang", choices=[v.value for v in Language], default="ja")
    say = verbs.add_parser("say", help="render a prompt into the cache")
    say.add_argument("text")
    say.add_argument("--lang", choices=[v.value for v in Language], default="ja")
    say.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    prompts = verbs.add_parser("prompts", help="render every system prompt, both languages")
    prompts.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    sms = verbs.add_parser("sms-count", help="the messages an SMS text is billed as")
    sms.add_argument("text")
    guidance = verbs.add_parser("guidance", help="a merchant's own guidance audio")
    actions = guidance.add_subparsers(dest="action", required=True)
    for action in ("add", "list", "delete"):
        a = actions.add_parser(action)
        a.add_argument("--dir", type=Path, required=True, help="the guidance library")
        a.add_argument("--merchant", required=True)
        if action != "list":
            a.add_argument("name")
            a.add_argument("--language", type=Language, choices=list(Language),
                           help="that language's own file (default: for every language)")
        if action == "add":
            a.add_argument("file", type=Path, help="mp3, m4a/mp4 or wav")
            a.add_argument("--max-seconds", type=float, default=AudioLimits().max_seconds)
    return p


def _hours(args: argparse.Namespace) -> dict[str, Any]:
    source = load(args.file, "IVR_HOURS", {})
    merchant = parse_merchant_hours(Section(source, source.data, "").section("hours"))
    source.check_unknown()
    hours = merchant.default
    if args.number is not None:
        try:
            hours = merchant.for_number(normalise(args.number))
        except InvalidNumber as exc:
            raise ValueError(f"--number: {exc}") from None
    at = (parse_timestamp(args.at, "--at", zoneless=TOKYO) if args.at
          else datetime.now(UTC))
    status = hours.status(at)
    opening = hours.next_opening(at)
    return {"at": at.astimezone(TOKYO).isoformat(), "open": status.open,
            "status": status.status.value, "reason": status.reason,
            "until": status.until.isoformat() if status.until else None,
            "next_opening": opening.isoformat() if opening else None,
            "announcement": closed_announcement(hours, at, reading(Language(args.lang)))}


def _say(args: argparse.Namespace) -> dict[str, Any]:
    cache = PromptCache(args.cache)
    path = asyncio.run(cache.get(args.text, Language(args.lang)))
    with wave.open(str(path), "rb") as w:
        seconds = w.getnframes() / w.getframerate()
    return {"path": str(path), "uri": PromptCache.media_uri(path), "seconds": round(seconds, 2)}


def _prompts(args: argparse.Namespace) -> dict[str, Any]:
    cache = PromptCache(args.cache)
    wanted = [(language, name, text)
              for language in Language for name, text in sounds(language).items()]

    async def render() -> list[Path]:
        return list(await asyncio.gather(*(cache.get(text, language)
                                           for language, _, text in wanted)))

    files: dict[str, dict[str, str]] = {language.value: {} for language in Language}
    for (language, name, _), path in zip(wanted, asyncio.run(render()), strict=True):
        files[language.value][name] = str(path)
    return files


class NotThere(LookupError):
    """What the command was to act on does not exist (exit 1)."""


def _guidance(args: argparse.Namespace) -> Any:
    if args.action == "list":
        return [g.to_json() for g in GuidanceLibrary(args.dir).list(args.merchant)]
    if args.action == "delete":
        if not GuidanceLibrary(args.dir).delete(args.merchant, args.name, args.language):
            raise NotThere(f"no guidance {args.name!r} of merchant {args.merchant!r}")
        return {"deleted": args.name}
    library = GuidanceLibrary(args.dir, AudioLimits(max_seconds=args.max_seconds))
    try:
        return asyncio.run(library.add(args.merchant, args.name, args.file,
                                       args.language)).to_json()
    except AudioRejected as exc:
        raise ValueError(f"{args.file}: {exc.error_id}: {exc}") from None
    except FileNotFoundError:
        raise ValueError(f"{args.file}: no such file") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.verb == "hours":
            result = _hours(args)
        elif args.verb == "say":
            result = _say(args)
        elif args.verb == "prompts":
            result = _prompts(args)
        elif args.verb == "guidance":
            result = _guidance(args)
        else:
            counted = count(args.text)
            result = {"encoding": counted.encoding.value, "units": counted.units,
                      "segments": counted.segments}
    except (ConfigError, TimestampError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ToolError, NotThere) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0
