"""ISO 8601 timestamps from outside (HTTP fields and queries, CLI options, files).

:func:`parse_timestamp` is the one parser: a zone is required (``Z`` or ``+hh:mm``)
unless the caller names one for zoneless input, the result is aware and in UTC, and
values within a day of ``datetime.min``/``datetime.max`` are refused, so any later
conversion to a local zone (the rates' tariff periods, a PostgreSQL ``timestamptz``)
stays in range. Errors are :class:`TimestampError`, a ``ValueError`` naming the field.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

#: the product's local time: the callers, advisors and merchants are in Japan
TOKYO = ZoneInfo("Asia/Tokyo")

#: the earliest and latest instants taken (a day inside what ``datetime`` can hold)
EARLIEST = datetime.min.replace(tzinfo=UTC) + timedelta(days=1)
LATEST = datetime.max.replace(tzinfo=UTC) - timedelta(days=1)
_MAX_CHARS = 64


class TimestampError(ValueError):
    """``field: reason``; ``field`` and ``reason`` are kept apart for error bodies."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def parse_timestamp(text: str, field: str, *, zoneless: tzinfo | None = None) -> datetime:
    """``text`` as an aware UTC datetime; a value without a zone is refused, or taken in
    ``zoneless`` when that is given (a CLI's ``--at 2026-04-01``)."""
    if len(text) > _MAX_CHARS:
        raise TimestampError(field, f"not an ISO 8601 timestamp: {text[:40]!r}...")
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise TimestampError(field, f"not an ISO 8601 timestamp: {text!r}") from None
    if parsed.tzinfo is None:
        if zoneless is None:
            raise TimestampError(field, "timestamp needs a time zone (Z or +hh:mm)")
        parsed = parsed.replace(tzinfo=zoneless)
    try:
        moment = parsed.astimezone(UTC)
    except OverflowError:
        moment = None
    if moment is None or not EARLIEST <= moment <= LATEST:
        raise TimestampError(field, f"{text!r} is out of range ({EARLIEST.date()} to "
                                    f"{LATEST.date()} UTC)")
    return moment
