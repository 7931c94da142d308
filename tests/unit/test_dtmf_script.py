"""The caller's keys as the e2e phones send them: ``make_dtmf_pcap``'s ``[N]`` pauses put N
ms of silence where the gap would be (so a caller keys each answer once its prompt has
ended), ``[~N]`` N ms of sound (a message to record), and :meth:`RtpCapture.keys` reads each
digit back from the packets the phone sent."""

from __future__ import annotations

import struct

import pytest

from tests.harness.rtp import RtpCapture, _sounds
from tests.harness.sipp import _pcap_tool

EVENT = 101


def digit_starts(script: str, **options: int) -> list[tuple[int, int]]:
    """(ms, event code) of each digit's first event packet (the marker bit)."""
    packets = _pcap_tool().build_packets(script, lead_ms=500, gap_ms=200, tone_ms=160,
                                         tail_ms=200, pt=EVENT, seed=1, **options)
    starts = []
    for at, rtp in packets:
        marker, pt = rtp[1] >> 7, rtp[1] & 0x7F
        if pt == EVENT and marker:
            starts.append((at, struct.unpack("!B", rtp[12:13])[0]))
    return starts


def test_pauses_replace_the_gap_between_digits_and_lead_the_first() -> None:
    # a digit lasts 160 ms of tone and 3 end packets: 220 ms
    assert digit_starts("12") == [(500, 1), (500 + 220 + 200, 2)]
    assert digit_starts("1[3000]2[40]#") == [(500, 1), (500 + 220 + 3000, 2),
                                             (500 + 220 + 3000 + 220 + 40, 11)]
    assert digit_starts("[2500]1") == [(500 + 2500, 1)]


def test_a_trailing_pause_is_silence_before_the_tail() -> None:
    tool = _pcap_tool()
    plain = tool.build_packets("1", lead_ms=0, gap_ms=200, tone_ms=160, tail_ms=200,
                               pt=EVENT, seed=1)
    paused = tool.build_packets("1[1000]", lead_ms=0, gap_ms=200, tone_ms=160,
                                tail_ms=200, pt=EVENT, seed=1)
    assert paused[-1][0] - plain[-1][0] == 1000


def test_a_tone_is_sound_for_its_length_and_the_next_key_follows_it_at_once() -> None:
    packets = _pcap_tool().build_packets("1[1000][~3000]#", lead_ms=500, gap_ms=200,
                                         tone_ms=160, tail_ms=200, pt=EVENT, seed=1)
    loud = [at for at, rtp in packets if rtp[1] & 0x7F == 0 and _sounds(rtp[12:])]
    tone_starts = 500 + 220 + 1000
    assert (loud[0], loud[-1]) == (tone_starts, tone_starts + 3000 - 20)
    assert len(loud) == 3000 // 20
    assert digit_starts("1[1000][~3000]#")[1] == (tone_starts + 3000, 11)


def test_not_a_digit_is_refused() -> None:
    with pytest.raises(ValueError, match="not a DTMF digit: 'X'"):
        digit_starts("1[20]X")


def test_the_capture_reads_each_digit_the_phone_sent() -> None:
    capture = RtpCapture.__new__(RtpCapture)      # no socket: only the packets it kept
    silence = [(0.00, 0), (0.02, 0)]
    one = [(0.04, EVENT), (0.06, EVENT), (0.08, EVENT)]
    gap = [(0.10, 0)]
    two = [(0.12, EVENT), (0.14, EVENT)]
    capture.sent = [*silence, *one, *gap, *two, (0.16, 0)]
    assert capture.keys() == [(0.04, 0.08), (0.12, 0.14)]
