"""Typed ARI events, decoded from the events websocket's JSON.

``decode_event`` never raises on well-formed JSON: an event type this module
does not model (or a malformed one) becomes ``Unknown(type, raw)``, so a new
Asterisk release cannot crash an application. ``Connected`` is synthetic: the
client yields it after every (re)connect of the websocket so the application
can re-sync (list its channels, recover or hang up what it owns).

Only the fields applications use are decoded; ``Unknown.raw`` keeps the rest
for logging.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.ari.models import (
    Bridge,
    Channel,
    JsonObject,
    LiveRecording,
    Playback,
    parse_timestamp,
)


@dataclass(frozen=True)
class Connected:
    """The events websocket is (again) connected; state may have changed meanwhile."""

    reconnect: bool = False


@dataclass(frozen=True)
class StasisStart:
    """A channel entered the application (inbound call, or an originate answered)."""

    channel: Channel
    args: tuple[str, ...] = ()
    replace_channel_id: str | None = None
    timestamp: datetime | None = None


@dataclass(frozen=True)
class StasisEnd:
    """A channel left the application (hung up, or continued in the dialplan)."""

    channel: Channel
    timestamp: datetime | None = None


@dataclass(frozen=True)
class ChannelStateChange:
    channel: Channel
    timestamp: datetime | None = None


@dataclass(frozen=True)
class ChannelDtmfReceived:
    channel: Channel
    digit: str
    duration_ms: int = 0
    timestamp: datetime | None = None


@dataclass(frozen=True)
class ChannelDestroyed:
    """The channel is gone. ``cause`` is Q.850: 16 normal, 17 busy, 18 no response,
    19 no answer, 21 rejected, 34 congestion (a 503 from the far end)."""

    channel: Channel
    cause: int = 0
    cause_txt: str = ""
    tech_cause: int | None = None     # the SIP status behind it (503, 486, ...) when known
    timestamp: datetime | None = None


@dataclass(frozen=True)
class ChannelHangupRequest:
    channel: Channel
    cause: int | None = None
    soft: bool = False
    timestamp: datetime | None = None


@dataclass(frozen=True)
class ChannelVarset:
    channel: Channel | None
    variable: str
    value: str
    timestamp: datetime | None = None


@dataclass(frozen=True)
class PlaybackStarted:
    playback: Playback
    timestamp: datetime | None = None


@dataclass(frozen=True)
class PlaybackFinished:
    playback: Playback
    timestamp: datetime | None = None


@dataclass(frozen=True)
class RecordingFinished:
    """A recording ended and its file is complete (``#``, silence, the length limit or
    the channel hanging up)."""

    recording: LiveRecording
    timestamp: datetime | None = None


@dataclass(frozen=True)
class RecordingFailed:
    recording: LiveRecording
    timestamp: datetime | None = None


@dataclass(frozen=True)
class Dial:
    """Progress of a dial: ``dialstatus`` is empty while ringing, then ANSWER, BUSY, ..."""

    peer: Channel
    dialstatus: str = ""
    caller: Channel | None = None
    timestamp: datetime | None = None


@dataclass(frozen=True)
class ChannelEnteredBridge:
    bridge: Bridge
    channel: Channel
    timestamp: datetime | None = None


@dataclass(frozen=True)
class ChannelLeftBridge:
    bridge: Bridge
    channel: Channel
    timestamp: datetime | None = None


@dataclass(frozen=True)
class Unknown:
    """An event type not modelled here, or one that failed to decode."""

    type: str
    raw: Mapping[str, Any] = field(default_factory=dict)


Event = (
    Connected | StasisStart | StasisEnd | ChannelStateChange | ChannelDtmfReceived
    | ChannelDestroyed | ChannelHangupRequest | ChannelVarset | PlaybackStarted
    | PlaybackFinished | RecordingFinished | RecordingFailed | Dial | ChannelEnteredBridge
    | ChannelLeftBridge | Unknown
)


def _channel(raw: JsonObject, key: str = "channel") -> Channel:
    value = raw.get(key)
    if not isinstance(value, Mapping) or not isinstance(value.get("id"), str):
        raise ValueError(f"missing {key}")
    return Channel.from_json(value)


def _optional_channel(raw: JsonObject, key: str) -> Channel | None:
    return _channel(raw, key) if isinstance(raw.get(key), Mapping) else None


def _int(raw: JsonObject, key: str, default: int = 0) -> int:
    value = raw.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _playback(raw: JsonObject) -> Playback:
    value = raw.get("playback")
    if not isinstance(value, Mapping):
        raise ValueError("missing playback")
    return Playback.from_json(value)


def _recording(raw: JsonObject) -> LiveRecording:
    value = raw.get("recording")
    if not isinstance(value, Mapping):
        raise ValueError("missing recording")
    return LiveRecording.from_json(value)


def _bridge(raw: JsonObject) -> Bridge:
    value = raw.get("bridge")
    if not isinstance(value, Mapping):
        raise ValueError("missing bridge")
    return Bridge.from_json(value)


def _stasis_start(raw: JsonObject, ts: datetime | None) -> Event:
    args = raw.get("args")
    replace = raw.get("replace_channel")
    return StasisStart(
        _channel(raw),
        tuple(str(a) for a in args) if isinstance(args, list) else (),
        replace.get("id") if isinstance(replace, Mapping) else None,
        ts,
    )


def _dtmf(raw: JsonObject, ts: datetime | None) -> Event:
    digit = raw.get("digit")
    if not isinstance(digit, str) or not digit:
        raise ValueError("missing digit")
    return ChannelDtmfReceived(_channel(raw), digit, _int(raw, "duration_ms"), ts)


def _destroyed(raw: JsonObject, ts: datetime | None) -> Event:
    cause_txt = raw.get("cause_txt")
    tech_cause = raw.get("tech_cause")
    return ChannelDestroyed(_channel(raw), _int(raw, "cause"),
                            cause_txt if isinstance(cause_txt, str) else "",
                            tech_cause if isinstance(tech_cause, int) else None, ts)


def _hangup_request(raw: JsonObject, ts: datetime | None) -> Event:
    cause = raw.get("cause")
    return ChannelHangupRequest(_channel(raw), cause if isinstance(cause, int) else None,
                                raw.get("soft") is True, ts)


def _varset(raw: JsonObject, ts: datetime | None) -> Event:
    return ChannelVarset(_optional_channel(raw, "channel"), str(raw.get("variable", "")),
                         str(raw.get("value", "")), ts)


def _dial(raw: JsonObject, ts: datetime | None) -> Event:
    status = raw.get("dialstatus")
    return Dial(_channel(raw, "peer"), status if isinstance(status, str) else "",
                _optional_channel(raw, "caller"), ts)


_DECODERS: dict[str, Callable[[JsonObject, datetime | None], Event]] = {
    "StasisStart": _stasis_start,
    "StasisEnd": lambda raw, ts: StasisEnd(_channel(raw), ts),
    "ChannelStateChange": lambda raw, ts: ChannelStateChange(_channel(raw), ts),
    "ChannelDtmfReceived": _dtmf,
    "ChannelDestroyed": _destroyed,
    "ChannelHangupRequest": _hangup_request,
    "ChannelVarset": _varset,
    "PlaybackStarted": lambda raw, ts: PlaybackStarted(_playback(raw), ts),
    "PlaybackFinished": lambda raw, ts: PlaybackFinished(_playback(raw), ts),
    "RecordingFinished": lambda raw, ts: RecordingFinished(_recording(raw), ts),
    "RecordingFailed": lambda raw, ts: RecordingFailed(_recording(raw), ts),
    "Dial": _dial,
    "ChannelEnteredBridge": lambda raw, ts: ChannelEnteredBridge(_bridge(raw), _channel(raw), ts),
    "ChannelLeftBridge": lambda raw, ts: ChannelLeftBridge(_bridge(raw), _channel(raw), ts),
}


def event_types(*kinds: type) -> frozenset[str]:
    """The ARI type names of event classes (each is named after its type), for an
    application's event filter. Only modelled types: anything else would arrive as
    ``Unknown``, which no application reads."""
    names = frozenset(kind.__name__ for kind in kinds)
    if unmodelled := sorted(names - _DECODERS.keys()):
        raise ValueError(f"not modelled ARI event types: {', '.join(unmodelled)}")
    return names


def decode_event(raw: Mapping[str, Any]) -> Event:
    """Decode one event object; unknown or malformed events become ``Unknown``."""
    kind = raw.get("type")
    kind = kind if isinstance(kind, str) else ""
    decoder = _DECODERS.get(kind)
    if decoder is None:
        return Unknown(kind, raw)
    try:
        return decoder(raw, parse_timestamp(raw.get("timestamp")))
    except (ValueError, TypeError, AttributeError):
        return Unknown(kind, raw)


def decode_message(data: str | bytes) -> Event:
    """Decode one websocket text frame."""
    try:
        raw = json.loads(data)
    except ValueError:
        return Unknown("", {"invalid_json": data if isinstance(data, str) else data.decode(
            "utf-8", "replace")})
    if not isinstance(raw, dict):
        return Unknown("", {"not_an_object": raw})
    return decode_event(raw)


def channel_ids(event: Event) -> tuple[str, ...]:
    """The channel(s) an event is about, for routing to per-call queues."""
    if isinstance(event, (StasisStart, StasisEnd, ChannelStateChange, ChannelDtmfReceived,
                          ChannelDestroyed, ChannelHangupRequest, ChannelEnteredBridge,
                          ChannelLeftBridge)):
        return (event.channel.id,)
    if isinstance(event, ChannelVarset):
        return (event.channel.id,) if event.channel else ()
    if isinstance(event, (PlaybackStarted, PlaybackFinished)):
        cid = event.playback.channel_id
        return (cid,) if cid else ()
    if isinstance(event, (RecordingFinished, RecordingFailed)):
        cid = event.recording.channel_id
        return (cid,) if cid else ()
    if isinstance(event, Dial):
        return (event.peer.id,) + ((event.caller.id,) if event.caller else ())
    return ()
