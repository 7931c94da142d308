"""A page's language from ``Accept-Language``: the first of Japanese and English by
q-value (ties: the order given), q=0 refused, anything else Japanese."""

from __future__ import annotations

import pytest

from shared.language import Language
from web.language import accepted

JA, EN = Language.JAPANESE, Language.ENGLISH


@pytest.mark.parametrize(("header", "language"), [
    ("", JA), ("fr-FR, de", JA), ("en", EN), ("en-US,en;q=0.9,ja;q=0.8", EN),
    ("ja-JP,ja;q=0.9,en;q=0.8", JA), ("fr, en;q=0.5, ja;q=0.7", JA),
    ("EN-gb", EN), ("en;q=0, fr", JA), ("en, ja", EN), ("ja, en", JA),
    ("en;q=oops, ja;q=0.1", JA), ("en;q=2", JA), (";;,,", JA),
])
def test_the_page_language(header: str, language: Language) -> None:
    assert accepted(header) is language
