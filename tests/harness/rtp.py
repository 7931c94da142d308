"""RTP seen on the loopback interface: what a SIPp phone was sent, packet by packet.

SIPp 3.6 receives the media of a call but does not record it; as root a packet socket
on ``lo`` sees every datagram to the phone's media port::

    with RtpCapture("127.0.0.2", 25060) as rtp:
        ...the call...
    rtp.packets   # [(monotonic seconds, payload type)], e.g. 0 = PCMU
    rtp.sounding  # [monotonic seconds] of the PCMU packets that are not silence

Only traffic to that address and port is kept; nothing is sent.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from types import TracebackType

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4          # loopback shows each datagram twice: keep the received copy
_ETHERNET = 14


class RtpCapture:
    def __init__(self, ip: str, port: int, interface: str = "lo") -> None:
        self.address = socket.inet_aton(ip)
        self.port = port
        self.packets: list[tuple[float, int]] = []
        self.sounding: list[float] = []
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

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                frame, where = self._socket.recvfrom(65535)
            except TimeoutError:
                continue
            if where[2] == PACKET_OUTGOING:
                continue
            rtp = self._rtp(frame)
            if rtp is not None:
                now, payload_type = time.monotonic(), rtp[1] & 0x7F
                self.packets.append((now, payload_type))
                if payload_type == 0 and _sounds(rtp[12 + 4 * (rtp[0] & 0x0F):]):
                    self.sounding.append(now)

    def _rtp(self, frame: bytes) -> bytes | None:
        ip = frame[_ETHERNET:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_UDP:
            return None
        if ip[16:20] != self.address:
            return None
        udp = ip[(ip[0] & 0x0F) * 4:]
        if len(udp) < 8 + 12 or struct.unpack("!H", udp[2:4])[0] != self.port:
            return None
        rtp = udp[8:]
        if rtp[0] >> 6 != 2:        # RTP version 2
            return None
        return rtp


def _sounds(pcmu: bytes) -> bool:
    """Audible: some μ-law sample is louder than the quietest levels (silence is 0xFF or
    0x7F: a low 7-bit value is a loud sample)."""
    return any((b & 0x7F) < 0x70 for b in pcmu)
