"""Streaming deck parser, pure: lines in, normalised rows and bulk errors out.

Never holds the file: rows are yielded one by one (to COPY). What it keeps is
one small entry per distinct key (prefix + origins + period + start) to catch
the same prefix twice with different rates; a repeat with identical terms is
dropped and counted.

Every problem is collected as a :class:`DeckProblem` (line, column, reason);
the caller must refuse the whole file when ``problems`` is not empty.
Output rows are tuples of text in :data:`ROW_COLUMNS` order, ready for COPY.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from routing_rates.profile import FIELDS, ColumnProfile
from shared.money import ISO_4217

ROW_COLUMNS = ("prefix", "destination", "rate", "unit_s", "initial_s", "increment_s",
               "connect_fee", "min_cost", "currency", "origins", "period", "valid_from",
               "valid_to", "line")
NULL = "\\N"
MAX_PROBLEMS = 10_000
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")
_INT = re.compile(r"\d+")
_PERIOD = re.compile(r"[a-z0-9_-]{0,32}")
_COPY_ESCAPE = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


@dataclass(frozen=True, slots=True)
class DeckProblem:
    line: int
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
        self.duplicates = 0
        self._seen: dict[str, int] = {}
        self._terms: dict[tuple[str, ...], int] = {}
        self._terms_list: list[tuple[str, ...]] = []
        self._tz = ZoneInfo(profile.timezone)
        self._comma = profile.decimal_separator == ","

    def problem(self, line: int, column: str, reason: str, value: str = "") -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(DeckProblem(line, column, reason, value))

    def _positions(self, header: list[str] | None, line: int) -> dict[str, int] | None:
        pos: dict[str, int] = {}
        for fname, col in self.profile.columns.items():
            if header is None:
                assert isinstance(col, int)
                pos[fname] = col - 1
                continue
            names = [h.strip() for h in header]
            if str(col) not in names:
                self.problem(line, str(col), f"no column named {col!r} in the header "
                             f"(found {', '.join(names)})")
                continue
            pos[fname] = names.index(str(col))
        return pos if len(pos) == len(self.profile.columns) else None

    def rows(self, lines: Iterable[str]) -> Iterator[tuple[str, ...]]:
        prof = self.profile
        reader = csv.reader(lines, delimiter=prof.delimiter)
        for _ in range(prof.skip_rows):
            next(reader, None)
        header = None
        if prof.header:
            header = next(reader, None)
            if header is None:
                self.problem(1, "header", "the file is empty")
                return
        pos = self._positions(header, reader.line_num)
        if pos is None:
            return
        const = self._constants()
        if const is None:
            return
        get = {f: pos.get(f, -1) for f in FIELDS}
        width = max(pos.values()) + 1
        for fields in reader:
            line = reader.line_num
            if len(fields) < width:
                if not fields or fields == [""] * len(fields):
                    continue  # blank line
                self.problem(line, "*", f"expected at least {width} columns, found "
                             f"{len(fields)}", prof.delimiter.join(fields))
                continue
            out = self._row(fields, line, get, const)
            if out is not None:
                yield out

    def _num(self, raw: str, line: int, column: str, *, allow_empty: str | None = None) -> str | None:
        text = raw.strip()
        if not text and allow_empty is not None:
            return allow_empty
        if self.profile.decimal_separator == ",":
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

    def _when(self, raw: str, line: int, column: str) -> str | None:
        text = raw.strip()
        if not text:
            return NULL
        try:
            if len(text) == 10:
                moment = datetime.combine(date.fromisoformat(text), datetime.min.time())
            else:
                moment = datetime.fromisoformat(text)
        except ValueError:
            self.problem(line, column, "not an ISO date or date-time", raw)
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=self._tz)
        return moment.isoformat()

    def _constants(self) -> dict[str, str] | None:
        """Values of fields without a column (profile defaults), validated once."""
        prof = self.profile
        d = prof.defaults
        before = self.problem_count
        consts = {
            "destination": d.get("destination", ""),
            "currency": d.get("currency", prof.currency).strip().upper(),
            "unit_s": self._int(d["unit_s"], 0, "unit_s", 1) if "unit_s" in d
            else str(prof.unit_s),
            "initial_s": self._int(d.get("initial_s", "60"), 0, "initial_s", 0),
            "increment_s": self._int(d.get("increment_s", "60"), 0, "increment_s", 1),
            "connect_fee": self._num(d.get("connect_fee", "0"), 0, "connect_fee"),
            "min_cost": self._num(d.get("min_cost", "0"), 0, "min_cost"),
            "origins": " ".join(sorted(set(d.get("origins", "").split()))),
            "period": d.get("period", "").strip().lower(),
            "effective": self._when(d.get("effective", ""), 0, "effective"),
            "end": self._when(d.get("end", ""), 0, "end"),
        }
        if consts["currency"] not in ISO_4217:
            self.problem(0, "currency", "unknown currency in profile", str(consts["currency"]))
        if self.problem_count != before:
            return None
        return {k: v for k, v in consts.items() if v is not None}

    def _row(self, fields: list[str], line: int, get: dict[str, int],
             const: dict[str, str]) -> tuple[str, ...] | None:  # noqa: C901
        before = self.problem_count
        prefix = fields[get["prefix"]].strip()
        if not (prefix.isascii() and prefix.isdigit()):
            self.problem(line, "prefix", "prefix must be digits only (E.164 without +)",
                         prefix)
        elif prefix[0] == "0" or len(prefix) > 15:
            self.problem(line, "prefix", "prefix must not start with 0 or exceed 15 digits",
                         prefix)
        rate = fields[get["rate"]].strip()
        if self._comma:
            rate = rate.replace(",", ".")
        if not _NUMBER.fullmatch(rate):
            self.problem(line, "rate", "not a number", rate)
        elif rate[0] == "-":
            self.problem(line, "rate", "negative value", rate)
        idx = get["destination"]
        destination = fields[idx].strip() if idx >= 0 else const["destination"]
        idx = get["currency"]
        currency = fields[idx].strip().upper() if idx >= 0 else const["currency"]
        if idx >= 0 and currency not in ISO_4217:
            self.problem(line, "currency", "unknown currency (ISO 4217 expected)", currency)
        unit_s = self._opt_int(fields, get, const, "unit_s", line, 1)
        initial = self._opt_int(fields, get, const, "initial_s", line, 0)
        increment = self._opt_int(fields, get, const, "increment_s", line, 1)
        connect = self._opt_num(fields, get, const, "connect_fee", line)
        min_cost = self._opt_num(fields, get, const, "min_cost", line)
        idx = get["origins"]
        origins = const["origins"]
        if idx >= 0 and fields[idx].strip():
            raw_origins = fields[idx]
            parts = sorted(set(raw_origins.split(self.profile.origins_separator or None))
                           - {""})
            if not all(p.isascii() and p.isdigit() for p in parts):
                self.problem(line, "origins", "origination prefixes must be digits",
                             raw_origins)
            origins = " ".join(parts)
        idx = get["period"]
        period = fields[idx].strip().lower() if idx >= 0 else const["period"]
        if idx >= 0 and not _PERIOD.fullmatch(period):
            self.problem(line, "period", "period name must be [a-z0-9_-]", period)
        idx = get["effective"]
        valid_from = self._when(fields[idx], line, "effective") if idx >= 0 \
            else const["effective"]
        idx = get["end"]
        valid_to = self._when(fields[idx], line, "end") if idx >= 0 else const["end"]
        if self.problem_count != before:
            return None
        assert unit_s is not None and initial is not None and increment is not None
        assert connect is not None and min_cost is not None
        assert valid_from is not None and valid_to is not None
        if valid_from != NULL and valid_to != NULL and valid_to <= valid_from:
            self.problem(line, "end", "end date is not after the effective date", valid_to)
            return None
        terms = (rate, unit_s, initial, increment, connect, min_cost, currency)
        tid = self._terms.get(terms)
        if tid is None:
            tid = self._terms[terms] = len(self._terms_list)
            self._terms_list.append(terms)
        key = prefix if not (origins or period or valid_from != NULL) else \
            f"{prefix}|{origins}|{period}|{valid_from}"
        seen = self._seen.get(key)
        if seen is not None:
            if seen & 0xFFFFFFFF == tid:
                self.duplicates += 1
                return None
            other = self._terms_list[seen & 0xFFFFFFFF]
            self.problem(line, "rate", f"prefix {prefix} already on line {seen >> 32} with "
                         f"different terms ({other[0]} {other[6]} per {other[1]} s, "
                         f"{other[2]}/{other[3]})", rate)
            return None
        self._seen[key] = (line << 32) | tid
        self.row_count += 1
        if "\\" in destination or "\t" in destination or "\r" in destination \
                or "\n" in destination:
            destination = destination.translate(_COPY_ESCAPE)
        return (prefix, destination, rate, unit_s, initial, increment,
                connect, min_cost, currency, origins, period, valid_from, valid_to, str(line))

    def _opt_int(self, fields: list[str], get: dict[str, int], const: dict[str, str],
                 name: str, line: int, minimum: int) -> str | None:
        idx = get[name]
        if idx < 0:
            return const[name]
        return self._int(fields[idx], line, name, minimum)

    def _opt_num(self, fields: list[str], get: dict[str, int], const: dict[str, str],
                 name: str, line: int) -> str | None:
        idx = get[name]
        if idx < 0:
            return const[name]
        return self._num(fields[idx], line, name, allow_empty="0")


def copy_lines(rows: Iterable[tuple[str, ...]], chunk_rows: int = 8192) -> Iterator[bytes]:
    """COPY text-format chunks (tab separated, ``\\N`` for NULL) from parsed rows."""
    buf: list[str] = []
    for row in rows:
        buf.append("\t".join(row))
        if len(buf) >= chunk_rows:
            buf.append("")
            yield "\n".join(buf).encode()
            buf.clear()
    if buf:
        buf.append("")
        yield "\n".join(buf).encode()
