"""How numbers, yen, phone numbers, durations, times and dates are read aloud (pure).

Each function returns the text a TTS engine is given. :class:`Japanese` writes what
Open JTalk reads right (tests/integration/test_ivr_tts.py checks its phonemes):

* amounts in kanji numerals, the Japanese way: 1200 → 千二百円, 10000 → 一万円,
  1234567 → 百二十三万四千五百六十七円 (一 is dropped before 十, 百 and 千, kept before
  万, 億 and 兆);
* phone numbers and codes digit by digit in katakana, separated by 「、」 (kanji digits
  in a row are read as one number: 一二三四 → せんにひゃく…), with 「の」 between the
  groups as people say them: 03-1234-5678 → ゼロ、サン、の、イチ、ニー、サン、ヨン、の、…;
* durations and times with their counters (三十秒, 午後三時十五分; 十分 and 九分 are
  read じゅっぷん and きゅうふん in a sentence such as 「残り十分です」).

:class:`English` gives the words for espeak-ng ("one thousand two hundred yen").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, time
from typing import Protocol

import phonenumbers

from shared.language import Language
from shared.money import Money
from shared.phone import E164


class Reading(Protocol):
    @property
    def language(self) -> Language: ...

    def number(self, n: int) -> str: ...
    def yen(self, amount: int | Money) -> str: ...
    def digits(self, text: str) -> str: ...
    def phone(self, number: E164) -> str: ...
    def duration(self, seconds: int) -> str: ...
    def remaining(self, seconds: int) -> str: ...
    def queue_place(self, position: int) -> str: ...
    def clock(self, at: time) -> str: ...
    def day(self, on: date) -> str: ...


def yen_amount(amount: int | Money) -> int:
    """Whole yen: an int, or a JPY :class:`Money` without a fraction."""
    if isinstance(amount, Money):
        if amount.currency != "JPY" or amount.amount != amount.amount.to_integral_value():
            raise ValueError(f"not a whole amount of yen: {amount}")
        return int(amount.amount)
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError(f"yen are integers, got {amount!r}")
    return amount


def display_number(number: E164) -> str:
    """How the number is written: ``090-1234-5678`` at home, ``+1 650-253-0000`` abroad."""
    parsed = phonenumbers.parse(str(number))
    kind = (phonenumbers.PhoneNumberFormat.NATIONAL if number.region == "JP"
            else phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    return phonenumbers.format_number(parsed, kind)


def phone_groups(number: E164) -> list[str]:
    """The digit groups of ``number`` as written (:func:`display_number`), the country
    code first abroad."""
    groups = "".join(c if c.isdigit() else " " for c in display_number(number)).split()
    return groups or [number.digits]


def _check_digits(text: str) -> str:
    if not text or not (text.isascii() and text.isdigit()):
        raise ValueError(f"expected ASCII digits, got {text!r}")
    return text


def _check_seconds(seconds: int) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 0:
        raise ValueError(f"expected whole non-negative seconds, got {seconds!r}")
    return seconds


def _check_place(position: int) -> int:
    if position < 1:
        raise ValueError(f"a place in a queue starts at 1, not {position}")
    return position


def _hms(seconds: int) -> tuple[int, int, int]:
    minutes, s = divmod(_check_seconds(seconds), 60)
    h, m = divmod(minutes, 60)
    return h, m, s


_KANJI_DIGITS = "〇一二三四五六七八九"
_KANJI_SMALL = ((1000, "千"), (100, "百"), (10, "十"))
_KANJI_LARGE = ((10**12, "兆"), (10**8, "億"), (10**4, "万"))
_KATAKANA_DIGITS = "ゼロ イチ ニー サン ヨン ゴー ロク ナナ ハチ キュウ".split()
_WEEKDAYS_JA = "月火水木金土日"


@dataclass(frozen=True, slots=True)
class Japanese:
    language: Language = Language.JAPANESE

    def number(self, n: int) -> str:
        """Kanji numerals; 0 is ゼロ, a negative number マイナス…; up to 9999兆."""
        if n < 0:
            return "マイナス" + self.number(-n)
        if n == 0:
            return "ゼロ"
        if n >= 10**16:
            raise ValueError(f"{n} is too large to read (at most 9999兆)")
        parts = []
        for value, unit in _KANJI_LARGE:
            group, n = divmod(n, value)
            if group:
                parts.append(_below_10000(group) + unit)
        if n:
            parts.append(_below_10000(n))
        return "".join(parts)

    def yen(self, amount: int | Money) -> str:
        return self.number(yen_amount(amount)) + "円"

    def digits(self, text: str) -> str:
        return "、".join(_KATAKANA_DIGITS[int(c)] for c in _check_digits(text))

    def phone(self, number: E164) -> str:
        return "、の、".join(self.digits(group) for group in phone_groups(number))

    def duration(self, seconds: int) -> str:
        h, m, s = _hms(seconds)
        text = "".join(self.number(v) + unit
                       for v, unit in ((h, "時間"), (m, "分"), (s, "秒")) if v)
        return text or "ゼロ秒"

    def remaining(self, seconds: int) -> str:
        return f"残り{self.duration(seconds)}です"

    def queue_place(self, position: int) -> str:
        """ただいま二番目にお待ちいただいております (a customer's place in a queue, 1..)."""
        return f"ただいま{self.number(_check_place(position))}番目にお待ちいただいております"

    def clock(self, at: time) -> str:
        """午前九時, 午後三時十五分; midnight 午前零時, noon 午後零時."""
        half = "午前" if at.hour < 12 else "午後"
        hour = at.hour % 12
        text = f"{half}{'零' if hour == 0 else self.number(hour)}時"
        return text + (f"{self.number(at.minute)}分" if at.minute else "")

    def day(self, on: date) -> str:
        """十二月四日金曜日."""
        return (f"{self.number(on.month)}月{self.number(on.day)}日"
                f"{_WEEKDAYS_JA[on.weekday()]}曜日")


def _below_10000(n: int) -> str:
    text = ""
    for value, unit in _KANJI_SMALL:
        digit, n = divmod(n, value)
        if digit:
            text += ("" if digit == 1 else _KANJI_DIGITS[digit]) + unit
    return text + (_KANJI_DIGITS[n] if n else "")


_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_MONTHS = ("January February March April May June July August September October "
           "November December").split()
_ORDINALS = {"one": "first", "two": "second", "three": "third", "five": "fifth",
             "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}
_WEEKDAYS_EN = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()


@dataclass(frozen=True, slots=True)
class English:
    language: Language = Language.ENGLISH

    def number(self, n: int) -> str:
        if n < 0:
            return "minus " + self.number(-n)
        if n >= 10**15:
            raise ValueError(f"{n} is too large to read")
        parts = []
        for value, name in _SCALES:
            group, n = divmod(n, value)
            if group:
                parts.append(f"{_below_1000(group)} {name}")
        if n or not parts:
            parts.append(_below_1000(n))
        return " ".join(parts)

    def yen(self, amount: int | Money) -> str:
        value = yen_amount(amount)
        return f"{self.number(value)} yen"

    def digits(self, text: str) -> str:
        return " ".join(_ONES[int(c)] for c in _check_digits(text))

    def phone(self, number: E164) -> str:
        return ", ".join(self.digits(group) for group in phone_groups(number))

    def duration(self, seconds: int) -> str:
        h, m, s = _hms(seconds)
        text = " ".join(_plural(self.number(v), unit)
                        for v, unit in ((h, "hour"), (m, "minute"), (s, "second")) if v)
        return text or "zero seconds"

    def remaining(self, seconds: int) -> str:
        return f"{self.duration(seconds)} remaining"

    def queue_place(self, position: int) -> str:
        """You are second in line (a customer's place in a queue, 1..)."""
        return f"You are {self.ordinal(_check_place(position))} in line"

    def clock(self, at: time) -> str:
        """nine a.m., three fifteen p.m., three oh five p.m.; midnight twelve a.m."""
        half = "a.m." if at.hour < 12 else "p.m."
        hour = self.number(at.hour % 12 or 12)
        if at.minute == 0:
            return f"{hour} {half}"
        minute = self.number(at.minute)
        return f"{hour} {'oh ' if at.minute < 10 else ''}{minute} {half}"

    def day(self, on: date) -> str:
        """Friday, December fourth (espeak-ng reads "December 4" as "December four")."""
        return f"{_WEEKDAYS_EN[on.weekday()]}, {_MONTHS[on.month - 1]} {self.ordinal(on.day)}"

    def ordinal(self, n: int) -> str:
        """first, twelfth, twenty-third, thirtieth."""
        words = self.number(n)
        cut = max(words.rfind(" "), words.rfind("-")) + 1
        stem, last = words[:cut], words[cut:]
        if last in _ORDINALS:
            return stem + _ORDINALS[last]
        if last.endswith("y"):
            return stem + last[:-1] + "ieth"
        return stem + last + "th"


def _below_1000(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    words = [f"{_ONES[hundreds]} hundred"] if hundreds else []
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(_TENS[tens] + (f"-{_ONES[ones]}" if ones else ""))
    elif rest or not words:
        words.append(_ONES[rest])
    return " ".join(words)


def _plural(count: str, unit: str) -> str:
    return f"{count} {unit}" if count == "one" else f"{count} {unit}s"


JAPANESE = Japanese()
ENGLISH = English()


def reading(language: Language) -> Reading:
    return JAPANESE if language is Language.JAPANESE else ENGLISH



def spoken_text(parts: tuple[tuple[str, bool], ...], language: Language) -> str:
    """A flow's say text filled in (``(text, digits)`` parts): a ``digits`` part is read
    digit by digit in ``language``, its other characters dropped (``+81 3-1234`` → the
    digits 8131234)."""
    read = reading(language)
    out = []
    for text, digits in parts:
        if digits:
            text = "".join(c for c in text if c.isascii() and c.isdigit())
            text = read.digits(text) if text else ""
        out.append(text)
    return "".join(out)
