#!/usr/bin/env python3
"""Write an RTP pcap carrying RFC 4733 DTMF digits for SIPp's ``play_pcap_audio``.

SIPp 3.6.1's ``play_dtmf`` sends payload types 96/97 that Asterisk ignores, and
the pcaps shipped in ``/usr/share/sip-tester`` restart SSRC/sequence/timestamp
in every file, so a repeated digit ("11") is seen once. This writes one
continuous stream instead:

* one SSRC, monotonic sequence numbers and timestamps, 20 ms packets;
* PCMU silence (PT 0) for ``--lead-ms`` first (lets Asterisk's strict RTP
  learn the source), between digits (``--gap-ms``) and at the end;
* per digit: telephone-event packets (PT ``--pt``, default 101) every 20 ms for
  ``--tone-ms`` (160 ms), the first with the marker bit, then 3 end packets;
* ``[N]`` between digits: N ms of silence there instead of the gap, so a caller can
  wait for each prompt to end before keying its answer (``1[4000]2``);
* ``[~N]``: N ms of sound (a 1 kHz PCMU tone), e.g. a message spoken after a beep and
  ended by ``#`` (``[5000][~3000]#``: silence, the tone, then the key, no gap between).

Usage::

    make_dtmf_pcap.py '1234#' -o dtmf.pcap [--lead-ms 500] [--gap-ms 200]
    make_dtmf_pcap.py '1[5200]1[6100]1234#' -o dtmf.pcap
    make_dtmf_pcap.py '1[4000][~3000]#' -o message.pcap

Digits: 0-9 * # A-D. An empty string gives silence only. Standard library only.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

EVENT_CODES = {**{str(d): d for d in range(10)}, "*": 10, "#": 11,
               "A": 12, "B": 13, "C": 14, "D": 15}
PACKET_MS = 20
SAMPLES_PER_MS = 8
PT_PCMU = 0
PCMU_SILENCE = b"\xff" * (PACKET_MS * SAMPLES_PER_MS)
SRC = (bytes([127, 0, 0, 1]), 40000)
DST = (bytes([127, 0, 0, 1]), 40002)
_TOKEN = re.compile(r"\[(~?)(\d+)\]|(.)", re.DOTALL)
TONE_HZ, TONE_LEVEL = 1000, 8000      # of 32767: about -12 dBFS


def _ulaw(sample: int) -> int:
    """G.711 μ-law of a 16-bit linear sample."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent = max(0, magnitude.bit_length() - 8)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def tone_payload(start_sample: int, samples: int) -> bytes:
    """``samples`` of the tone from ``start_sample`` on, μ-law (phase-continuous)."""
    return bytes(_ulaw(round(TONE_LEVEL * math.sin(2 * math.pi * TONE_HZ * n / 8000)))
                 for n in range(start_sample, start_sample + samples))


@dataclass
class RtpStream:
    """Builds timestamped RTP packets for one SSRC."""

    ssrc: int
    seq: int
    ts_base: int
    clock_ms: int = 0

    def packet(self, pt: int, payload: bytes, *, ts: int, marker: bool = False) -> bytes:
        header = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt,
                             self.seq & 0xFFFF, (self.ts_base + ts) & 0xFFFFFFFF, self.ssrc)
        self.seq += 1
        return header + payload


def build_packets(digits: str, *, lead_ms: int, gap_ms: int, tone_ms: int, tail_ms: int,
                  pt: int, volume: int = 10, seed: int | None = None) -> list[tuple[int, bytes]]:
    """Return ``(time_ms, rtp_bytes)`` pairs for the whole stream."""
    rng = random.Random(seed)
    stream = RtpStream(ssrc=rng.getrandbits(32), seq=rng.getrandbits(15),
                       ts_base=rng.getrandbits(31))
    out: list[tuple[int, bytes]] = []

    def audio(ms: int, *, tone: bool = False) -> None:
        """``ms`` of PCMU: silence, or the tone."""
        for _ in range(max(0, ms) // PACKET_MS):
            ts = stream.clock_ms * SAMPLES_PER_MS
            payload = tone_payload(ts, PACKET_MS * SAMPLES_PER_MS) if tone else PCMU_SILENCE
            out.append((stream.clock_ms, stream.packet(PT_PCMU, payload, ts=ts)))
            stream.clock_ms += PACKET_MS

    audio(lead_ms)
    pause: int | None = None
    keyed = False
    for match in _TOKEN.finditer(digits.upper()):
        if match.group(1) == "~":
            audio(pause or 0)
            audio(int(match.group(2)), tone=True)
            pause = 0
            continue
        if match.group(2) is not None:
            pause = int(match.group(2))
            continue
        digit = match.group(3)
        if digit not in EVENT_CODES:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        if keyed or pause is not None:
            audio(gap_ms if pause is None else pause)
        pause, keyed = None, True
        code = EVENT_CODES[digit]
        start_ts = stream.clock_ms * SAMPLES_PER_MS
        steps = max(1, tone_ms // PACKET_MS)
        for step in range(1, steps + 1):
            duration = step * PACKET_MS * SAMPLES_PER_MS
            payload = struct.pack("!BBH", code, volume & 0x3F, duration)
            out.append((stream.clock_ms, stream.packet(pt, payload, ts=start_ts, marker=step == 1)))
            stream.clock_ms += PACKET_MS
        end = struct.pack("!BBH", code, 0x80 | (volume & 0x3F), steps * PACKET_MS * SAMPLES_PER_MS)
        for _ in range(3):
            out.append((stream.clock_ms, stream.packet(pt, end, ts=start_ts)))
            stream.clock_ms += PACKET_MS
    audio(pause or 0)
    audio(tail_ms)
    return out


def _ipv4_udp(payload: bytes) -> bytes:
    udp_len = 8 + len(payload)
    udp = struct.pack("!HHHH", SRC[1], DST[1], udp_len, 0) + payload
    total = 20 + udp_len
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 17, 0, SRC[0], DST[0])
    checksum = _ip_checksum(header)
    header = header[:10] + struct.pack("!H", checksum) + header[12:]
    ethernet = b"\x00" * 6 + b"\x00" * 6 + b"\x08\x00"
    return ethernet + header + udp


def _ip_checksum(header: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def write_pcap(path: Path, packets: list[tuple[int, bytes]], *,
               start_s: int = 1_700_000_000) -> None:
    """Write a classic libpcap file (Ethernet link type) of RTP-in-UDP frames."""
    chunks = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for time_ms, rtp in packets:
        frame = _ipv4_udp(rtp)
        sec, usec = start_s + time_ms // 1000, (time_ms % 1000) * 1000
        chunks.append(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(chunks))


def make_dtmf_pcap(digits: str, path: Path, *, lead_ms: int = 500, gap_ms: int = 200,
                   tone_ms: int = 160, tail_ms: int = 200, pt: int = 101,
                   seed: int | None = None) -> Path:
    """Library entry point used by tests/harness/sipp.py."""
    write_pcap(path, build_packets(digits, lead_ms=lead_ms, gap_ms=gap_ms, tone_ms=tone_ms,
                                   tail_ms=tail_ms, pt=pt, seed=seed))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="RFC 4733 DTMF pcap for SIPp play_pcap_audio")
    parser.add_argument("digits", help="digits to send, e.g. '1234#' (may be empty)")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--lead-ms", type=int, default=500, help="silence before the first digit")
    parser.add_argument("--gap-ms", type=int, default=200, help="silence between digits")
    parser.add_argument("--tone-ms", type=int, default=160, help="length of each digit")
    parser.add_argument("--tail-ms", type=int, default=200, help="silence after the last digit")
    parser.add_argument("--pt", type=int, default=101, help="telephone-event payload type")
    args = parser.parse_args(argv)
    try:
        make_dtmf_pcap(args.digits, args.output, lead_ms=args.lead_ms, gap_ms=args.gap_ms,
                       tone_ms=args.tone_ms, tail_ms=args.tail_ms, pt=args.pt)
    except ValueError as exc:
        print(f"make_dtmf_pcap: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
