"""What a call notification says, in Japanese and English (the CallCall guide's list)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ivr_platform.notice import CallNotice
from shared.language import Language
from shared.phone import normalise

AT = datetime(2026, 12, 4, 6, 15, tzinfo=UTC)   # 15:15 in Tokyo
FULL = CallNotice(
    "shop-1", normalise("090-1234-5678"), AT, called=normalise("03-1234-5678"),
    company="株式会社サンプル", name="山田太郎", choices=(("問い合わせ種別", "予約"),),
    digits=(("会員番号", "123456"),), transcript="明日の予約を変更したいです",
    recording_url="https://rec.example.jp/r/abc")


def test_everything_the_guide_lists_in_japanese() -> None:
    assert FULL.text() == "\n".join([
        "【着信通知】",
        "発信者番号: 090-1234-5678",
        "会社名: 株式会社サンプル",
        "名前: 山田太郎",
        "着信日時: 2026年12月4日(金) 15:15",
        "着信番号: 03-1234-5678",
        "問い合わせ種別: 予約",
        "会員番号: 123456",
        "音声認識: 明日の予約を変更したいです",
        "録音: https://rec.example.jp/r/abc",
    ])
    assert FULL.title() == "着信通知 090-1234-5678 株式会社サンプル 山田太郎"
    assert FULL.link() == ("録音を聞く", "https://rec.example.jp/r/abc")


def test_english() -> None:
    assert FULL.fields(Language.ENGLISH)[:4] == [
        ("Caller", "090-1234-5678"), ("Company", "株式会社サンプル"), ("Name", "山田太郎"),
        ("Received", "Fri 4 Dec 2026 15:15 JST")]
    assert FULL.title(Language.ENGLISH).startswith("Incoming call 090-1234-5678")


def test_a_withheld_caller_not_in_the_phonebook() -> None:
    bare = CallNotice("shop-1", None, AT)
    assert bare.text() == "【着信通知】\n発信者番号: 非通知\n着信日時: 2026年12月4日(金) 15:15"
    assert bare.title() == "着信通知 非通知"
    assert bare.link() is None
    abroad = CallNotice("shop-1", normalise("+1 650 253 0000"), AT)
    assert abroad.fields()[0] == ("発信者番号", "+1 650-253-0000")


def test_bad_notices_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        CallNotice("shop-1", None, datetime(2026, 12, 4, 15, 15))
    with pytest.raises(ValueError, match="recording_url"):
        CallNotice("shop-1", None, AT, recording_url="javascript:alert(1)")
