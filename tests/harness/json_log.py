"""What a logger writes in the servers' JSON line format (:mod:`shared.logs`), as dicts."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from shared import logs

Lines = Callable[[], list[dict[str, Any]]]


@contextmanager
def json_log(name: str, level: int = logging.DEBUG) -> Iterator[Lines]:
    """Capture logger ``name`` (and its children) at ``level`` through the handler the
    servers use; the yielded function returns the lines written so far, parsed."""
    stream = io.StringIO()
    out = logs.handler("json", stream)
    logger = logging.getLogger(name)
    before = logger.level
    logger.addHandler(out)
    logger.setLevel(level)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logger.removeHandler(out)
        logger.setLevel(before)
