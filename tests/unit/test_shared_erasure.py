"""What an erasure looks for and what it writes: every form of the number, longest first
(so the E.164 form is replaced whole, not its digits inside it), and a pseudonym that is
the same for the same merchant, number and secret and tells nothing otherwise."""

from __future__ import annotations

from shared.erasure import PREFIX, Kind, Table, forms, pseudonym, update_sql
from shared.phone import normalise

NUMBER = normalise("090-1234-5678")


def test_every_form_of_the_number_longest_first() -> None:
    assert forms(NUMBER) == ("+819012345678", "819012345678", "09012345678", "9012345678")
    assert forms(normalise("03-1234-5678")) == ("+81312345678", "81312345678",
                                               "0312345678", "312345678")


def test_the_pseudonym_is_stable_and_keyed() -> None:
    alias = pseudonym("acme", NUMBER, b"secret")
    assert alias == pseudonym("acme", NUMBER, b"secret")
    assert alias.startswith(PREFIX) and len(alias) == len(PREFIX) + 16
    assert "9012345678" not in alias
    others = {pseudonym("bento", NUMBER, b"secret"), pseudonym("acme", NUMBER, b"other"),
              pseudonym("acme", normalise("090-1234-5679"), b"secret")}
    assert alias not in others and len(others) == 3


def test_one_update_per_table_replaces_each_form_in_each_column() -> None:
    sql = update_sql(Table("outbox", (("body", Kind.BYTES), ("note", Kind.TEXT))), 2)
    assert sql == (
        "UPDATE outbox SET body = convert_to(replace(replace(convert_from(body, 'UTF8'), $3, "
        "$2), $4, $2), 'UTF8'), note = replace(replace(note, $3, $2), $4, $2) "
        "WHERE (merchant_id = $1) AND (strpos(convert_from(body, 'UTF8'), $3) > 0 OR "
        "strpos(convert_from(body, 'UTF8'), $4) > 0 OR strpos(note, $3) > 0 OR "
        "strpos(note, $4) > 0)")
