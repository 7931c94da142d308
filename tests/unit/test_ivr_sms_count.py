"""SMS segment counting: GSM-7 160/153 with the extension table, UCS-2 70 then per 65."""

from __future__ import annotations

import pytest

from ivr_platform.sms import Encoding, count


@pytest.mark.parametrize(("text", "encoding", "units", "segments"), [
    ("", Encoding.GSM7, 0, 0),
    ("a" * 160, Encoding.GSM7, 160, 1),
    ("a" * 161, Encoding.GSM7, 161, 2),
    ("a" * 306, Encoding.GSM7, 306, 2),
    ("a" * 307, Encoding.GSM7, 307, 3),
    ("€" * 80, Encoding.GSM7, 160, 1),            # extension characters count 2
    ("€" + "a" * 159, Encoding.GSM7, 161, 2),
    # 152 septets then an escape pair: the pair moves to the second part whole
    ("a" * 152 + "[" + "a" * 152, Encoding.GSM7, 306, 3),
    ("a" * 151 + "[" + "a" * 153, Encoding.GSM7, 306, 2),
    ("Hello @ £5 {ok}", Encoding.GSM7, 17, 1),
    ("あ" * 70, Encoding.UCS2, 70, 1),
    ("あ" * 71, Encoding.UCS2, 71, 2),
    ("あ" * 130, Encoding.UCS2, 130, 2),
    ("あ" * 131, Encoding.UCS2, 131, 3),
    ("a" * 69 + "é", Encoding.GSM7, 70, 1),        # é is in the GSM-7 alphabet
    ("a" * 100 + "ê", Encoding.UCS2, 101, 2),      # ê is not: the whole text is UCS-2
    ("😀" * 35, Encoding.UCS2, 70, 1),             # outside the BMP: 2 units each
    ("a" * 64 + "😀" + "a" * 6, Encoding.UCS2, 72, 2),
    ("a" * 64 + "😀" + "a" * 65, Encoding.UCS2, 131, 3),   # the emoji is not split
])
def test_segments(text: str, encoding: Encoding, units: int, segments: int) -> None:
    result = count(text)
    assert (result.encoding, result.units, result.segments) == (encoding, units, segments)


def test_a_japanese_reservation_message() -> None:
    text = ("ご予約ありがとうございます。予約番号は123456です。変更は次のURLから: "
            "https://example.jp/r/123456")
    result = count(text)
    assert result.encoding is Encoding.UCS2
    assert result.units == len(text) == 67 and result.segments == 1
    assert count(text + "。" * 3).segments == 1
    assert count(text + "。" * 4).segments == 2
