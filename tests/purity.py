"""The import rule of pure modules (call flows, state machines): no I/O modules."""

from __future__ import annotations

import ast
from pathlib import Path

IO_MODULES = frozenset({"aiohttp", "asyncpg", "asyncio"})


def io_imports(path: Path, banned_prefixes: tuple[str, ...] = ("shared.ari",)) -> list[str]:
    """The modules ``path`` imports that a pure module must not: aiohttp, asyncpg, asyncio
    and anything starting with one of ``banned_prefixes``."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    return [n for n in names if n.split(".")[0] in IO_MODULES or n.startswith(banned_prefixes)]
