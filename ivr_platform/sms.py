"""How many messages an SMS text is billed as (pure).

* **GSM-7** when every character is in the GSM 03.38 alphabet: up to 160 septets is one
  message, a longer text is split into parts of 153 (the rest carries the concatenation
  header). A character of the extension table (``^ { } \\ [ ~ ] | €`` and form feed) is
  an escape plus a septet: it counts 2 and is never split across two parts.
* **UCS-2** otherwise (Japanese): up to 70 characters is one message; a longer text is
  counted per **65** characters, as the CallCall guide bills it (「70文字までを1件として
  カウントします。70文字を超過する場合は、65文字ごとに1件としてカウントします。」; the
  network's own concatenated part holds 67). Characters are UTF-16 units: an emoji
  outside the Basic Multilingual Plane counts 2 and is never split.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 65

_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
_GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")


class Encoding(enum.StrEnum):
    GSM7 = "gsm7"
    UCS2 = "ucs2"


@dataclass(frozen=True, slots=True)
class SmsCount:
    encoding: Encoding
    units: int        # septets (GSM-7) or UTF-16 units (UCS-2)
    segments: int     # messages billed; 0 for an empty text


def encoding_of(text: str) -> Encoding:
    if all(c in _GSM7_BASIC or c in _GSM7_EXTENSION for c in text):
        return Encoding.GSM7
    return Encoding.UCS2


def count(text: str) -> SmsCount:
    """The encoding, the length in its units and the messages ``text`` is billed as."""
    encoding = encoding_of(text)
    if encoding is Encoding.GSM7:
        weights = [2 if c in _GSM7_EXTENSION else 1 for c in text]
        single, part = GSM7_SINGLE, GSM7_PART
    else:
        weights = [2 if ord(c) > 0xFFFF else 1 for c in text]
        single, part = UCS2_SINGLE, UCS2_PART
    units = sum(weights)
    if units == 0:
        return SmsCount(encoding, 0, 0)
    if units <= single:
        return SmsCount(encoding, units, 1)
    segments, room = 1, part
    for weight in weights:      # fill each part; a 2-unit character moves on whole
        if weight > room:
            segments, room = segments + 1, part
        room -= weight
    return SmsCount(encoding, units, segments)


class SmsStatus(enum.StrEnum):
    """A message's delivery status: ours (``pending``, ``rejected``, ``expired``) and the provider's
    (Twilio's names). Stable codes."""

    PENDING = "pending"          # recorded, not yet accepted by the provider
    REJECTED = "rejected"        # the provider refused it when it was sent
    EXPIRED = "expired"          # not accepted by the provider within the maximum age
    ACCEPTED = "accepted"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    CANCELED = "canceled"
    READ = "read"

    @property
    def rank(self) -> int:
        """Later in a message's life is higher; a status never moves to a lower rank
        (callbacks arrive out of order: ``sent`` after ``delivered``)."""
        return _RANK[self]

    @property
    def final(self) -> bool:
        return self.rank >= _RANK[SmsStatus.DELIVERED]


_RANK = {SmsStatus.PENDING: 0, SmsStatus.ACCEPTED: 1, SmsStatus.SCHEDULED: 1,
         SmsStatus.QUEUED: 2, SmsStatus.SENDING: 3, SmsStatus.SENT: 4,
         SmsStatus.DELIVERED: 5, SmsStatus.UNDELIVERED: 5, SmsStatus.FAILED: 5,
         SmsStatus.CANCELED: 5, SmsStatus.REJECTED: 5, SmsStatus.EXPIRED: 5,
         SmsStatus.READ: 6}
