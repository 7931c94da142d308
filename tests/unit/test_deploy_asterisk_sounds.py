"""The sounds ``deploy/asterisk/instance.py install`` writes: every ``.wav`` also as G.711
``.ulaw`` and ``.alaw`` beside it (so Asterisk plays a prompt on a ulaw or alaw channel
without translating it), decoding back to the wav's samples within G.711's error."""

from __future__ import annotations

import array
import io
import os
import wave
from pathlib import Path
from types import ModuleType

import pytest

from tests.harness.asterisk import instance_tool
from tests.harness.rtp import _linear as ulaw_linear


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    return instance_tool()


def alaw_linear(byte: int) -> int:
    """One G.711 A-law byte as a 16-bit linear sample (the reference decoder)."""
    a = byte ^ 0x55
    segment = (a & 0x70) >> 4
    magnitude = ((a & 0x0F) << 4) + (8 if segment == 0 else 0x108)
    if segment > 1:
        magnitude <<= segment - 1
    return magnitude if a & 0x80 else -magnitude


DECODE = {"ulaw": ulaw_linear, "alaw": alaw_linear}


def within_g711_error(sample: int, decoded: int) -> bool:
    """G.711 keeps 4 mantissa bits a segment: the error is under 1/16 of the sample (its
    step at the smallest levels: 16), more only past the encoders' clip."""
    return abs(decoded - sample) <= max(16, abs(sample) // 16)


def wav_samples(wav: bytes) -> list[int]:
    with wave.open(io.BytesIO(wav), "rb") as w:
        return list(array.array("h", w.readframes(w.getnframes())))


def test_known_codes_of_the_standard(tool: ModuleType) -> None:
    assert [tool.ulaw_byte(s) for s in (0, -1, 32767, -32768)] == [0xFF, 0x7F, 0x80, 0x00]
    assert [tool.alaw_byte(s) for s in (0, -1, 32767, -32768)] == [0xD5, 0x55, 0xAA, 0x2A]


@pytest.mark.parametrize("law", ["ulaw", "alaw"])
def test_every_sample_decodes_back_within_the_error_and_in_order(tool: ModuleType,
                                                                 law: str) -> None:
    encode = {"ulaw": tool.ulaw_byte, "alaw": tool.alaw_byte}[law]
    decoded = [DECODE[law](encode(s)) for s in range(-32768, 32768)]
    bad = [s for s, d in zip(range(-32768, 32768), decoded, strict=True)
           if not within_g711_error(s, d)]
    assert bad == []
    assert decoded == sorted(decoded)      # a louder sample never decodes quieter


def test_installed_sounds_have_all_three_formats_and_stale_ones_go(tool: ModuleType,
                                                                   tmp_path: Path) -> None:
    tune = tool.hold_music()
    rendered_dir = tmp_path / "rendered"
    rendered_dir.mkdir()
    (rendered_dir / "a.wav").write_bytes(tune)
    (rendered_dir / "b.wav").write_bytes(tool.hold_music(seconds_per_note=0.1))
    sounds = tmp_path / "sounds"
    uid, gid = os.getuid(), os.getgid()
    tool.install_prompts({"ja": {"cbgw/received": rendered_dir / "a.wav",
                                 "digits/1": rendered_dir / "b.wav"}}, sounds, uid, gid)
    for stem in ("ja/cbgw/received", "ja/digits/1"):
        assert sorted(p.name for p in (sounds / stem).parent.glob("*")) == [
            f"{Path(stem).name}.{ext}" for ext in ("alaw", "ulaw", "wav")]
    samples = wav_samples(tune)
    assert max(samples) > 9000             # loud enough that the error bound is tested
    for law in ("ulaw", "alaw"):
        coded = (sounds / f"ja/cbgw/received.{law}").read_bytes()
        assert len(coded) == len(samples)
        assert all(within_g711_error(s, DECODE[law](b))
                   for s, b in zip(samples, coded, strict=True))

    tool.install_prompts({"ja": {"cbgw/closed": rendered_dir / "a.wav"}}, sounds, uid, gid)
    assert sorted(p.name for p in (sounds / "ja/cbgw").glob("*")) == [
        "closed.alaw", "closed.ulaw", "closed.wav"]


def test_a_sound_not_8_khz_mono_16_bit_is_refused(tool: ModuleType) -> None:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * 160)
    with pytest.raises(tool.InstanceError, match="not 8 kHz 16-bit mono"):
        tool.g711(out.getvalue(), "ulaw")
