import pytest

from shared.phone import (
    E164,
    CallerIdRefusal,
    InvalidNumber,
    NumberType,
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


def test_caller_ids_are_digits_only_but_configured_numbers_may_have_separators() -> None:
    assert classify_caller_id("090-1234-5678").refusal is CallerIdRefusal.MALFORMED
    assert normalise("090-1234-5678") == E164("819012345678")


def test_number_types_and_parse() -> None:
    assert normalise("0570123456").number_type is NumberType.UAN
    assert normalise("0120123456").number_type is NumberType.TOLL_FREE
    assert normalise("0312345678").number_type is NumberType.FIXED_LINE
    assert str(E164.parse("+819012345678")) == "+819012345678"
    with pytest.raises(InvalidNumber):
        E164.parse("819012345678")


FULLWIDTH = "０９０１２３４５６７８"
ARABIC_INDIC = "\u0669\u0660\u0661\u0662\u0663\u0664\u0665"


@pytest.mark.parametrize("raw", [FULLWIDTH, ARABIC_INDIC])
def test_caller_ids_must_be_ascii_digits(raw: str) -> None:
    assert classify_caller_id(raw).refusal is CallerIdRefusal.MALFORMED


@pytest.mark.parametrize("text", ["+819012345678\n", "+８１９０１２３４５６７８"])
def test_e164_parse_is_strict(text: str) -> None:
    with pytest.raises(InvalidNumber):
        E164.parse(text)
