"""RTP seen on the loopback interface: what a SIPp phone was sent, packet by packet.

SIPp 3.6 receives the media of a call but does not record it; as root a packet socket
on ``lo`` sees every datagram to the phone's media port::

    with RtpCapture("127.0.0.2", 25060) as rtp:
        ...the call...
    rtp.packets   # [(monotonic seconds, payload type)], e.g. 0 = PCMU
    rtp.sounding  # [monotonic seconds] of the PCMU packets that are not silence
    rtp.audible   # [(monotonic seconds, μ-law payload)] of those packets
    rtp.sent      # [(monotonic seconds, payload type)] the phone sent (its DTMF: 101)
    rtp.keys()    # [(first, last)] packet times of each RFC 4733 digit the phone sent

``tone_share`` tells a pure tone (the site's music on hold is a tune of sine notes) from
speech in one packet.

Only traffic to or from that address and port is kept; nothing is sent.
"""

from __future__ import annotations

import math
import socket
import struct
import threading
import time
from collections.abc import Sequence
from types import TracebackType

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4          # loopback shows each datagram twice: keep the received copy
_ETHERNET = 14
TELEPHONE_EVENT = 101


class RtpCapture:
    def __init__(self, ip: str, port: int, interface: str = "lo") -> None:
        self.address = socket.inet_aton(ip)
        self.port = port
        self.packets: list[tuple[float, int]] = []
        self.sounding: list[float] = []
        self.sent: list[tuple[float, int]] = []
        self.audible: list[tuple[float, bytes]] = []
        self._socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
        self._socket.bind((interface, 0))
        self._socket.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="rtp capture", daemon=True)

    def __enter__(self) -> RtpCapture:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close()

    def seconds(self, payload_type: int) -> float:
        """From the first to the last packet of ``payload_type``."""
        times = [t for t, pt in self.packets if pt == payload_type]
        return times[-1] - times[0] if times else 0.0

    def keys(self, payload_type: int = TELEPHONE_EVENT) -> list[tuple[float, float]]:
        """Each digit the phone sent: its first and last event packet (a digit's packets
        come every 20 ms; another payload type between two digits separates them)."""
        digits: list[tuple[float, float]] = []
        previous: int | None = None
        for at, pt in self.sent:
            if pt == payload_type and previous == payload_type:
                digits[-1] = (digits[-1][0], at)
            elif pt == payload_type:
                digits.append((at, at))
            previous = pt
        return digits

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                frame, where = self._socket.recvfrom(65535)
            except TimeoutError:
                continue
            if where[2] == PACKET_OUTGOING:
                continue
            found = self._rtp(frame)
            if found is None:
                continue
            rtp, to_phone = found
            now, payload_type = time.monotonic(), rtp[1] & 0x7F
            if not to_phone:
                self.sent.append((now, payload_type))
            else:
                self.packets.append((now, payload_type))
                payload = rtp[12 + 4 * (rtp[0] & 0x0F):]
                if payload_type == 0 and _sounds(payload):
                    self.sounding.append(now)
                    self.audible.append((now, payload))

    def _rtp(self, frame: bytes) -> tuple[bytes, bool] | None:
        """The RTP packet in ``frame`` and whether it goes to the phone (else from it)."""
        ip = frame[_ETHERNET:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_UDP:
            return None
        udp = ip[(ip[0] & 0x0F) * 4:]
        if len(udp) < 8 + 12:
            return None
        source, destination = struct.unpack("!HH", udp[:4])
        to_phone = (ip[16:20], destination) == (self.address, self.port)
        if not to_phone and (ip[12:16], source) != (self.address, self.port):
            return None
        rtp = udp[8:]
        if rtp[0] >> 6 != 2:        # RTP version 2
            return None
        return rtp, to_phone


def _sounds(pcmu: bytes) -> bool:
    """Audible: some μ-law sample is louder than the quietest levels (silence is 0xFF or
    0x7F: a low 7-bit value is a loud sample)."""
    return any((b & 0x7F) < 0x70 for b in pcmu)


def _linear(ulaw: int) -> int:
    """One G.711 μ-law byte as a 14-bit linear sample."""
    u = ~ulaw & 0xFF
    magnitude = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return (0x84 - magnitude) if u & 0x80 else (magnitude - 0x84)


def tone_share(pcmu: bytes, frequencies: Sequence[float], rate: int = 8000) -> float:
    """The share (0..1) of a μ-law packet's energy at the strongest of ``frequencies``
    (Goertzel): about 1 for a sine at one of them, far less for speech."""
    samples = [_linear(b) for b in pcmu]
    energy = sum(x * x for x in samples)
    if not samples or energy == 0:
        return 0.0
    best = 0.0
    for frequency in frequencies:
        w = 2 * math.pi * frequency / rate
        re = sum(x * math.cos(w * n) for n, x in enumerate(samples))
        im = sum(x * math.sin(w * n) for n, x in enumerate(samples))
        best = max(best, re * re + im * im)
    return min(1.0, best / (energy * len(samples) / 2))
