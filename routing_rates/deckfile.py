"""Streaming deck parser, pure: lines in, COPY-ready rows and bulk errors out.

Never holds the file, nor anything per row: blocks of COPY text are yielded
as they are made. Each output row carries its source line number, so the
same prefix twice (a check that needs the whole deck) is found afterwards by
one GROUP BY in PostgreSQL (:func:`routing_rates.importer.find_duplicates`).

Every problem is collected as a :class:`DeckProblem` (line, column, reason);
the caller must refuse the whole file when ``problem_count`` is not 0.

Speed: blocks of plain lines (no quoted field over two lines, no date or
period columns, nothing to report) are validated and rewritten into COPY text
column by column; only blocks with something unusual in them are taken line by
line through field-by-field checks, which also word the errors.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from itertools import islice, repeat
from zoneinfo import ZoneInfo

from routing_rates.profile import FIELDS, ColumnProfile
from shared.money import ISO_4217

# Output columns (COPY order); NULL is COPY's text-format null.
ROW_COLUMNS = ("prefix", "destination", "rate", "unit_s", "initial_s", "increment_s",
               "connect_fee", "min_cost", "currency", "origins", "period", "valid_from",
               "valid_to", "line")
_SOURCE = ("prefix", "destination", "rate", "unit_s", "initial_s", "increment_s",
           "connect_fee", "min_cost", "currency", "origins", "period", "effective", "end")
_TERMS = ("rate", "unit_s", "initial_s", "increment_s", "connect_fee", "min_cost", "currency")
NULL = "\\N"
MAX_PROBLEMS = 10_000
# Longest field (or quoted record) read: far above any real deck's, and it bounds the
# memory a quote that is never closed can take. The csv module's limit is process-wide.
FIELD_LIMIT = 16 << 20
csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
_INT = re.compile(r"\d+")
_PERIOD = re.compile(r"[a-z0-9_-]{0,32}")
_COPY_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_BLOCK_FIELDS = ("prefix", "destination", "rate", "currency", "unit_s", "initial_s",
                "increment_s", "connect_fee", "min_cost", "origins")


@dataclass(frozen=True, slots=True)
class DeckProblem:
    line: int          # 0: the profile's defaults
    column: str
    reason: str
    value: str = ""

    def format(self, source: str) -> str:
        shown = f" ({self.value[:60]!r})" if self.value else ""
        return f"{source}:{self.line}: column {self.column}: {self.reason}{shown}"


class DeckParser:
    """Parse one deck file's lines with a profile. Iterate :meth:`rows` once."""

    def __init__(self, profile: ColumnProfile) -> None:
        self.profile = profile
        self.problems: list[DeckProblem] = []
        self.problem_count = 0
        self.row_count = 0
        self._tz = ZoneInfo(profile.timezone)
        self._comma = profile.decimal_separator == ","
        self._pending = ""      # a quoted record spanning lines, until its closing quote
        self._start = 0

    def problem(self, line: int, column: str, reason: str, value: str = "") -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(DeckProblem(line, column, reason, value))

    # -- layout ------------------------------------------------------------------------

    def _positions(self, header: list[str] | None, line: int) -> dict[str, int] | None:
        pos: dict[str, int] = {}
        names = [h.strip() for h in header] if header is not None else []
        for fname, col in self.profile.columns.items():
            if header is None:
                assert isinstance(col, int)
                pos[fname] = col - 1
            elif str(col) in names:
                pos[fname] = names.index(str(col))
            else:
                self.problem(line, str(col), f"no column named {col!r} in the header "
                             f"(found {', '.join(names)})")
        return pos if len(pos) == len(self.profile.columns) else None

    def _constants(self) -> dict[str, str] | None:
        """Values of fields without a column (profile defaults), validated once."""
        prof = self.profile
        d = prof.defaults
        before = self.problem_count
        unit = self._int(d["unit_s"], 0, "unit_s", 1) if "unit_s" in d else str(prof.unit_s)
        consts = {
            "destination": d.get("destination", ""),
            "currency": d.get("currency", prof.currency).strip().upper(),
            "unit_s": unit,
            "initial_s": self._int(d.get("initial_s", "60"), 0, "initial_s", 0),
            "increment_s": self._int(d.get("increment_s", "60"), 0, "increment_s", 1),
            "connect_fee": self._num(d.get("connect_fee", "0"), 0, "connect_fee"),
            "min_cost": self._num(d.get("min_cost", "0"), 0, "min_cost"),
            "origins": " ".join(sorted(set(d.get("origins", "").split()))),
            "period": d.get("period", "").strip().lower(),
            "effective": self._when(d.get("effective", ""), 0, "effective", ()),
            "end": self._when(d.get("end", ""), 0, "end", ()),
        }
        if consts["currency"] not in ISO_4217:
            self.problem(0, "currency", "unknown currency in profile", str(consts["currency"]))
        if self.problem_count != before:
            return None
        return {k: v for k, v in consts.items() if v is not None}

    # -- the loop ----------------------------------------------------------------------

    def chunks(self, lines: Iterable[str], lead: str = "", chunk_lines: int = 4096,
               ) -> Iterator[str]:
        """COPY text of good rows, in blocks of whole lines, each line prefixed by ``lead``.

        Problems go to :attr:`problems`. ``lines`` keeps its line endings
        (open files with ``newline=""``)."""
        prof = self.profile
        it = iter(lines)
        for _ in range(prof.skip_rows):
            next(it, None)
        header = None
        line_no = prof.skip_rows
        if prof.header:
            first = next(it, None)
            line_no += 1
            if first is None:
                self.problem(line_no, "header", "the file is empty")
                return
            header = self._split(first, line_no)
            if header is None:
                return
        pos = self._positions(header, line_no)
        const = self._constants() if pos is not None else None
        if pos is None or const is None:
            return
        get = {f: pos.get(f, -1) for f in FIELDS}
        width = max(pos.values()) + 1
        block = _block_path(prof, pos, const, lead)
        self._pending, self._start = "", 0
        while chunk := list(islice(it, chunk_lines)):
            base = line_no + 1
            line_no += len(chunk)
            out = block(self, base, chunk) if block is not None and not self._pending \
                else None
            if out is None:
                out = self._line_by_line(chunk, base, get, const, width, lead)
            if out:
                yield out
        if self._pending:
            self.problem(self._start, "*", "unterminated quoted field", self._pending[:60])

    def _line_by_line(self, chunk: list[str], base: int, get: dict[str, int],
                      const: dict[str, str], width: int, lead: str) -> str:
        buf: list[str] = []
        for number, text in enumerate(chunk, base):
            # Real CSV parsing: a quoted field may span lines (and chunks).
            if self._pending or ('"' in text and text.count('"') % 2):
                if not self._pending:
                    self._start = number
                self._pending += text
                if len(self._pending) > FIELD_LIMIT:
                    self.problem(self._start, "*", f"quoted field longer than {FIELD_LIMIT} "
                                 "characters (a quote never closed?)", self._pending[:60])
                    self._pending = ""
                    continue
                if self._pending.count('"') % 2:
                    continue
                text, number, self._pending = self._pending, self._start, ""
            rows = self._slow(text, number, get, const, width)
            buf.extend([lead + row for row in rows] if lead else rows)
        if buf:
            buf.append("")
        return "\n".join(buf)

    def _split(self, text: str, line: int) -> list[str] | None:
        try:
            return next(csv.reader([text], delimiter=self.profile.delimiter), [])
        except csv.Error as exc:
            self.problem(line, "*", f"not readable as CSV: {exc}", text[:60])
            return None

    def _slow(self, text: str, line: int, get: dict[str, int], const: dict[str, str],
              width: int) -> list[str]:
        """The line's rows: one per prefix (a prefix list column gives several)."""
        fields = self._split(text, line)
        if fields is None:
            return []
        if len(fields) < width:
            if "".join(fields).strip():
                self.problem(line, "*", f"expected at least {width} columns, found "
                             f"{len(fields)}", text.rstrip("\r\n"))
            return []
        checked = self._check(fields, line, get, const)
        if checked is None:
            return []
        prefixes, terms = checked
        self.row_count += len(prefixes)
        tail = "\t".join(terms)
        return [f"{prefix}\t{tail}\t{line}" for prefix in prefixes]

    # -- field checks (slow path) ------------------------------------------------------

    def _num(self, raw: str, line: int, column: str, *, allow_empty: bool = False,
             ) -> str | None:
        text = raw.strip()
        if not text and allow_empty:
            return "0"
        if self._comma:
            text = text.replace(",", ".")
        if not _NUMBER.fullmatch(text):
            self.problem(line, column, "not a number", raw)
            return None
        if text[0] == "-":
            self.problem(line, column, "negative value", raw)
            return None
        return text

    def _int(self, raw: str, line: int, column: str, minimum: int) -> str | None:
        text = raw.strip()
        if not _INT.fullmatch(text) or int(text) < minimum:
            self.problem(line, column, f"must be a whole number >= {minimum}", raw)
            return None
        return str(int(text))

    def _when(self, raw: str, line: int, column: str, formats: tuple[str, ...],
              ) -> str | None:
        """A date (ISO 8601 when ``formats`` is empty, else the first format that fits)."""
        text = raw.strip()
        if not text:
            return NULL
        moment = _strptime(text, formats) if formats else _isoparse(text)
        if moment is None:
            expected = " or ".join(map(repr, formats)) if formats else \
                "ISO 8601 (YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+HH:MM])"
            self.problem(line, column, f"not a date in the format {expected}", raw)
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=self._tz)
        return moment.isoformat()

    def _prefix_list(self, raw: str, line: int) -> list[str]:
        prefixes = [p.strip() for p in raw.split(self.profile.prefix_list_separator)]
        if not any(prefixes):
            self.problem(line, "prefix", "no prefix in the list", raw)
        return [p for p in prefixes if p]

    def _check(self, fields: list[str], line: int, get: dict[str, int],
               const: dict[str, str]) -> tuple[list[str], tuple[str, ...]] | None:
        """The line's prefixes, and its other values in COPY order."""
        before = self.problem_count
        raw = fields[get["prefix"]]
        prefixes = self._prefix_list(raw, line) if self.profile.prefix_list_separator \
            else [raw.strip()]
        for prefix in prefixes:
            if not (prefix.isascii() and prefix.isdigit()):
                self.problem(line, "prefix", "prefix must be digits only (E.164 without +)",
                             prefix)
            elif prefix[0] == "0" or len(prefix) > 15:
                self.problem(line, "prefix",
                             "prefix must not start with 0 or exceed 15 digits", prefix)
        out: dict[str, str | None] = {}
        for name in _SOURCE[1:]:
            idx = get[name]
            out[name] = const[name] if idx < 0 else self._field(name, fields[idx], line)
        currency = out["currency"]
        if get["currency"] >= 0 and currency is not None and currency not in ISO_4217:
            self.problem(line, "currency", "unknown currency (ISO 4217 expected)", currency)
        if self.problem_count != before:
            return None
        start, end = out["effective"], out["end"]
        if start != NULL and end != NULL and str(end) <= str(start):
            self.problem(line, "end", "end date is not after the effective date", str(end))
            return None
        return prefixes, tuple(v or "" for v in out.values())

    def _field(self, name: str, raw: str, line: int) -> str | None:  # noqa: C901
        if name == "rate":
            return self._num(raw, line, name)
        if name in ("connect_fee", "min_cost"):
            return self._num(raw, line, name, allow_empty=True)
        if name in ("unit_s", "increment_s"):
            return self._int(raw, line, name, 1)
        if name == "initial_s":
            return self._int(raw, line, name, 0)
        if name in ("effective", "end"):
            return self._when(raw, line, name, self.profile.date_formats)
        if name == "currency":
            return raw.strip().upper()
        if name == "origins":
            parts = _origin_list(raw, self.profile.origins_separator)
            if not all(p.isascii() and p.isdigit() for p in parts):
                self.problem(line, "origins", "origination prefixes must be digits", raw)
            return " ".join(parts)
        if name == "period":
            period = raw.strip().lower()
            if not _PERIOD.fullmatch(period):
                self.problem(line, "period", "period name must be [a-z0-9_-]", raw)
            return period
        return raw.strip().translate(_COPY_ESCAPE)  # destination


def _isoparse(text: str) -> datetime | None:
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), datetime.min.time())
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _strptime(text: str, formats: tuple[str, ...]) -> datetime | None:
    for fmt in formats:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


BlockPath = Callable[[DeckParser, int, list[str]], "str | None"]


Column = tuple[str, ...]


def _prefixes(col: Column, comma: bool) -> Column | None:
    joined = "".join(col)
    first = min(col)
    if not (joined.isascii() and joined.isdigit()) or not first or first[0] == "0" \
            or max(map(len, col)) > 15:
        return None
    return col


def _numbers(col: Column, comma: bool) -> Column | None:
    if comma:
        col = tuple("\n".join(col).replace(",", ".").split("\n"))
    joined = "".join(col)
    if "" in col or "." in col or not joined.replace(".", "").isdigit() \
            or not joined.isascii() or max(map(str.count, col, repeat("."))) > 1:
        return None
    return col


def _integers(minimum: int) -> Callable[[Column, bool], Column | None]:
    def check(col: Column, comma: bool) -> Column | None:
        joined = "".join(col)
        if "" in col or not (joined.isascii() and joined.isdigit()) \
                or max(map(len, col)) > 9 or min(map(int, col)) < minimum:
            return None
        return col
    return check


def _currencies(col: Column, comma: bool) -> Column | None:
    return col if set(col) <= ISO_4217 else None


def _origin_list(raw: str, separator: str) -> list[str]:
    """Origination prefixes as stored: unique, sorted."""
    return sorted(set(raw.split(separator or None)) - {""})


def _origins(separator: str) -> Callable[[Column, bool], Column | None]:
    def check(col: Column, comma: bool) -> Column | None:
        if not any(col):
            return col
        out = tuple(" ".join(_origin_list(v, separator)) if v else "" for v in col)
        joined = "".join(out).replace(" ", "")
        return out if joined.isascii() and joined.isdigit() else None
    return check


def _destinations(col: Column, comma: bool) -> Column | None:
    joined = "".join(col)
    if "\t" in joined or "\\" in joined or col != tuple(map(str.strip, col)):
        return None
    return col


_COLUMN_CHECKS: dict[str, Callable[[Column, bool], Column | None]] = {
    "prefix": _prefixes, "rate": _numbers, "connect_fee": _numbers, "min_cost": _numbers,
    "unit_s": _integers(1), "increment_s": _integers(1), "initial_s": _integers(0),
    "currency": _currencies, "destination": _destinations,
}


def _block_path(prof: ColumnProfile, pos: dict[str, int], const: dict[str, str],
                lead: str) -> BlockPath | None:
    """Validate and convert a whole block of plain lines column by column.

    The csv module splits the block; ``zip`` turns it into columns; each
    column is checked with a few C-level string operations (digits, one dot,
    ISO codes ...) and the COPY text is assembled with ``zip``/``join``. A
    block with anything unusual (a quoted field over two lines, blank lines,
    spaces, an odd number, a bad origin list) returns ``None`` and the caller
    takes it line by line, which words the errors. Profiles with dates or
    periods always go line by line."""
    if any(f not in _BLOCK_FIELDS for f in pos) or (lead and not lead.endswith("\t")):
        return None
    width = max(pos.values()) + 1
    comma = prof.decimal_separator == ","
    checks = {**_COLUMN_CHECKS, "origins": _origins(prof.origins_separator)}

    def columns(rows: list[list[str]]) -> list[Iterable[str]] | None:
        cols = list(zip(*rows, strict=False))  # rows may have extra columns: truncate
        out: list[Iterable[str]] = [repeat(lead[:-1])]
        for name in _SOURCE:
            idx = pos.get(name)
            if idx is None:
                out.append(repeat(const[name]))
                continue
            col = checks[name](cols[idx], comma)
            if col is None:
                return None
            out.append(col)
        return out

    def block(parser: DeckParser, base: int, chunk: list[str]) -> str | None:
        # A quoted field over two lines needs the line-by-line path, which keeps the
        # line numbers (a line of the block that csv joins to the next changes the count).
        if '"' in "".join(chunk) and any(line.count('"') % 2 for line in chunk):
            return None
        try:
            rows = list(csv.reader(chunk, delimiter=prof.delimiter))
        except csv.Error:
            return None
        count = len(rows)
        if count != len(chunk) or min(map(len, rows)) < width:
            return None
        out = columns(rows)
        if out is None:
            return None
        out.append(map(str, range(base, base + count)))
        parser.row_count += count
        if not lead:
            out.pop(0)
        # repeat() columns are endless: the finite ones bound the zip.
        return "\n".join(map("\t".join, zip(*out, strict=False))) + "\n"

    return block
