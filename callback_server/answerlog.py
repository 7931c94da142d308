"""Asterisk's log of answers, written the moment a leg is answered.

The leg record (:mod:`callback_server.legrecord`) is written when a leg ends, by
its hangup handler. An Asterisk killed with the leg up (``kill -9``, a crash)
never runs it, so without more an answer the server did not see (its events
websocket was down, the server was stopped) would be lost with Asterisk, and
the customer called again. Asterisk's channel event log (CEL) keeps it: the
callback site's ``cel.conf`` logs ``ANSWER`` events only, and ``cel_custom``
appends each as one line to ``astlogdir/cbgw-answers.csv``::

    <channel id>,<answer epoch>.<microseconds>

``cel_custom`` opens, writes and closes the file for every event, so the line
is in the kernel's page cache once logged, whatever becomes of Asterisk after
(a crash of the machine itself is another matter). CEL writes it from its own
task processor, a few milliseconds after the answer (and the ACK of the 200 OK):
an Asterisk killed inside those milliseconds, with the server not seeing the
answer either, loses it, and the customer is called again. An AstDB write would not do:
Asterisk commits AstDB at most once a second, so a kill within that second
loses it.

The server reads this file (``[callback] answer_log``, the host path of the
Asterisk's file) only when the leg record is missing. Each day
:meth:`AnswerLog.rotate` moves it aside (``<file>.1``, replacing the day
before's); Asterisk starts a new file on the next answer. A lookup reads both.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from decimal import InvalidOperation
from pathlib import Path

from callback_server.legrecord import answer_time

log = logging.getLogger(__name__)


class AnswerLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def previous(self) -> Path:
        return self.path.with_name(self.path.name + ".1")

    async def answered_at(self, channel_id: str) -> datetime | None:
        """When Asterisk answered ``channel_id``; None if it never logged an answer."""
        return await asyncio.to_thread(self._find, channel_id)

    def _find(self, channel_id: str) -> datetime | None:
        prefix = channel_id + ","
        for path in (self.path, self.previous):
            try:
                with path.open(encoding="utf-8", errors="replace") as lines:
                    for line in lines:
                        if line.startswith(prefix):
                            return _time(path, line[len(prefix):])
            except FileNotFoundError:
                continue
        return None

    def rotate(self, now: float, *, every_s: float = 86_400.0) -> None:
        """Move the log aside (replacing the one before) if the last move was at least
        ``every_s`` before ``now`` (a epoch): a line stays readable that long at least,
        however often the server restarts. Best effort."""
        try:
            if now - self.previous.stat().st_ctime < every_s:   # a rename sets ctime
                return
        except FileNotFoundError:
            pass
        try:
            self.path.replace(self.previous)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot rotate the answer log %s: %s", self.path, exc)


def _time(path: Path, value: str) -> datetime | None:
    try:
        return answer_time(value.strip())
    except InvalidOperation:
        log.warning("%s: unreadable answer time %r", path, value.strip())
        return None
