import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE

from shared.phone import (
    E164,
    CallerIdRefusal,
    InvalidNumber,
    NumberType,
    _parse_plus_digits,
    classify_caller_id,
    normalise,
)


@pytest.mark.parametrize(
    ("raw", "pres", "refusal"),
    [
        ("anonymous", None, CallerIdRefusal.WITHHELD),
        ("", None, CallerIdRefusal.WITHHELD),
        (None, None, CallerIdRefusal.WITHHELD),
        ("09012345678", "prohib_not_screened", CallerIdRefusal.WITHHELD),
        ("18409012345678", None, CallerIdRefusal.WITHHELD),
        ("09012345678&PJSIP/x", None, CallerIdRefusal.MALFORMED),
        ("+819012345678;foo", None, CallerIdRefusal.MALFORMED),
        ("12", None, CallerIdRefusal.INVALID),
    ],
)
def test_refusals_are_reason_coded(
    raw: str | None, pres: str | None, refusal: CallerIdRefusal
) -> None:
    result = classify_caller_id(raw, pres)
    assert result.number is None and result.refusal is refusal


@pytest.mark.parametrize("raw", ["09012345678", "+819012345678", "18609012345678"])
def test_mobile_numbers_normalise_to_e164(raw: str) -> None:
    result = classify_caller_id(raw, "allowed_not_screened")
    assert result.number == E164("819012345678")
    assert result.number.number_type is NumberType.MOBILE


# Numbers written for people, as phones and PBXs may send them (full-width: a Japanese
# PBX's display form, with the minus sign or the full-width hyphen-minus as the dash).
SEPARATED = ["090-1234-5678", "090 1234 5678", "(090) 1234-5678", "090.1234.5678",
             "０９０−１２３４−５６７８", "０９０－１２３４－５６７８", "０９０ー１２３４ー５６７８",
             "（０９０）１２３４‐５６７８", "+81 90-1234-5678", "＋８１　９０　１２３４　５６７８",
             "０９０１２３４５６７８"]


@pytest.mark.parametrize("raw", SEPARATED)
def test_caller_ids_with_separators_or_full_width_digits_are_numbers(raw: str) -> None:
    result = classify_caller_id(raw, "allowed_not_screened")
    assert result.refusal is None and result.number == E164("819012345678")
    assert normalise(raw) == E164("819012345678")


def test_186_with_separators_is_the_number_after_it() -> None:
    assert classify_caller_id("186-090-1234-5678").number == E164("819012345678")


@pytest.mark.parametrize(("raw", "refusal"), [
    ("184-090-1234-5678", CallerIdRefusal.WITHHELD),     # withheld, separators or not
    ("１８４０９０１２３４５６７８", CallerIdRefusal.WITHHELD),
    ("090-1234-abcd", CallerIdRefusal.MALFORMED),
    ("090-1234-5678;foo", CallerIdRefusal.MALFORMED),
    ("090+1234+5678", CallerIdRefusal.MALFORMED),        # a plus is only a prefix
    ("- ( ) -", CallerIdRefusal.MALFORMED),              # separators and nothing else
    ("090-1234", CallerIdRefusal.INVALID),
])
def test_separators_never_turn_a_refusal_into_a_number(raw: str,
                                                       refusal: CallerIdRefusal) -> None:
    result = classify_caller_id(raw, "allowed_not_screened")
    assert result.number is None and result.refusal is refusal


def test_number_types_and_parse() -> None:
    assert normalise("0570123456").number_type is NumberType.UAN
    assert normalise("0120123456").number_type is NumberType.TOLL_FREE
    assert normalise("0312345678").number_type is NumberType.FIXED_LINE
    assert str(E164.parse("+819012345678")) == "+819012345678"
    with pytest.raises(InvalidNumber):
        E164.parse("819012345678")


ARABIC_INDIC = "\u0669\u0660\u0661\u0662\u0663\u0664\u0665"
SUPERSCRIPT = "\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078"


@pytest.mark.parametrize("raw", [ARABIC_INDIC, SUPERSCRIPT, "⓪⑨⓪①②③④⑤⑥⑦⑧"])
def test_caller_ids_must_be_ascii_or_full_width_digits(raw: str) -> None:
    assert classify_caller_id(raw).refusal is CallerIdRefusal.MALFORMED


@pytest.mark.parametrize("text", ["+819012345678\n", "+８１９０１２３４５６７８"])
def test_e164_parse_is_strict(text: str) -> None:
    with pytest.raises(InvalidNumber):
        E164.parse(text)


@pytest.mark.parametrize("digits", [
    "819012345678", "81312345678", "81120123456", "81990123456", "819000000000",
    "14155552671", "12015550123", "1800555012", "447911123456", "44207946000", "8613800138000",
    "80012345678", "882130000000", "2341234567", "6012345678", "8190123456789",
])
def test_validity_is_what_libphonenumber_says(digits: str) -> None:
    import phonenumbers

    number = E164(digits)
    parsed = phonenumbers.parse("+" + digits, None)
    assert number.is_valid() == phonenumbers.is_valid_number(parsed)
    assert number.is_valid() == number.is_valid()  # cached: the same answer again


def test_a_number_no_country_has_is_invalid_and_refused_not_a_crash() -> None:
    from shared.destination import Policy

    number = E164("99912345678")  # +999: no country calling code
    assert number.region is None and not number.is_valid()
    assert number.number_type == NumberType.UNKNOWN
    verdict = Policy().evaluate(number)
    assert verdict is not None and verdict.reason == "destination_foreign"
    with pytest.raises(InvalidNumber):
        number.national()


# --- the fast parse of "+<ASCII digits>" is libphonenumber's parse, field for field ---------

def _library_parse(digits: str) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        return None


def _same_parse(digits: str) -> None:
    fast, library = _parse_plus_digits(digits), _library_parse(digits)
    assert fast == library, digits
    if fast is not None and library is not None:  # fields == may not compare
        assert (fast.italian_leading_zero, fast.number_of_leading_zeros,
                fast.country_code_source, fast.extension) == \
            (library.italian_leading_zero, library.number_of_leading_zeros,
             library.country_code_source, library.extension), digits


_COUNTRY_CODES = sorted(COUNTRY_CODE_TO_REGION_CODE)


@settings(max_examples=1500, deadline=None)
@given(st.text(alphabet="0123456789", max_size=22))
def test_fast_parse_matches_the_library_on_any_digits(digits: str) -> None:
    _same_parse(digits)


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(_COUNTRY_CODES), st.text(alphabet="0123456789", max_size=16))
def test_fast_parse_matches_the_library_after_every_country_code(code: int, rest: str) -> None:
    _same_parse(f"{code}{rest}")


@pytest.mark.parametrize("code", _COUNTRY_CODES)
def test_fast_parse_matches_the_library_on_national_prefixes_and_zeros(code: int) -> None:
    # trunk prefixes a caller may leave in (+81 0 90...), Italian leading zeros, lengths
    for rest in ("0", "00", "000000", "0901234567", "09012345678", "1", "12345678",
                 "0612345678", "00612345678", "8", "80012345678", "123456789012345"):
        _same_parse(f"{code}{rest}")


def test_unassigned_country_codes_and_other_scripts_still_parse_as_before() -> None:
    assert E164("9991234567").region is None
    assert E164("819012345678").region == "JP"
    assert E164("819012345678").number_type is NumberType.MOBILE
