from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing_rates.deckfile import FIELD_LIMIT, DeckParser, DeckProblem
from routing_rates.profile import ColumnProfile, ProfileError, load_profile, parse_profile

DATA = Path(__file__).resolve().parents[2] / "routing_rates" / "data"
GENERIC = load_profile("generic")
HEADER = "prefix,destination,rate,connect,initial,increment\n"


def parse(text: str, profile: ColumnProfile = GENERIC,
          chunk_lines: int = 4096) -> tuple[list[list[str]], list[DeckProblem]]:
    parser = DeckParser(profile)
    out = "".join(parser.chunks(io.StringIO(text, newline=""), chunk_lines=chunk_lines))
    rows = [line.split("\t") for line in out.splitlines()]
    return rows, parser.problems


def test_good_generic_deck() -> None:
    rows, problems = parse(HEADER + "8190,Japan mobile,0.1398,0,60,60\n81,Japan,0.0385,0,1,1\n")
    assert problems == []
    assert rows == [
        ["8190", "Japan mobile", "0.1398", "60", "60", "60", "0", "0", "USD", "", "", "\\N",
         "\\N", "2"],
        ["81", "Japan", "0.0385", "60", "1", "1", "0", "0", "USD", "", "", "\\N", "\\N", "3"],
    ]


@pytest.mark.parametrize(("line", "column", "reason"), [
    ("8190,JP,abc,0,60,60", "rate", "not a number"),
    ("8190,JP,-0.1,0,60,60", "rate", "negative value"),
    ("8190,JP,,0,60,60", "rate", "not a number"),
    ("81-90,JP,0.1,0,60,60", "prefix", "digits only"),
    ("+8190,JP,0.1,0,60,60", "prefix", "digits only"),
    ("08190,JP,0.1,0,60,60", "prefix", "must not start with 0"),
    ("8190,JP,0.1,x,60,60", "connect_fee", "not a number"),
    ("8190,JP,0.1,0,60,0", "increment_s", "whole number >= 1"),
    ("8190,JP,0.1,0,6.5,60", "initial_s", "whole number >= 0"),
    ("8190,JP,0.1", "*", "expected at least 6 columns"),
])
def test_every_bad_line_is_reported_with_line_and_column(line: str, column: str,
                                                         reason: str) -> None:
    good = "81,Japan,0.0385,0,60,60\n"
    rows, problems = parse(HEADER + good + line + "\n" + good.replace("81,", "82,"))
    assert len(problems) == 1, problems
    assert problems[0].line == 3
    assert problems[0].column == column
    assert reason in problems[0].reason


def test_bulk_report_lists_every_bad_line() -> None:
    lines = [f"{100 + i},X,0.1,0,60,60" for i in range(20)]
    lines[3] = "103,X,bad,0,60,60"
    lines[11] = "1x1,X,0.1,0,60,60"
    lines[17] = "117,X,-1,0,60,60"
    _, problems = parse(HEADER + "\n".join(lines) + "\n", chunk_lines=4)
    assert [(p.line, p.column) for p in problems] == [(5, "rate"), (13, "prefix"),
                                                      (19, "rate")]


def test_unknown_currency_column() -> None:
    profile = parse_profile("""
        [columns]
        prefix = "p"
        rate = "r"
        currency = "c"
    """)
    _, problems = parse("p,r,c\n81,0.1,USD\n82,0.1,UDS\n83,0.1,jpy\n", profile)
    assert [(p.line, p.column, p.value) for p in problems] == [(3, "currency", "UDS")]


def test_unknown_currency_in_profile_is_refused() -> None:
    with pytest.raises(ProfileError, match="unknown currency"):
        parse_profile('currency = "XYZ"\n[columns]\nprefix = "p"\nrate = "r"\n')


def test_missing_header_column_is_reported_on_the_header_line() -> None:
    _, problems = parse("prefix,dest,rate\n81,JP,0.1\n")
    assert problems[0].line == 1
    assert "destination" in problems[0].reason


def test_semicolons_and_decimal_commas() -> None:
    profile = load_profile("carrier-b")
    text = (DATA / "carrier-b.csv").read_text()
    rows, problems = parse(text, profile)
    assert problems == []
    jp = [r for r in rows if r[0] == "8190"]
    assert [(r[2], r[10]) for r in jp] == [("0.1368", ""), ("0.1250", "offpeak")]
    assert jp[0][4:6] == ["6", "6"]
    _, problems = parse("Prefix;Destination;Rate;Setup;Min;Incr;Period\n81;JP;0.1,2;0;6;6;\n",
                        profile)
    assert problems[0].line == 2 and problems[0].column == "rate"


def test_excel_bom_crlf_title_line_quotes_and_end_dates() -> None:
    profile = load_profile("excel")
    rows, problems = parse((DATA / "carrier-c.csv").read_text(encoding="utf-8-sig"), profile)
    assert problems == []
    assert rows[0][:4] == ["81", "Japan, fixed", "0.00124", "1"]
    assert rows[-1][12].startswith("2027-12-31T00:00:00")
    assert rows[-1][-1] == "7"


def test_plivo_profile_origins_and_quoted_destinations() -> None:
    text = ('prefix,destination,rate_usd_per_min,origination_prefixes\n'
            '971,United Arab Emirates,0.2290,\n'
            '971,United Arab Emirates,1.7500,212 33 212\n'
            '37441,"Armenia - Mobile - Major Carriers (Orange, VEON)",0.3363,\n')
    rows, problems = parse(text, load_profile("plivo"))
    assert problems == []
    assert [(r[0], r[2], r[9]) for r in rows] == [
        ("971", "0.2290", ""), ("971", "1.7500", "212 33"), ("37441", "0.3363", "")]
    assert rows[2][1] == "Armenia - Mobile - Major Carriers (Orange, VEON)"


def test_multiline_quoted_field_keeps_line_numbers() -> None:
    text = HEADER + '81,"Japan\nfixed",0.1,0,60,60\n82,X,bad,0,60,60\n'
    rows, problems = parse(text)
    assert rows[0][1] == "Japan\\nfixed"
    assert problems[0].line == 4


def test_blank_lines_are_ignored() -> None:
    rows, problems = parse(HEADER + "81,JP,0.1,0,60,60\n\n82,X,0.2,0,60,60\n")
    assert problems == [] and len(rows) == 2


plain_rows = st.lists(
    st.tuples(st.integers(1, 99999), st.sampled_from(["JP", "X y", ""]),
              st.sampled_from(["0.1", "1", ".5", "0.0385", "12.", "-1", "a"]),
              st.sampled_from(["0", "0.01"]), st.sampled_from(["0", "1", "60", "x"]),
              st.sampled_from(["1", "6", "60", "0"]), st.booleans()),
    max_size=30)


def assert_fast_equals_line_by_line(text: str, profile: ColumnProfile = GENERIC) -> None:
    """A blank line after the header sends the whole block line by line (the slow path):
    both paths must give the same rows and problems (line numbers one apart)."""
    header, _, data = text.partition("\n")
    fast_rows, fast_problems = parse(text, profile)
    slow_rows, slow_problems = parse(f"{header}\n\n{data}", profile)
    assert fast_rows == [[*r[:-1], str(int(r[-1]) - 1)] for r in slow_rows]
    assert fast_problems == [replace(p, line=p.line - 1) for p in slow_problems]


@settings(max_examples=200, deadline=None)
@given(plain_rows)
def test_fast_block_path_equals_line_by_line(rows: list[tuple[object, ...]]) -> None:
    lines = []
    for prefix, dest, rate, connect, initial, increment, quoted in rows:
        d = f'"{dest}"' if quoted else dest
        lines.append(f"{prefix},{d},{rate},{connect},{initial},{increment}")
    assert_fast_equals_line_by_line(HEADER + "".join(line + "\n" for line in lines))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["81", "8190", "0", "x1"]),
    st.sampled_from(["Japan", '"Armenia - Mobile (Orange, VEON)"', '"a ""b"""', "x\\y",
                     'odd"quote', '"two\nlines"', '"tab\tin"']),
    st.sampled_from(["0.1398", "1", "-1", "1,5"]),
    st.sampled_from(["", "212 33 212", " 44  1 ", "33", "x", "0 1", "   "])), max_size=30))
def test_fast_path_with_origins_and_quotes_equals_line_by_line(
        rows: list[tuple[str, str, str, str]]) -> None:
    text = "prefix,destination,rate_usd_per_min,origination_prefixes\n" + "".join(
        ",".join(row) + "\n" for row in rows)
    assert_fast_equals_line_by_line(text, load_profile("plivo"))


def test_plivo_deck_goes_the_fast_path() -> None:
    """Quoted destinations and origin lists no longer send a block line by line."""
    text = ('prefix,destination,rate_usd_per_min,origination_prefixes\n'
            '37441,"Armenia - Mobile - Major Carriers (Orange, VEON)",0.3363,\n'
            '971,United Arab Emirates,1.7500,212 33 212\n')
    profile = load_profile("plivo")
    parser = DeckParser(profile)
    slow = parser._slow
    lines: list[str] = []

    def spy(text: str, line: int, get: dict[str, int], const: dict[str, str],
            width: int) -> list[str]:
        lines.append(text)
        return slow(text, line, get, const, width)

    parser._slow = spy  # type: ignore[method-assign]
    out = "".join(parser.chunks(io.StringIO(text, newline="")))
    assert lines == [] and parser.row_count == 2
    assert [line.split("\t")[9] for line in out.splitlines()] == ["", "212 33"]


def test_field_larger_than_128_kib_is_read() -> None:
    big = "x" * 200_000
    rows, problems = parse(HEADER + f'81,"{big}",0.1,0,60,60\n82,{big},0.2,0,60,60\n')
    assert problems == []
    assert [(r[0], len(r[1])) for r in rows] == [("81", 200_000), ("82", 200_000)]


@pytest.mark.parametrize("field", [
    "x" * (FIELD_LIMIT + 1),                     # one line, unquoted
    '"' + "x" * (FIELD_LIMIT + 1) + '"',         # one line, quoted
    '"x\n' + "x" * (FIELD_LIMIT + 1) + '"',      # a quoted field over two lines
])
def test_field_over_the_limit_is_a_problem_on_its_line(field: str) -> None:
    rows, problems = parse(HEADER + "81,JP,0.1,0,60,60\n" + f"82,{field},0.1,0,60,60\n"
                           + "83,X,bad,0,60,60\n")
    assert [r[0] for r in rows] == ["81"]
    assert [(p.line, p.column) for p in problems][0] == (3, "*")
    assert str(FIELD_LIMIT) in problems[0].reason
    assert problems[-1].column == "rate"


LIST_PROFILE = parse_profile("""
    prefix_list_separator = ","
    [columns]
    destination = "Destination"
    prefix = "Codes"
    rate = "Rate"
""")


def test_prefix_list_column_gives_one_row_per_prefix() -> None:
    rows, problems = parse('Destination,Codes,Rate\n"Japan Mobile","8170,8180, 8190",0.1398\n'
                           "Japan,81,0.0385\n", LIST_PROFILE)
    assert problems == []
    assert [(r[0], r[1], r[2], r[-1]) for r in rows] == [
        ("8170", "Japan Mobile", "0.1398", "2"), ("8180", "Japan Mobile", "0.1398", "2"),
        ("8190", "Japan Mobile", "0.1398", "2"), ("81", "Japan", "0.0385", "3")]
    assert len({tuple(r[1:]) for r in rows[:3]}) == 1    # the same terms and line


def test_prefix_list_with_another_separator_unquoted() -> None:
    profile = parse_profile('prefix_list_separator = ";"\n[columns]\nprefix = "p"\n'
                            'rate = "r"\n')
    rows, problems = parse("p,r\n4420;4421;,0.01\n33,0.02\n", profile)
    assert problems == []
    assert [r[0] for r in rows] == ["4420", "4421", "33"]


def test_bad_prefixes_in_a_list_are_each_named() -> None:
    rows, problems = parse('Destination,Codes,Rate\nX,"8170,08180,81x",0.1\nY,"",0.1\n'
                           'Z,"44",0.1\n', LIST_PROFILE)
    assert [r[0] for r in rows] == ["44"]
    assert [(p.line, p.column, p.value) for p in problems] == [
        (2, "prefix", "08180"), (2, "prefix", "81x"), (3, "prefix", "")]
    assert problems[2].reason == "no prefix in the list"


def test_without_a_list_separator_a_list_is_a_bad_prefix() -> None:
    _, problems = parse(HEADER + '"8170,8180",JP,0.1,0,60,60\n')
    assert [(p.line, p.column, p.value) for p in problems] == [(2, "prefix", "8170,8180")]


def test_prefix_list_separator_must_not_hold_digits() -> None:
    with pytest.raises(ProfileError, match="prefix_list_separator"):
        parse_profile('prefix_list_separator = "0"\n[columns]\nprefix = "p"\nrate = "r"\n')


def _dated(date_format: str) -> ColumnProfile:
    return parse_profile(f"date_format = {date_format}\ntimezone = \"Asia/Tokyo\"\n"
                         '[columns]\nprefix = "p"\nrate = "r"\neffective = "from"\nend = "to"\n')


@pytest.mark.parametrize(("date_format", "effective", "end"), [
    ('"%d.%m.%Y"', "01.04.2026", "31.12.2026"),
    ('"%Y/%m/%d"', "2026/04/01", "2026/12/31"),
    ('"%m/%d/%Y"', "04/01/2026", "12/31/2026"),
    ('["%d.%m.%Y %H:%M", "%d.%m.%Y"]', "01.04.2026", "31.12.2026 00:00"),
    ('"%Y-%m-%d %H:%M:%S%z"', "2026-04-01 00:00:00+0900", "2026-12-31 00:00:00+09:00"),
])
def test_profile_date_formats(date_format: str, effective: str, end: str) -> None:
    rows, problems = parse(f"p,r,from,to\n81,0.1,{effective},{end}\n", _dated(date_format))
    assert problems == []
    assert (rows[0][11], rows[0][12]) == ("2026-04-01T00:00:00+09:00",
                                          "2026-12-31T00:00:00+09:00")


def test_date_not_in_the_profile_format_names_line_column_value_and_format() -> None:
    profile = _dated('["%d.%m.%Y %H:%M", "%d.%m.%Y"]')
    rows, problems = parse("p,r,from,to\n81,0.1,01.04.2026,\n82,0.1,2026-04-01,\n"
                           "83,0.1,,04/31/2026\n", profile)
    assert [r[0] for r in rows] == ["81"]
    assert [p.format("deck.csv") for p in problems] == [
        "deck.csv:3: column effective: not a date in the format '%d.%m.%Y %H:%M' or "
        "'%d.%m.%Y' ('2026-04-01')",
        "deck.csv:4: column end: not a date in the format '%d.%m.%Y %H:%M' or '%d.%m.%Y' "
        "('04/31/2026')"]


def test_iso_dates_by_default_and_the_error_says_so() -> None:
    profile = parse_profile('[columns]\nprefix = "p"\nrate = "r"\nend = "to"\n')
    rows, problems = parse("p,r,to\n81,0.1,2026-12-31\n82,0.1,31.12.2026\n", profile)
    assert rows[0][12] == "2026-12-31T00:00:00+00:00"
    assert [(p.line, p.column, p.value) for p in problems] == [(3, "end", "31.12.2026")]
    assert "ISO 8601" in problems[0].reason


@pytest.mark.parametrize(("date_format", "error"), [
    ('"%d.%m"', "must have a year"),
    ('"%Y-%m"', "must have a year"),
    ("1", "strptime format"),
    ('"%Y-%m-%d %Q"', "'%Y-%m-%d %Q'"),
])
def test_bad_date_format_in_profile_is_refused(date_format: str, error: str) -> None:
    with pytest.raises(ProfileError, match=error):
        _dated(date_format)
