"""Errors raised by the ARI client.

::

    AriError                          anything this package raises
    ├── AriUnavailable                transport: Asterisk down, refused, timed out, bad reply
    │                                 (also a ConnectionError) - the only one worth retrying
    └── AriHttpError(status, message) Asterisk answered with an HTTP error
        ├── NotFound                  404
        │   └── ChannelNotFound       404 on /channels/...: the channel is gone
        ├── Conflict                  409: e.g. "Channel not in Stasis application"
        └── AllocationFailed          500 on originate: no channel could be made
                                      (dead/unqualified trunk, unknown endpoint)

``hangup``, ``destroy_bridge`` and ``stop_playback`` swallow ``NotFound``: the
thing is already gone, which is what the caller wanted. ``get_variable``
returns ``None`` for 404 and 500 (Asterisk answers 500 for an absent SIP
header).
"""

from __future__ import annotations


class AriError(Exception):
    """Base of every error raised by :mod:`shared.ari`."""


class AriUnavailable(AriError, ConnectionError):
    """Asterisk could not be reached or gave no usable answer (transport error)."""


class AriHttpError(AriError):
    """Asterisk answered a REST call with an HTTP error status."""

    def __init__(self, status: int, message: str, *, method: str = "", path: str = "") -> None:
        super().__init__(f"ARI {method} {path} -> {status}: {message}".strip())
        self.status = status
        self.message = message
        self.method = method
        self.path = path


class NotFound(AriHttpError):
    """404: the channel, bridge, playback or application does not exist."""


class ChannelNotFound(NotFound):
    """404 on a /channels path: the channel has hung up or never existed."""


class Conflict(AriHttpError):
    """409: the object is in the wrong state (e.g. channel not in Stasis)."""


class AllocationFailed(AriHttpError):
    """500 on originate: Asterisk could not create the outbound channel."""
