"""The tail every domain CLI shares (``python -m advisors``, ``python -m billing``).

Their commands run the same parsers and stores as the HTTP API and end the same way:
the result printed as JSON (exit 0), or a :class:`Text` (a CSV export, say) as it is;
a refusal (:class:`shared.http.ApiError`) as one ``error:`` line naming the command-line
option of the field it concerns (exit 2); the database away or failing as one
``error: database …`` line (exit 1). Never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from shared.config import ConfigError
from shared.http import ApiError

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Text:
    """A command's result printed as it is rather than as JSON."""

    text: str


def load_config(load: Callable[[Path], S], path: Path) -> S | None:
    """A site's settings from ``path``; None with each problem printed as a ``config
    error:`` line on stderr (the command then exits 2)."""
    try:
        return load(path)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"config error: {line}", file=sys.stderr)
        return None


def refusal_line(exc: ApiError, options: Mapping[str, str]) -> str:
    """``exc`` in the CLI's words: its field (``amount_yen``, ``groups[2]``) as the
    option that set it (``--amount``, ``--group``) when ``options`` names one."""
    if "field" not in exc.fields:
        return exc.message
    field = str(exc.fields["field"])
    option = options.get(field.split("[")[0], field)
    return f"{option}: {exc.message.partition(': ')[2]}"


def run_command(command: Coroutine[Any, Any, Any], options: Mapping[str, str]) -> int:
    """Run ``command`` and report it as described above; the exit code."""
    try:
        result = asyncio.run(command)
    except ApiError as exc:   # bad input, a duplicate, not found, too little
        print(f"error: {refusal_line(exc, options)}", file=sys.stderr)
        return 2
    except (OSError, asyncpg.InterfaceError, asyncpg.PostgresError) as exc:
        print(f"error: database ({type(exc).__name__}): {exc}", file=sys.stderr)
        return 1
    if isinstance(result, Text):
        sys.stdout.write(result.text)
    else:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0
