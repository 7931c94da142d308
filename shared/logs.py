"""Structured logs for both servers: JSON lines, or text for development.

Every line is one JSON object::

    {"ts": "2026-12-04T22:21:45.123Z", "level": "INFO", "logger": "edge.flow",
     "message": "Idle --CallArrived--> Deciding", "call_id": "edge-1733...",
     "request_id": "6f1c...", "merchant": "acme"}

``ts`` is ISO 8601 UTC with milliseconds. ``call_id`` (the edge call id both
sites share), ``request_id`` (the link message id, or the callback id) and
``merchant`` come from the :class:`LogContext` bound where a call's work
happens, not from the message text; a field that is not bound is left out. An
exception's traceback is the ``exc`` field. The text format shows the same
fields on one line, with the context as ``[call=… request=… merchant=…]``.

Binding: :func:`bind` in a ``with`` around a call's work (usually the top of
its task); :func:`update` adds what is learnt later (the merchant, once the
dialled number is resolved) until that ``with`` ends. An asyncio task copies
the context when it is created, so a task started inside a bound scope logs
with that scope's fields, and a field set in one call's task is never seen by
another's. A task shared by many calls is started with :func:`unbound`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import Context, ContextVar, copy_context
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import TextIO

#: ``serve --log-format``: ``json`` for production (the default), ``text`` to read live
FORMATS = ("json", "text")
#: the record attributes the context is copied to (JSON keys of the same names)
FIELDS = ("call_id", "request_id", "merchant")


@dataclass(frozen=True, slots=True)
class LogContext:
    """The call a line concerns; None: not known (or not about a call)."""

    call_id: str | None = None
    request_id: str | None = None
    merchant: str | None = None


UNBOUND = LogContext()
_context: ContextVar[LogContext] = ContextVar("log_context", default=UNBOUND)


@contextmanager
def bind(*, call_id: str | None = None, request_id: str | None = None,
         merchant: str | None = None) -> Iterator[LogContext]:
    """Add the given fields to the context for the ``with`` block (None keeps what is
    bound); the context before the block is restored after it, :func:`update` included."""
    token = _context.set(_merged(call_id, request_id, merchant))
    try:
        yield _context.get()
    finally:
        _context.reset(token)


def update(*, call_id: str | None = None, request_id: str | None = None,
           merchant: str | None = None) -> None:
    """Add fields to the current context, until the enclosing :func:`bind` ends (or the
    task does: each task has its own copy of the context)."""
    _context.set(_merged(call_id, request_id, merchant))


def unbound() -> Context:
    """A copy of the current context without the log fields, for a task that outlives the
    call that happens to start it (``asyncio.create_task(..., context=unbound())``): a
    batcher shared by every request must not name the first one on all its lines."""
    ctx = copy_context()
    ctx.run(_context.set, UNBOUND)
    return ctx


def _merged(call_id: str | None, request_id: str | None, merchant: str | None) -> LogContext:
    ctx = _context.get()
    return LogContext(call_id or ctx.call_id, request_id or ctx.request_id,
                      merchant or ctx.merchant)


class ContextFilter(logging.Filter):
    """Copies the bound context onto each record as it is logged (in the logging task),
    unless the call passed the field itself (``extra={"call_id": ...}``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get()
        for name in FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, getattr(ctx, name))
        return True


#: the second last formatted and its text: the lines of one second share it
_second: tuple[int, str] = (-1, "")


def timestamp(record: logging.LogRecord) -> str:
    """``2026-12-04T22:21:45.123Z``: the record's time, UTC, milliseconds."""
    global _second
    second = int(record.created)
    at, text = _second
    if at != second:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second = (second, text)
    return f"{text}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; see the module docstring for the fields.

    The line is the text ``json.dumps`` makes of the fields (ASCII, ``", "`` and
    ``": "`` between them), written out directly: the ``level`` and ``logger`` part is
    encoded once per logger and level, each string with the encoder ``json.dumps``
    uses."""

    def __init__(self) -> None:
        super().__init__()
        self._middles: dict[tuple[str, str], str] = {}

    def format(self, record: logging.LogRecord) -> str:
        level, name = record.levelname, record.name
        middle = self._middles.get((level, name))
        if middle is None:
            middle = self._middles[level, name] = (
                f'", "level": {encode_basestring_ascii(level)}, '
                f'"logger": {encode_basestring_ascii(name)}, "message": ')
        line = ['{"ts": "', timestamp(record), middle,
                encode_basestring_ascii(record.getMessage())]
        for field in FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line += (', "', field, '": ', encode_basestring_ascii(str(value)))
        if record.exc_info or record.exc_text or record.stack_info:
            exc = self._exc_text(record)
            if exc:
                line += (', "exc": ', encode_basestring_ascii(exc))
        line.append("}")
        return "".join(line)

    def _exc_text(self, record: logging.LogRecord) -> str:
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        parts = [record.exc_text or "", self.formatStack(record.stack_info)
                 if record.stack_info else ""]
        return "\n".join(p for p in parts if p)


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger [call=… request=… merchant=…]: message``, traceback after."""

    _LABELS = (("call_id", "call"), ("request_id", "request"), ("merchant", "merchant"))

    def format(self, record: logging.LogRecord) -> str:
        bound = " ".join(f"{label}={value}" for name, label in self._LABELS
                         if (value := getattr(record, name, None)) is not None)
        context = f" [{bound}]" if bound else ""
        line = f"{timestamp(record)} {record.levelname} {record.name}{context}: " \
               f"{record.getMessage()}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def handler(fmt: str, stream: TextIO | None = None) -> logging.Handler:
    """A stream handler (stderr by default) writing ``fmt`` lines with the bound context."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: one of {', '.join(FORMATS)}")
    out = logging.StreamHandler(stream or sys.stderr)
    out.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    out.addFilter(ContextFilter())
    return out


def configure(level: str, fmt: str) -> None:
    """The process's logging: every logger to stderr in ``fmt`` at ``level`` and above
    (replaces handlers configured before). ValueError for an unknown level or format,
    before anything is changed."""
    if level.upper() not in logging.getLevelNamesMapping():
        raise ValueError(f"unknown log level {level!r}")
    logging.basicConfig(level=level.upper(), handlers=[handler(fmt)], force=True)
    lean_records()


def lean_records() -> None:
    """Records without what no line shows: the caller's file and line (a stack walk per
    record), the thread and the process (the Logging HOWTO's "Optimization"). Without the
    caller's frame ``stack_info=True`` adds no stack either (no code here asks for one)."""
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
