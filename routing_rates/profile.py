"""Column profiles: how one carrier lays out its deck (TOML, one per carrier).

::

    name = "plivo"
    delimiter = ","              # "," ";" "\\t" "|"
    header = true                # columns named by header; false: 1-based numbers
    encoding = "utf-8-sig"       # utf-8-sig also eats an Excel BOM; "cp932" for JP decks
    decimal_separator = "."      # or ","
    rate_unit = "minute"         # "minute", "second", or a number of seconds (20, 180)
    decimals = 4                 # costs round up to this many decimals
    currency = "USD"             # default when there is no currency column
    timezone = "UTC"             # for dates without an offset
    date_format = "%d.%m.%Y"     # effective/end columns: a strptime format, or a list of
                                 # them tried in order (["%d.%m.%Y %H:%M", "%d.%m.%Y"]);
                                 # default ISO 8601 (2026-04-01, 2026-04-01T09:00+09:00).
                                 # [defaults] dates are always ISO 8601 (TOML dates).
    origins_separator = " "
    prefix_list_separator = ","  # the prefix column holds a list ("8170,8180,8190"):
                                 # one rate row per prefix, each with the line's terms
    skip_rows = 0                # junk lines before the header

    [columns]                    # field = header name (or 1-based column number)
    prefix = "prefix"
    destination = "destination"
    rate = "rate_usd_per_min"
    origins = "origination_prefixes"

    [defaults]                   # for fields without a column
    initial_s = 60
    increment_s = 60
    connect_fee = "0"
    min_cost = "0"

Fields: prefix, destination, rate, currency, unit_s, initial_s, increment_s,
connect_fee, min_cost, effective (row valid from), end (row valid to),
origins, period.
"""

from __future__ import annotations

import codecs
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shared.money import UnknownCurrency, check_currency

FIELDS = ("prefix", "destination", "rate", "currency", "unit_s", "initial_s", "increment_s",
          "connect_fee", "min_cost", "effective", "end", "origins", "period")
REQUIRED = ("prefix", "rate")
PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
_UNITS = {"minute": 60, "min": 60, "second": 1, "sec": 1, "s": 1}


class ProfileError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ColumnProfile:
    name: str
    columns: Mapping[str, str | int]
    delimiter: str = ","
    header: bool = True
    encoding: str = "utf-8-sig"
    decimal_separator: str = "."
    unit_s: int = 60
    decimals: int = 4
    currency: str = "USD"
    timezone: str = "UTC"
    date_formats: tuple[str, ...] = ()   # (): ISO 8601
    origins_separator: str = " "
    prefix_list_separator: str = ""      # "": one prefix per line
    skip_rows: int = 0
    defaults: Mapping[str, str] = field(default_factory=dict)

    def default(self, name: str, fallback: str) -> str:
        return self.defaults.get(name, fallback)


def _unit(value: object, where: str) -> int:
    if isinstance(value, int) and value >= 1:
        return value
    if isinstance(value, str) and value.strip().lower() in _UNITS:
        return _UNITS[value.strip().lower()]
    raise ProfileError(f"{where}: rate_unit must be minute, second or seconds >= 1: {value!r}")


def _columns(data: dict[str, Any], source: str) -> tuple[dict[str, str | int], bool]:
    columns = data.get("columns", {})
    if not isinstance(columns, dict):
        raise ProfileError(f"{source}: [columns] must be a table")
    unknown = sorted(set(columns) - set(FIELDS))
    if unknown:
        raise ProfileError(f"{source}: unknown column fields {unknown}; known: {list(FIELDS)}")
    for req in REQUIRED:
        if req not in columns:
            raise ProfileError(f"{source}: [columns] must name the {req!r} column")
    header = bool(data.get("header", True))
    for fname, col in columns.items():
        if header and not isinstance(col, str):
            raise ProfileError(f"{source}: with header = true, column {fname} must be a name")
        if not header and not (isinstance(col, int) and col >= 1):
            raise ProfileError(f"{source}: with header = false, column {fname} must be >= 1")
    return dict(columns), header


def _separators(data: dict[str, Any], source: str) -> tuple[str, str]:
    delimiter = str(data.get("delimiter", ","))
    if delimiter == "\\t":
        delimiter = "\t"
    if len(delimiter) != 1:
        raise ProfileError(f"{source}: delimiter must be one character")
    decimal_separator = str(data.get("decimal_separator", "."))
    if decimal_separator not in (".", ","):
        raise ProfileError(f"{source}: decimal_separator must be '.' or ','")
    if decimal_separator == delimiter:
        raise ProfileError(f"{source}: decimal separator and delimiter are both {delimiter!r}")
    return delimiter, decimal_separator


def _date_formats(data: dict[str, Any], source: str) -> tuple[str, ...]:
    raw = data.get("date_format", [])
    formats = [raw] if isinstance(raw, str) else raw
    if not isinstance(formats, list) or not all(isinstance(f, str) for f in formats):
        raise ProfileError(f"{source}: date_format must be a strptime format or a list of them")
    sample = datetime(2026, 12, 31, 23, 59, 58, tzinfo=UTC)
    for fmt in formats:
        try:
            datetime.strptime(sample.strftime(fmt), fmt)
        except ValueError as exc:
            raise ProfileError(f"{source}: date_format {fmt!r}: {exc}") from exc
        if not ({"%Y", "%y"} & _directives(fmt) and "%d" in _directives(fmt)
                and {"%m", "%b", "%B"} & _directives(fmt)):
            raise ProfileError(f"{source}: date_format {fmt!r} must have a year (%Y or %y), "
                               "a month (%m, %b or %B) and a day (%d)")
    return tuple(formats)


def _directives(fmt: str) -> set[str]:
    return {fmt[i:i + 2] for i in range(len(fmt) - 1) if fmt[i] == "%"}


def _prefix_list_separator(data: dict[str, Any], source: str) -> str:
    separator = data.get("prefix_list_separator", "")
    if not isinstance(separator, str) or any(c.isdigit() for c in separator):
        raise ProfileError(f"{source}: prefix_list_separator must be a string without "
                           f"digits, such as \",\" or \";\": {separator!r}")
    return separator


def _locale(data: dict[str, Any], source: str) -> tuple[str, str, str]:
    encoding = str(data.get("encoding", "utf-8-sig"))
    try:
        codecs.lookup(encoding)
        currency = check_currency(str(data.get("currency", "USD")))
        timezone = str(data.get("timezone", "UTC"))
        ZoneInfo(timezone)
    except LookupError as exc:
        raise ProfileError(f"{source}: unknown encoding {encoding!r}") from exc
    except UnknownCurrency as exc:
        raise ProfileError(f"{source}: {exc}") from exc
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ProfileError(f"{source}: unknown timezone: {exc}") from exc
    return encoding, currency, timezone


def parse_profile(text: str, source: str = "<profile>") -> ColumnProfile:
    try:
        data: dict[str, Any] = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{source}: {exc}") from exc
    columns, header = _columns(data, source)
    delimiter, decimal_separator = _separators(data, source)
    encoding, currency, timezone = _locale(data, source)
    defaults_raw = data.get("defaults", {})
    unknown_defaults = sorted(set(defaults_raw) - set(FIELDS))
    if unknown_defaults:
        raise ProfileError(f"{source}: unknown [defaults] fields {unknown_defaults}")
    decimals = data.get("decimals", 4)
    if not isinstance(decimals, int) or not 0 <= decimals <= 12:
        raise ProfileError(f"{source}: decimals must be 0..12")
    return ColumnProfile(
        name=str(data.get("name", Path(source).stem)), columns=columns,
        delimiter=delimiter, header=header, encoding=encoding,
        decimal_separator=decimal_separator, unit_s=_unit(data.get("rate_unit", 60), source),
        decimals=decimals, currency=currency, timezone=timezone,
        origins_separator=str(data.get("origins_separator", " ")),
        prefix_list_separator=_prefix_list_separator(data, source),
        date_formats=_date_formats(data, source),
        skip_rows=int(data.get("skip_rows", 0)),
        defaults={k: str(v) for k, v in defaults_raw.items()})


def load_profile(name_or_path: str) -> ColumnProfile:
    """A profile by path, or by name from ``routing_rates/profiles/NAME.toml``."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))
        raise ProfileError(f"no profile {name_or_path!r} (file {path}); built in: {known}")
    return parse_profile(path.read_text(encoding="utf-8"), str(path))
