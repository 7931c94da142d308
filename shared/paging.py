"""Keyset (cursor) pagination of one merchant's rows, for the listings of both sites.

A listing takes ``since``/``until`` (ISO 8601 with a zone; a time column of the
listing's choosing), ``limit`` (1-500, default 100), ``cursor`` (the ``next_cursor``
of the previous page) and, per listing, equality filters on integer id columns
(``advisor_id``...) and on text columns (``account``: 1-64 characters). Rows come
oldest first by their ``bigint`` row id; the cursor is that id, opaque to the client.
A query parameter the listing does not take, a bad value or a cursor that is not one of
ours is 400 ``invalid-field`` naming it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from shared.http import (
    ApiError,
    InvalidField,
    optional_timestamp,
    parse_json,
    query_int,
    require_str,
)
from shared.openapi import TIMESTAMP, Param, Schema, nullable, string

MAX_LIMIT = 500
DEFAULT_LIMIT = 100
#: the largest row id (``bigint``): a cursor past it is not one of ours
MAX_ROW_ID = 2**63 - 1
_COMMON = ("since", "until", "limit", "cursor")
#: the longest value of a text filter
MAX_TEXT_FILTER = 64


@dataclass(frozen=True, slots=True)
class ListQuery:
    merchant_id: str
    since: datetime | None = None
    until: datetime | None = None
    after_id: int = 0
    limit: int = DEFAULT_LIMIT
    #: equality filters on integer columns, by column name
    filters: Mapping[str, int] = field(default_factory=dict)
    #: equality filters on text columns (1..64 characters), by column name
    text: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None

    def to_json(self) -> dict[str, Any]:
        return {"items": self.items, "next_cursor": self.next_cursor}


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": last_id}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The row id a cursor points after; ``ValueError`` if it is not one of ours."""
    if not cursor.isascii():
        raise ValueError("bad cursor")
    padded = cursor + "=" * (-len(cursor) % 4)
    try:
        data = parse_json(base64.urlsafe_b64decode(padded.encode()))
    except ApiError:
        raise ValueError("bad cursor") from None
    after = data.get("after") if isinstance(data, dict) else None
    if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= MAX_ROW_ID:
        raise ValueError("bad cursor")
    return after


def parse_list_query(merchant_id: str, query: Mapping[str, str], *,
                     id_filters: Sequence[str] = (),
                     text_filters: Sequence[str] = ()) -> ListQuery:
    """The listing's query; 400 ``invalid-field`` naming the parameter that is wrong."""
    taken = {*_COMMON, *id_filters, *text_filters}
    unknown = sorted(set(query) - taken)
    if unknown:
        raise InvalidField(unknown[0], f"unknown parameter; expected {', '.join(sorted(taken))}")
    # a "+" in an unencoded zone offset arrives as a space
    times = {k: query[k].replace(" ", "+") for k in ("since", "until") if k in query}
    since = optional_timestamp(times, "since")
    until = optional_timestamp(times, "until")
    if since and until and until <= since:
        raise InvalidField("until", "must be after since")
    limit = query_int(query, "limit", low=1, high=MAX_LIMIT, default=DEFAULT_LIMIT)
    after = 0
    if "cursor" in query:
        try:
            after = decode_cursor(query["cursor"])
        except ValueError:
            raise InvalidField("cursor", "not a cursor returned by this API") from None
    filters = {name: query_int(query, name, low=1, high=MAX_ROW_ID, default=0)
               for name in id_filters if name in query}
    text = {name: require_str(query, name, max_len=MAX_TEXT_FILTER)
            for name in text_filters if name in query}
    return ListQuery(merchant_id, since, until, after, limit, filters, text)


def list_params(*id_filters: str, text_filters: Sequence[str] = ()) -> tuple[Param, ...]:
    """The query parameters :func:`parse_list_query` takes, for the OpenAPI document."""
    return (
        Param("since", "query", TIMESTAMP, "only rows at or after this time"),
        Param("until", "query", TIMESTAMP, "only rows before this time"),
        Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                                 "default": DEFAULT_LIMIT}, "rows per page"),
        Param("cursor", "query", {"type": "string"}, "next_cursor of the previous page"),
        *(Param(name, "query", {"type": "integer", "minimum": 1, "maximum": MAX_ROW_ID},
                f"only rows of this {name.removesuffix('_id')}") for name in id_filters),
        *(Param(name, "query", string(MAX_TEXT_FILTER), f"only rows of this {name}")
          for name in text_filters))


def page_schema(item: Schema) -> Schema:
    """A :class:`Page` of ``item``s."""
    return {"type": "object", "required": ["items", "next_cursor"],
            "properties": {"items": {"type": "array", "items": item},
                           "next_cursor": nullable({"type": "string"})}}


def page_of(rows: Sequence[asyncpg.Record], limit: int,
            render: Callable[[asyncpg.Record], dict[str, Any]]) -> Page:
    """The page of ``rows`` fetched with ``LIMIT limit + 1`` (by row id ``id``): a
    cursor when there were more."""
    more = len(rows) > limit
    shown = rows[:limit]
    return Page([render(r) for r in shown], encode_cursor(shown[-1]["id"]) if more else None)
