"""Value types for ARI objects (channels, bridges, playbacks), decoded from JSON.

Decoding is lenient: a missing field becomes its empty default so that a
newer Asterisk adding or dropping fields never breaks an event stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

JsonObject = Mapping[str, Any]


def parse_timestamp(value: object) -> datetime | None:
    """Parse ARI's ``2026-11-22T02:27:22.004+0000`` (aware) or return None.

    Every event carries one or more of these: ``fromisoformat`` (which takes ARI's
    ``+0000`` since Python 3.11) is some 200 times cheaper than ``strptime``."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _str(obj: JsonObject, key: str) -> str:
    value = obj.get(key)
    return value if isinstance(value, str) else ""


_EMPTY: JsonObject = {}


def _obj(obj: JsonObject, key: str) -> JsonObject:
    value = obj.get(key)
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class Channel:
    """A snapshot of a channel as ARI reported it.

    ``state`` is ARI's string: ``Down``, ``Ring``, ``Ringing``, ``Up``, ...
    ``protocol_id`` is the SIP Call-ID for PJSIP channels (empty otherwise).
    ``variables`` holds the ``channelvars`` Asterisk attaches (usually none).
    """

    id: str
    name: str = ""
    state: str = ""
    caller_number: str = ""
    caller_name: str = ""
    connected_number: str = ""
    connected_name: str = ""
    exten: str = ""
    context: str = ""
    priority: int = 0
    language: str = ""
    protocol_id: str = ""
    created_at: datetime | None = None
    variables: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_up(self) -> bool:
        return self.state == "Up"

    @classmethod
    def from_json(cls, obj: JsonObject) -> Channel:
        # Every channel event carries the whole snapshot (a call-back with an IVR decodes
        # some 16): its parts are read in line, and no variables is no copy.
        get = obj.get
        caller, connected, dialplan = get("caller"), get("connected"), get("dialplan")
        caller = caller if isinstance(caller, Mapping) else _EMPTY
        connected = connected if isinstance(connected, Mapping) else _EMPTY
        dialplan = dialplan if isinstance(dialplan, Mapping) else _EMPTY
        priority = dialplan.get("priority")
        raw_vars = get("channelvars")
        return cls(
            id=_str(obj, "id"),
            name=_str(obj, "name"),
            state=_str(obj, "state"),
            caller_number=_str(caller, "number"),
            caller_name=_str(caller, "name"),
            connected_number=_str(connected, "number"),
            connected_name=_str(connected, "name"),
            exten=_str(dialplan, "exten"),
            context=_str(dialplan, "context"),
            priority=priority if isinstance(priority, int) else 0,
            language=_str(obj, "language"),
            protocol_id=_str(obj, "protocol_id"),
            created_at=parse_timestamp(get("creationtime")),
            variables={str(k): str(v) for k, v in raw_vars.items()}
            if raw_vars and isinstance(raw_vars, Mapping) else {},
        )


@dataclass(frozen=True)
class Playback:
    """A media playback. ``target_uri`` is ``channel:<id>`` or ``bridge:<id>``."""

    id: str
    media_uri: str = ""
    target_uri: str = ""
    state: str = ""

    @property
    def channel_id(self) -> str | None:
        kind, _, ident = self.target_uri.partition(":")
        return ident if kind == "channel" and ident else None

    @classmethod
    def from_json(cls, obj: JsonObject) -> Playback:
        return cls(id=_str(obj, "id"), media_uri=_str(obj, "media_uri"),
                   target_uri=_str(obj, "target_uri"), state=_str(obj, "state"))


@dataclass(frozen=True)
class LiveRecording:
    """A recording of a channel (``POST /channels/{id}/record``): ``name`` is the file's
    name (no extension) in Asterisk's ``recording`` spool; ``state`` ``queued``,
    ``recording``, ``done``, ``failed``, ...; ``cause`` why it failed."""

    name: str
    format: str = ""
    target_uri: str = ""
    state: str = ""
    duration_s: int = 0
    cause: str = ""

    @property
    def channel_id(self) -> str | None:
        kind, _, ident = self.target_uri.partition(":")
        return ident if kind == "channel" and ident else None

    @classmethod
    def from_json(cls, obj: JsonObject) -> LiveRecording:
        duration = obj.get("duration")
        return cls(name=_str(obj, "name"), format=_str(obj, "format"),
                   target_uri=_str(obj, "target_uri"), state=_str(obj, "state"),
                   duration_s=duration if isinstance(duration, int) else 0,
                   cause=_str(obj, "cause"))


@dataclass(frozen=True)
class Bridge:
    id: str
    bridge_type: str = ""
    technology: str = ""
    channel_ids: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: JsonObject) -> Bridge:
        channels = obj.get("channels")
        ids = tuple(c for c in channels if isinstance(c, str)) if isinstance(channels, list) else ()
        return cls(id=_str(obj, "id"), bridge_type=_str(obj, "bridge_type"),
                   technology=_str(obj, "technology"), channel_ids=ids)


@dataclass(frozen=True)
class AppState:
    """What Asterisk thinks the Stasis application owns (``GET /applications/{app}``)."""

    name: str
    channel_ids: tuple[str, ...] = ()
    bridge_ids: tuple[str, ...] = ()
    endpoint_ids: tuple[str, ...] = ()
    #: the event types of its filter (empty: every type), sorted
    events_allowed: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: JsonObject) -> AppState:
        def ids(key: str) -> tuple[str, ...]:
            value = obj.get(key)
            return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()

        allowed = obj.get("events_allowed")
        return cls(name=_str(obj, "name"), channel_ids=ids("channel_ids"),
                   bridge_ids=ids("bridge_ids"), endpoint_ids=ids("endpoint_ids"),
                   events_allowed=tuple(sorted(
                       e["type"] for e in allowed if isinstance(e, Mapping)
                       and isinstance(e.get("type"), str))) if isinstance(allowed, list) else ())


@dataclass(frozen=True)
class Endpoint:
    """``GET /endpoints/{tech}/{resource}``; ``state`` is online/offline/unknown."""

    technology: str
    resource: str
    state: str = ""
    channel_ids: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: JsonObject) -> Endpoint:
        channels = obj.get("channel_ids")
        ids = tuple(c for c in channels if isinstance(c, str)) if isinstance(channels, list) else ()
        return cls(technology=_str(obj, "technology"), resource=_str(obj, "resource"),
                   state=_str(obj, "state"), channel_ids=ids)
