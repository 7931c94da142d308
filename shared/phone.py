"""Phone numbers: parse once at the edge of the system into value types.

``E164`` is a validated international number. ``classify_caller_id`` turns what
a carrier hands us (a caller-ID string, a presentation flag, maybe a dialled
prefix) into either a number or a reason-coded refusal. Nothing past this
module handles raw caller-ID strings.

Japanese specifics:
* ``186`` (show my number) and ``184`` (withhold it) are dialling prefixes, not
  part of a number: strip them before parsing, and treat 184 as withheld.
* ``anonymous``, empty, a prohibited presentation or a non-digit ID are all
  withheld as far as a call-back is concerned: there is no one to call.
* Phones and PBXs may send a number written for people: ``090-1234-5678``,
  ``(090) 1234-5678``, or in full-width characters, ``０９０−１２３４−５６７８``.
  Separators (spaces, hyphens and dashes, dots, parentheses; half- or full-width)
  are dropped and full-width digits read as digits, for caller IDs and configured
  numbers alike (:func:`digits_of`). Other scripts' digits stay non-digits.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumberType
from phonenumbers import phonenumberutil as pu

# ASCII digits only, and \Z: Python's \d also matches other scripts' digits, and $
# also matches before a trailing newline.
_E164 = re.compile(r"\A\+[1-9][0-9]{6,14}\Z")
_DIGITS = re.compile(r"\A\+?[0-9]+\Z")
# Spaces (\s includes the ideographic space U+3000), hyphen-minus, the Unicode hyphens
# and dashes U+2010-2015, the minus sign U+2212, the katakana prolonged sound mark
# (half- and full-width: typed for a dash in Japanese text), full-width hyphen-minus,
# parentheses and full stop.
_SEPARATORS = re.compile(r"[\s\-().\u2010-\u2015\u2212\u30fc\uff70\uff0d\uff08\uff09\uff0e]")
_FULLWIDTH = str.maketrans("０１２３４５６７８９＋", "0123456789+")
WITHHELD_NAMES = frozenset({"anonymous", "unknown", "private", "restricted", "unavailable",
                            "withheld", "non-disclosure"})


# libphonenumber looks its metadata patterns up with re.compile() on every match, in the
# re module's cache (512 entries for every region's patterns); its own cache keeps them
# compiled once: a new number's type took 7.8 µs instead of 5.2 µs without it.
phonenumbers.enable_pattern_cache()


class InvalidNumber(ValueError):
    """A string that is not an E.164 number."""


# Parsing and classifying with libphonenumber costs 10-20 µs each, and one number is
# looked at several times per decision (region, type, validity; intake, then every
# round): remember recent numbers. The parsed objects are shared: never mutate them.
@functools.lru_cache(maxsize=16_384)
def _parse(digits: str) -> phonenumbers.PhoneNumber | None:
    """None: no country calling code starts these digits (e.g. ``+999...``)."""
    if digits.isascii() and digits.isdigit():
        return _parse_plus_digits(digits)
    try:
        return phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        return None


# ``phonenumbers.parse("+" + digits, None)`` for ASCII digits, without the steps that
# only free text needs (extracting the number from text, normalising other scripts'
# digits, extensions): a quarter of the time, and most of a new caller's screening. The
# same library functions, in the same order, on the same metadata;
# tests/unit/test_shared_phone.py checks it against ``parse`` (hypothesis and every
# country calling code), so a library upgrade that diverges fails there.
_PARSE_STRIP_REFUSED = frozenset({pu.ValidationResult.TOO_SHORT,
                                  pu.ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
                                  pu.ValidationResult.INVALID_LENGTH})


def _parse_plus_digits(digits: str) -> phonenumbers.PhoneNumber | None:
    if len(digits) <= pu._MIN_LENGTH_FOR_NSN or len(digits) >= pu._MAX_INPUT_STRING_LENGTH:
        return None  # not viable / too short after the "+" / too long to parse
    country_code, national = pu._extract_country_code(digits)
    if country_code == 0 or len(national) < pu._MIN_LENGTH_FOR_NSN:
        return None
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(
        country_code, pu.region_code_for_country_code(country_code))
    if metadata is None:
        return None
    _, stripped, _ = pu._maybe_strip_national_prefix_carrier_code(national, metadata)
    if pu._test_number_length(stripped, metadata) not in _PARSE_STRIP_REFUSED:
        national = stripped
    if not pu._MIN_LENGTH_FOR_NSN <= len(national) <= pu._MAX_LENGTH_FOR_NSN:
        return None
    parsed = phonenumbers.PhoneNumber(country_code=country_code)
    pu._set_italian_leading_zeros_for_phone_number(national, parsed)
    parsed.national_number = int(national)
    return parsed


@functools.lru_cache(maxsize=16_384)
def _raw_type(digits: str) -> int:
    parsed = _parse(digits)
    if parsed is None:
        return int(PhoneNumberType.UNKNOWN)
    return int(phonenumbers.number_type(parsed))


def _number_type(digits: str) -> NumberType:
    return NumberType.of(_raw_type(digits))


def _is_valid(digits: str) -> bool:
    # libphonenumber's is_valid_number is "its region's metadata gives it a type":
    # number_type() != UNKNOWN, the same pattern matching, so it is not done twice.
    return _raw_type(digits) != PhoneNumberType.UNKNOWN


@dataclass(frozen=True, slots=True, order=True)
class E164:
    """An E.164 number, stored as its digits without the ``+``."""

    digits: str

    def __post_init__(self) -> None:
        if not _E164.match("+" + self.digits):
            raise InvalidNumber(f"not an E.164 number: +{self.digits}")

    @classmethod
    def parse(cls, text: str) -> E164:
        """Strict: ``+`` then 7-15 digits. Use :func:`normalise` for user input."""
        if not _E164.match(text):
            raise InvalidNumber(f"not an E.164 number (expected +<digits>): {text!r}")
        return cls(text[1:])

    @property
    def country_code(self) -> int:
        code = self._parsed().country_code
        assert code is not None  # always set for a parsed international number
        return code

    @property
    def region(self) -> str | None:
        """ISO region, ``001`` for non-geographic codes, None when no country has it."""
        parsed = _parse(self.digits)
        return None if parsed is None else phonenumbers.region_code_for_number(parsed)

    @property
    def number_type(self) -> NumberType:
        return _number_type(self.digits)

    def is_valid(self) -> bool:
        return _is_valid(self.digits)

    def national(self) -> str:
        """National dialling format without separators, e.g. ``09012345678``."""
        num = self._parsed()
        return phonenumbers.format_number(
            num, phonenumbers.PhoneNumberFormat.NATIONAL).replace(" ", "").replace("-", "")

    def _parsed(self) -> phonenumbers.PhoneNumber:
        parsed = _parse(self.digits)
        if parsed is None:
            raise InvalidNumber(f"+{self.digits}: no country has this calling code")
        return parsed

    def __str__(self) -> str:
        return "+" + self.digits


class NumberType(enum.StrEnum):
    MOBILE = "mobile"
    FIXED_LINE = "fixed_line"
    FIXED_LINE_OR_MOBILE = "fixed_line_or_mobile"
    TOLL_FREE = "toll_free"
    PREMIUM_RATE = "premium_rate"
    SHARED_COST = "shared_cost"
    VOIP = "voip"
    PERSONAL_NUMBER = "personal_number"
    PAGER = "pager"
    UAN = "uan"
    VOICEMAIL = "voicemail"
    UNKNOWN = "unknown"

    @classmethod
    def of(cls, value: int) -> NumberType:
        return _TYPE_MAP.get(value, cls.UNKNOWN)


_TYPE_MAP = {
    PhoneNumberType.MOBILE: NumberType.MOBILE,
    PhoneNumberType.FIXED_LINE: NumberType.FIXED_LINE,
    PhoneNumberType.FIXED_LINE_OR_MOBILE: NumberType.FIXED_LINE_OR_MOBILE,
    PhoneNumberType.TOLL_FREE: NumberType.TOLL_FREE,
    PhoneNumberType.PREMIUM_RATE: NumberType.PREMIUM_RATE,
    PhoneNumberType.SHARED_COST: NumberType.SHARED_COST,
    PhoneNumberType.VOIP: NumberType.VOIP,
    PhoneNumberType.PERSONAL_NUMBER: NumberType.PERSONAL_NUMBER,
    PhoneNumberType.PAGER: NumberType.PAGER,
    PhoneNumberType.UAN: NumberType.UAN,
    PhoneNumberType.VOICEMAIL: NumberType.VOICEMAIL,
}


def digits_of(text: str) -> str:
    """A number as people write it, as ASCII: full-width digits and ``＋`` read as
    ASCII, separators dropped (``(090) 1234-5678`` -> ``09012345678``). Anything else
    is left as it is, for the caller to refuse."""
    return _SEPARATORS.sub("", text.strip().translate(_FULLWIDTH))


def normalise(text: str, default_region: str = "JP") -> E164:
    """Parse a dialled or displayed number in national or international form.

    Raises ``InvalidNumber`` naming what is wrong.
    """
    cleaned = digits_of(text)
    if not cleaned or not _DIGITS.match(cleaned):
        raise InvalidNumber(f"number must be digits with an optional leading +: {text!r}")
    if cleaned.startswith("00"):  # international prefix used in many regions, incl. JP 010
        cleaned = "+" + cleaned[2:]
    elif default_region == "JP" and cleaned.startswith("010"):
        cleaned = "+" + cleaned[3:]
    try:
        parsed = phonenumbers.parse(cleaned, default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidNumber(f"cannot parse {text!r}: {exc}") from exc
    if not phonenumbers.is_possible_number(parsed):
        raise InvalidNumber(f"not a possible number: {text!r}")
    return E164(f"{parsed.country_code}{parsed.national_number}")


class CallerIdRefusal(enum.StrEnum):
    """Why an inbound call cannot be called back. Stable codes: logs, DB, API."""

    WITHHELD = "caller_id_withheld"          # 184, anonymous, empty, prohibited presentation
    MALFORMED = "caller_id_malformed"        # non-digits, injection attempts
    INVALID = "caller_id_invalid"            # digits, but not a valid number


@dataclass(frozen=True, slots=True)
class CallerId:
    """The outcome of reading an inbound caller ID."""

    number: E164 | None
    refusal: CallerIdRefusal | None
    detail: str

    @property
    def ok(self) -> bool:
        return self.number is not None


def classify_caller_id(raw: str | None, presentation: str | None = None,
                       default_region: str = "JP") -> CallerId:
    """Read a caller ID as the edge receives it.

    ``presentation`` is Asterisk's ``CALLERID(pres)`` (``allowed_not_screened``,
    ``prohib_not_screened`` ...); anything starting with ``prohib`` or equal to
    ``unavailable`` means withheld.
    """
    text = (raw or "").strip()
    if presentation and (presentation.startswith("prohib") or presentation == "unavailable"):
        return CallerId(None, CallerIdRefusal.WITHHELD, f"presentation {presentation}")
    if not text or text.lower() in WITHHELD_NAMES:
        return CallerId(None, CallerIdRefusal.WITHHELD, f"caller id {text or 'empty'!r}")
    digits = digits_of(text)
    if not _DIGITS.match(digits):
        return CallerId(None, CallerIdRefusal.MALFORMED, f"non-digit caller id {text[:40]!r}")
    if digits.startswith("184"):
        return CallerId(None, CallerIdRefusal.WITHHELD, "184 prefix (withhold) dialled")
    if digits.startswith("186"):
        digits = digits[3:]
    try:
        number = normalise(digits, default_region)
    except InvalidNumber as exc:
        return CallerId(None, CallerIdRefusal.INVALID, str(exc))
    if not number.is_valid():
        return CallerId(None, CallerIdRefusal.INVALID, f"not a valid number: {number}")
    return CallerId(number, None, "ok")
