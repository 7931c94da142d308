"""What a flow's node parser cannot see by itself: where in the text an error is, and
whether every node can still end the call.

* :func:`error_line`: tomllib keeps no positions, so the line of a flow error is found
  again in the TOML text (``shared.config.Source.line_near``): the key the message
  names (``choices: ...``, ``unknown keys ...: foo``) inside the node's
  ``[nodes.<id>]`` table, else the table's header; a top-level key's own line.
* :func:`without_exit`: the nodes from which no exit node (``hangup``, ``operator``,
  ``transfer``: the IVR ends or hands the call over; ``return``: back from a sub-flow)
  can be reached; a loop every branch of which
  leads back into it (two ``say`` nodes pointing at each other, a menu whose every
  choice and ``on_fail`` return to it) leaves them there. A retry loop with a way out
  (``on_fail = "goodbye"``) is fine.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from shared.config import Source

#: node types where the IVR's part of the call ends
EXIT_TYPES = frozenset({"hangup", "operator", "return", "transfer"})

_KEYED = re.compile(r"^([a-z_][a-z0-9_]*)[^:\s]*: ")             # "choices.1: expected ..."
_UNKNOWN = re.compile(r"^unknown (?:top-level )?keys[^:]*: ([^,\s]+)")


def error_line(text: str, node: str | None, message: str) -> int | None:
    """The line of ``text`` that a flow error about ``node`` (None: the top level) and
    worded ``message`` is about, if it can be found."""
    match = _KEYED.match(message) or _UNKNOWN.match(message)
    parts = (["nodes", node] if node else []) + ([match.group(1)] if match else [])
    if not parts:
        return None
    return Source(Path("<flow>"), {}, text).line_near(".".join(parts))


def without_exit(edges: Mapping[str, Sequence[str]], exits: Collection[str]) -> list[str]:
    """The nodes of ``edges`` (node → the nodes it can go to), in their order, from
    which no node of ``exits`` is reachable."""
    sources: dict[str, list[str]] = {}
    for node, targets in edges.items():
        for target in targets:
            sources.setdefault(target, []).append(node)
    reach, todo = set(exits), list(exits)
    while todo:
        for node in sources.get(todo.pop(), ()):
            if node not in reach:
                reach.add(node)
                todo.append(node)
    return [node for node in edges if node not in reach]
