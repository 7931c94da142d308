"""Thin typed asyncio ARI client (Asterisk 22), see docs/CONTRACTS.md.

* :mod:`shared.ari.client`  - ``AriClient``: REST calls and the events websocket
* :mod:`shared.ari.events`  - typed events and ``decode_event`` (pure, unit-tested)
* :mod:`shared.ari.models`  - ``Channel``, ``Bridge``, ``Playback``, ``AppState``, ``Endpoint``
* :mod:`shared.ari.router`  - ``EventRouter``: per-call queues, one task per call
* :mod:`shared.ari.errors`  - the error tree (drawn in that module's docstring)
"""

from __future__ import annotations

from shared.ari.client import AriClient
from shared.ari.errors import (
    AllocationFailed,
    AriError,
    AriHttpError,
    AriUnavailable,
    ChannelNotFound,
    Conflict,
    NotFound,
)
from shared.ari.events import (
    ChannelDestroyed,
    ChannelDtmfReceived,
    ChannelEnteredBridge,
    ChannelHangupRequest,
    ChannelLeftBridge,
    ChannelStateChange,
    ChannelVarset,
    Connected,
    Dial,
    Event,
    PlaybackFinished,
    PlaybackStarted,
    RecordingFailed,
    RecordingFinished,
    StasisEnd,
    StasisStart,
    Unknown,
    channel_ids,
    decode_event,
    decode_message,
    event_types,
)
from shared.ari.models import AppState, Bridge, Channel, Endpoint, LiveRecording, Playback
from shared.ari.router import EventRouter

__all__ = [
    "AllocationFailed", "AppState", "AriClient", "AriError", "AriHttpError", "AriUnavailable",
    "Bridge", "Channel", "ChannelDestroyed", "ChannelDtmfReceived", "ChannelEnteredBridge",
    "ChannelHangupRequest", "ChannelLeftBridge", "ChannelNotFound", "ChannelStateChange",
    "ChannelVarset", "Conflict", "Connected", "Dial", "Endpoint", "Event", "EventRouter",
    "LiveRecording", "NotFound", "Playback", "PlaybackFinished", "PlaybackStarted",
    "RecordingFailed", "RecordingFinished", "StasisEnd", "StasisStart",
    "Unknown", "channel_ids", "decode_event", "decode_message", "event_types",
]
