"""Configuration: TOML files with environment overrides, parsed into frozen settings.

A server reads one TOML file. Any key can be overridden from the environment
as ``<PREFIX>__<SECTION>__<KEY>``, for example ``EDGE__HTTP__PORT=9443`` or
``CALLBACK__ARI__URL=http://10.0.0.5:8088``. The value is read as a TOML value
when it parses as one (numbers, booleans, arrays), else as a string.

Errors name the file, the line where it can be found, and the key; a value
set from the environment is named by its variable instead::

    deploy/edge.toml:14: merchants[0].announce_mode: expected one of answer, early_media
    environment EDGE__HTTP__PORT: http.port: expected an integer, got 'x'

Unknown keys and sections are errors. Every accessor of :class:`Section`
records the key it was asked for; once a settings object is parsed,
:meth:`Source.check_unknown` refuses every key present but never asked for,
with the nearest known key::

    deploy/edge.toml:31: merchants[0].anounce_mode: unknown key (did you mean announce_mode?)

A table whose keys are data (``[rates.fx_rates]``, ``[signing.trusted]``) is
read with :meth:`Section.keys`, which accepts whatever keys it has.

Sections common to both sites (database, http, tls, ari, signing, peer,
merchants) are parsed here; each server adds its own on top.
"""

from __future__ import annotations

import builtins
import datetime
import difflib
import enum
import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ivr_platform.hours import MerchantHours
from ivr_platform.hours_config import parse_merchant_hours
from shared.client_address import Network, parse_network
from shared.language import Language
from shared.money import Money, UnknownCurrency, check_currency
from shared.phone import E164, InvalidNumber, normalise

E = TypeVar("E", bound=enum.Enum)


class ConfigError(ValueError):
    pass


class Source:
    """A parsed TOML document plus where it came from, for error messages.

    It also records which keys the settings asked for (:meth:`Section.str` and
    the other accessors), so that :meth:`check_unknown` can refuse the rest.
    """

    def __init__(self, path: Path, data: dict[str, Any], text: str,
                 env: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.data = data
        self._lines = text.splitlines()
        #: dotted key (no indices) → the environment variable that set it
        self.env: dict[str, str] = dict(env or {})
        #: dotted keys (with ``[i]`` indices) some accessor asked for, present or not
        self.asked: set[str] = set()

    def _headers(self) -> list[tuple[int, str]]:
        """``(line, name)`` of every ``[table]`` and ``[[array]]`` header."""
        found = []
        for number, line in enumerate(self._lines, start=1):
            match = _HEADER.match(line)
            if match:
                found.append((number, re.sub(r"\s+", "", match.group(1))))
        return found

    def _table_span(self, dotted: str) -> tuple[int, int] | None:
        """The lines (first, end) of the table ``dotted`` (``merchants[1]``, ``guard.caps``)."""
        if not dotted:
            headers = self._headers()
            return 0, headers[0][0] - 1 if headers else len(self._lines)
        name = re.sub(r"\[\d+\]", "", dotted)
        index = re.search(r"\[(\d+)\]$", dotted)
        headers = self._headers()
        starts = [i for i, (_, h) in enumerate(headers) if h == name]
        nth = int(index.group(1)) if index else 0
        if nth >= len(starts):
            return None
        i = starts[nth]
        end = headers[i + 1][0] - 1 if i + 1 < len(headers) else len(self._lines)
        return headers[i][0], end

    def line_of(self, dotted: str) -> int | None:
        """Best effort: the line that sets the last key of ``dotted``, or its header."""
        span = self._table_span(dotted)
        if span is not None and dotted:
            return span[0]
        parent, _, last = dotted.rpartition(".")
        key = re.sub(r"\[\d+\]", "", last)
        pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        within = self._table_span(parent)
        if within is not None:
            first, end = within
            for number in range(first + 1, end + 1):
                if pattern.match(self._lines[number - 1]):
                    return number
            if parent:  # absent from its table: the table's header
                return first
        for number, line in enumerate(self._lines, start=1):
            if pattern.match(line):
                return number
        return None

    def line_near(self, dotted: str) -> int | None:
        """The line of ``dotted``, else of the nearest table or key holding it."""
        line, within = None, dotted
        while within and line is None:   # a key of an inline table: the line of the table
            line, within = self.line_of(within), within.rpartition(".")[0]
        return line

    def where(self, dotted: str) -> str:
        """``file:line`` of ``dotted``, or the environment variable that set it."""
        plain = re.sub(r"\[\d+\]", "", dotted)
        parts = plain.split(".")
        for end in range(len(parts), 0, -1):
            variable = self.env.get(".".join(parts[:end]))
            if variable is not None:
                return f"environment {variable}"
        line = self.line_near(dotted)
        return f"{self.path}:{line}" if line else str(self.path)

    def error(self, dotted: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where(dotted)}: {dotted}: {message}")

    def refuse(self, problems: Sequence[tuple[str, str]]) -> None:
        """Raise one :class:`ConfigError` listing every ``(dotted key, message)``, if any."""
        if problems:
            raise ConfigError("\n".join(str(self.error(k, m)) for k, m in problems))

    def check_unknown(self) -> None:
        """Refuse every key of the file (or environment) that no accessor asked for."""
        self.refuse([(dotted, "unknown " + ("section" if isinstance(value, Mapping) else "key")
                      + self._hint(dotted)) for dotted, value in self._unasked(self.data, "")])

    def _unasked(self, table: Mapping[str, Any], prefix: str) -> list[tuple[str, Any]]:
        found = []
        for key, value in table.items():
            dotted = f"{prefix}.{key}" if prefix else key
            if dotted not in self.asked:
                found.append((dotted, value))
            elif isinstance(value, Mapping):
                found += self._unasked(value, dotted)
            elif isinstance(value, list) and value and all(isinstance(v, Mapping)
                                                           for v in value):
                for i, item in enumerate(value):
                    found += self._unasked(item, f"{dotted}[{i}]")
        return found

    def _hint(self, dotted: str) -> str:
        parent, _, key = dotted.rpartition(".")
        known = sorted({a.rpartition(".")[2] for a in self.asked if a.rpartition(".")[0] == parent})
        close = difflib.get_close_matches(key, known, n=1) or [
            k for k in known if k.startswith(key) or key.startswith(k)]
        if close:
            return f" (did you mean {close[0]}?)"
        return f"; known here: {', '.join(known)}" if known else ""


_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


def load(path: Path, env_prefix: str, environ: Mapping[str, str] | None = None) -> Source:
    """Read ``path`` and apply ``<env_prefix>__...`` overrides."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    env = apply_env(data, env_prefix, os.environ if environ is None else environ)
    return Source(path, data, text, env)


def apply_env(data: dict[str, Any], prefix: str, environ: Mapping[str, str]) -> dict[str, str]:
    """Apply the overrides; returns which dotted key (or new table) each variable set."""
    marker = prefix.upper() + "__"
    applied: dict[str, str] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(marker):
            continue
        keys = [k.lower() for k in name[len(marker) :].split("__") if k]
        if not keys:
            continue
        node = data
        for depth, key in enumerate(keys[:-1], start=1):
            if key not in node:     # a table the file does not have: this variable made it
                applied.setdefault(".".join(keys[:depth]), name)
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"environment {name}: {key} is not a section")
            node = child
        node[keys[-1]] = _env_value(raw)
        applied[".".join(keys)] = name
    return applied


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


class Section:
    """Typed accessors over one table of a :class:`Source`."""

    def __init__(
        self, source: Source, data: Mapping[builtins.str, Any], path: builtins.str
    ) -> None:
        self.source = source
        self.data = data
        self.path = path

    def _key(self, key: builtins.str) -> builtins.str:
        return f"{self.path}.{key}" if self.path else key

    def _get(self, key: builtins.str, default: Any = None) -> Any:
        """The value of ``key`` (``default`` if absent), recording that it was asked for."""
        self.source.asked.add(self._key(key))
        return self.data.get(key, default)

    def _required(self, key: builtins.str) -> ConfigError:
        close = difflib.get_close_matches(key, [k for k in self.data
                                                if self._key(k) not in self.source.asked], n=1)
        return self.error(key, "required" + (f" (found {close[0]}: a typo?)" if close else ""))

    def keys(self) -> list[builtins.str]:
        """The keys of a table whose keys are data (currencies, key ids): all accepted."""
        for key in self.data:
            self.source.asked.add(self._key(key))
        return list(self.data)

    def merchant_keys(self, merchant_ids: Iterable[builtins.str]) -> list[builtins.str]:
        """The keys of a table keyed by merchant id (``[media.retention_days_by_merchant]``),
        each a configured merchant (an error naming it otherwise)."""
        known = set(merchant_ids)
        for key in self.keys():
            if key not in known:
                raise self.error(key, f"no merchant {key!r}")
        return list(self.data)

    def error(self, key: builtins.str, message: builtins.str) -> ConfigError:
        return self.source.error(self._key(key), message)

    def section(self, key: builtins.str) -> Section:
        value = self._get(key, {})
        if not isinstance(value, Mapping):
            raise self.error(key, "expected a table")
        return Section(self.source, value, self._key(key))

    def sections(self, key: builtins.str) -> list[Section]:
        value = self._get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
            raise self.error(key, "expected an array of tables ([[...]])")
        return [Section(self.source, v, f"{self._key(key)}[{i}]") for i, v in enumerate(value)]

    def has(self, key: builtins.str) -> builtins.bool:
        self.source.asked.add(self._key(key))
        return key in self.data

    def str(
        self,
        key: builtins.str,
        default: builtins.str | None = None,
        *,
        pattern: builtins.str | None = None,
    ) -> builtins.str:
        value = self._get(key, default)
        if value is None:
            raise self._required(key)
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {type(value).__name__}")
        if pattern and not re.fullmatch(pattern, value):
            raise self.error(key, f"{value!r} does not match {pattern}")
        return value

    def opt_str(self, key: builtins.str) -> builtins.str | None:
        return self.str(key) if self._get(key) not in (None, "") else None

    def int(
        self,
        key: builtins.str,
        default: builtins.int | None = None,
        *,
        min: builtins.int | None = None,
        max: builtins.int | None = None,
    ) -> builtins.int:
        value = self._get(key, default)
        if value is None:
            raise self._required(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {value!r}")
        if (min is not None and value < min) or (max is not None and value > max):
            raise self.error(key, f"{value} is outside {min}..{max}")
        return value

    def decimal(
        self, key: builtins.str, default: builtins.str | None = None, *, min: Decimal | None = None
    ) -> Decimal:
        value = self._get(key, default)
        if value is None:
            raise self._required(key)
        if isinstance(value, bool) or not isinstance(value, int | str | float):
            raise self.error(key, f"expected a number, got {value!r}")
        # TOML floats are turned into Decimal through their repr, not binary.
        try:
            result = Decimal(repr(value) if isinstance(value, float) else str(value))
        except ArithmeticError:
            raise self.error(key, f"not a number: {value!r}") from None
        if min is not None and result < min:
            raise self.error(key, f"{result} is below {min}")
        return result

    def bool(self, key: builtins.str, default: builtins.bool | None = None) -> builtins.bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def str_list(
        self, key: builtins.str, default: Sequence[builtins.str] = ()
    ) -> tuple[builtins.str, ...]:
        value = self._get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, "expected an array of strings")
        return tuple(value)

    def int_list(
        self, key: builtins.str, default: Sequence[builtins.int] = ()
    ) -> tuple[builtins.int, ...]:
        value = self._get(key, list(default))
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise self.error(key, "expected an array of integers")
        return tuple(value)

    def date(self, key: builtins.str) -> datetime.date:
        """A calendar date: a TOML local date (``2026-12-31``) or a string of one."""
        value = self._get(key)
        if value is None:
            raise self._required(key)
        if isinstance(value, builtins.str):
            try:
                value = datetime.date.fromisoformat(value)
            except ValueError:
                raise self.error(key, f"expected a date (YYYY-MM-DD), got {value!r}") from None
        if isinstance(value, datetime.datetime) or not isinstance(value, datetime.date):
            raise self.error(key, f"expected a date (YYYY-MM-DD), got {value!r}")
        return value

    def enum(self, key: builtins.str, kind: type[E], default: E | None = None) -> E:
        value = self._get(key, default.value if default is not None else None)
        try:
            return kind(value)
        except ValueError:
            allowed = ", ".join(sorted(str(m.value) for m in kind))
            raise self.error(key, f"expected one of {allowed}, got {value!r}") from None

    def number(
        self, key: builtins.str, default: builtins.str | None = None, region: builtins.str = "JP"
    ) -> E164:
        text = self.str(key, default)
        try:
            return normalise(text, region)
        except InvalidNumber as exc:
            raise self.error(key, str(exc)) from None

    def path_value(self, key: builtins.str, default: builtins.str | None = None) -> Path:
        """A path, relative to the config file's directory unless absolute."""
        value = Path(self.str(key, default))
        return value if value.is_absolute() else (self.source.path.parent / value).resolve()


def cannot_write(directory: Path) -> str | None:
    """Why a server could not create ``directory`` (or write in it), for ``check``: None
    when the nearest existing directory on its path is writable."""
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return f"{directory}: cannot write in {existing}"
    return None


def root(source: Source) -> Section:
    return Section(source, source.data, "")


# --- settings shared by both sites -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    url: str | None  # None: DATABASE_URL, else the embedded server
    name: str  # database name on the embedded server
    min_connections: int
    max_connections: int
    DEFAULT_MAX_CONNECTIONS: ClassVar[int] = 10

    @classmethod
    def parse(cls, s: Section, default_name: str) -> DatabaseSettings:
        return cls(
            url=s.opt_str("url"),
            name=s.str("name", default_name, pattern=r"[a-z_0-9]+"),
            min_connections=s.int("min_connections", 2, min=1),
            max_connections=s.int("max_connections", cls.DEFAULT_MAX_CONNECTIONS, min=1),
        )


@dataclass(frozen=True, slots=True)
class TlsSettings:
    ca: Path
    cert: Path
    key: Path

    @classmethod
    def parse(cls, s: Section) -> TlsSettings:
        return cls(ca=s.path_value("ca"), cert=s.path_value("cert"), key=s.path_value("key"))


@dataclass(frozen=True, slots=True)
class HttpSettings:
    host: str
    port: int
    max_body_bytes: int
    #: SO_REUSEPORT: several processes serve the one port (the kernel spreads connections)
    reuse_port: bool = False
    #: one log line per request (``aiohttp.access``); off: the link's messages are kept
    #: in the database (``inbound_messages``), and a line per request is CPU at load
    access_log: bool = False
    #: the site's prometheus_client multiprocess directory (``GET /metrics`` of any process
    #: sums every process serving the port; see shared.metrics); None: the
    #: ``PROMETHEUS_MULTIPROC_DIR`` environment variable, else one process's metrics
    metrics_dir: Path | None = None
    #: the proxies in front (CIDRs) whose ``X-Forwarded-For`` names the client
    #: (:mod:`shared.client_address`); none: the client is the TCP peer
    trusted_proxies: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, s: Section, default_port: int) -> HttpSettings:
        return cls(
            host=s.str("host", "127.0.0.1"),
            port=s.int("port", default_port, min=0, max=65535),
            max_body_bytes=s.int("max_body_bytes", 64 * 1024, min=1024),
            reuse_port=s.bool("reuse_port", False),
            access_log=s.bool("access_log", False),
            metrics_dir=s.path_value("metrics_dir") if s.has("metrics_dir") else None,
            trusted_proxies=_networks(s, "trusted_proxies"),
        )


def _networks(s: Section, key: str) -> tuple[Network, ...]:
    networks = []
    for value in s.str_list(key):
        try:
            networks.append(parse_network(value))
        except ValueError as exc:
            raise s.error(key, f"{value!r} is not a network (CIDR or address): {exc}") from None
    return tuple(networks)


@dataclass(frozen=True, slots=True)
class AriSettings:
    url: str
    username: str
    password: str
    app: str

    @classmethod
    def parse(cls, s: Section, default_app: str) -> AriSettings:
        return cls(
            url=s.str("url"),
            username=s.str("username"),
            password=s.str("password"),
            app=s.str("app", default_app, pattern=r"[A-Za-z0-9_-]+"),
        )


@dataclass(frozen=True, slots=True)
class SigningSettings:
    """Our private keys (we sign with all of them) and the peer's trusted public keys."""

    keys: tuple[Path, ...]
    trusted: Mapping[str, Path]

    @classmethod
    def parse(cls, s: Section) -> SigningSettings:
        keys = tuple(s.source.path.parent.joinpath(p).resolve() for p in s.str_list("keys"))
        if not keys:
            raise s.error("keys", "at least one private signing key file is required")
        trusted_sec = s.section("trusted")
        trusted = {k: trusted_sec.path_value(k) for k in trusted_sec.keys()}
        if not trusted:
            raise s.error("trusted", "at least one trusted peer key is required")
        return cls(keys=keys, trusted=trusted)


@dataclass(frozen=True, slots=True)
class LinkRoute:
    """One path to the peer site: the internet, or a leased line."""

    name: str
    url: str

    @classmethod
    def parse(cls, s: Section) -> LinkRoute:
        url = s.str("url")
        if not url.startswith(("https://", "http://")):
            raise s.error("url", "expected an http(s) URL")
        return cls(name=s.str("name", pattern=r"[a-z0-9_-]+"), url=url.rstrip("/"))


class OutsideHours(enum.StrEnum):
    """What the callback site does with a queued call-back that falls outside hours."""

    WAIT = "wait"   # dial at the next opening (the job is rescheduled, durably)
    DROP = "drop"   # close it: final status failed, reason outside_hours, to the edge


class AnnounceMode(enum.StrEnum):
    EARLY_MEDIA = "early_media"  # 183 + announcement, then reject: the caller pays nothing
    ANSWER = "answer"  # answer, announce, hang up (the patent's mode)


#: the number classes a merchant's call lengths are configured and learned for
#: (``shared.phone.NumberType``: mobile; fixed_line and fixed_line_or_mobile; voip)
NUMBER_CLASSES = ("mobile", "fixed", "ip", "other")


@dataclass(frozen=True, slots=True)
class LengthSpec:
    """One configured call-length distribution: a name (``routing_rates`` built-in or a
    table of the merchant's distributions file), or an exponential or log-normal."""

    distribution: str | None = None
    exponential_mean_s: Decimal | None = None
    lognormal_mean_s: Decimal | None = None
    lognormal_sigma: Decimal | None = None

    @classmethod
    def parse(cls, s: Section) -> LengthSpec:
        spec = cls(distribution=s.opt_str("distribution"),
                   exponential_mean_s=_opt_decimal(s, "exponential_mean_s"),
                   lognormal_mean_s=_opt_decimal(s, "lognormal_mean_s"),
                   lognormal_sigma=_opt_decimal(s, "lognormal_sigma"))
        shapes = [spec.distribution is not None, spec.exponential_mean_s is not None,
                  spec.lognormal_mean_s is not None or spec.lognormal_sigma is not None]
        if sum(shapes) != 1:
            raise s.error("distribution", "needs exactly one of distribution, "
                          "exponential_mean_s, or lognormal_mean_s with lognormal_sigma")
        return spec

    def table(self) -> dict[str, Decimal]:
        """The inline distribution as a ``[distributions.NAME]`` table (``routing_rates``)."""
        return {k: v for k, v in (("exponential_mean_s", self.exponential_mean_s),
                                  ("lognormal_mean_s", self.lognormal_mean_s),
                                  ("lognormal_sigma", self.lognormal_sigma)) if v is not None}


def _opt_decimal(s: Section, key: str) -> Decimal | None:
    return s.decimal(key) if s.has(key) else None


@dataclass(frozen=True, slots=True)
class CallLengthSettings:
    """``[merchants.call_lengths]``: the call-length distribution the decision assumes
    for the merchant's callers until it has learned them (``routing_rates.call_lengths``).

    ``file``: a distributions file (README "Call-length distributions") whose tables
    ``distribution = NAME`` may name; ``all``: every class not given its own;
    ``mobile``, ``fixed``, ``ip``, ``other``: one class."""

    file: Path | None = None
    classes: tuple[tuple[str, LengthSpec], ...] = ()

    @classmethod
    def parse(cls, s: Section) -> CallLengthSettings:
        file = s.path_value("file") if s.has("file") else None
        classes = tuple((name, LengthSpec.parse(s.section(name)))
                        for name in ("all", *NUMBER_CLASSES) if s.has(name))
        return cls(file, classes)


@dataclass(frozen=True, slots=True)
class CarrierQuality:
    """``[merchants.carrier_quality]``: a carrier whose figures for a destination fall
    below ``min_asr`` (0..1) or above ``max_pdd_s``, over at least ``min_calls`` legs, is
    moved down the ranking (``routing_rates.quality``)."""

    min_asr: Decimal | None = None
    max_pdd_s: Decimal | None = None
    min_calls: int = 20

    @classmethod
    def parse(cls, s: Section) -> CarrierQuality | None:
        if not s.has("min_asr") and not s.has("max_pdd_s"):
            s.int("min_calls", 20, min=1)      # read, so a lone min_calls is not unknown
            return None
        min_asr = _amount(s, "min_asr", Decimal(1))
        max_pdd = _amount(s, "max_pdd_s", None)
        return cls(min_asr, max_pdd, s.int("min_calls", 20, min=1))


def _amount(s: Section, key: str, most: Decimal | None) -> Decimal | None:
    """An optional finite number >= 0 (and <= ``most``)."""
    if not s.has(key):
        return None
    value = s.decimal(key)
    if not value.is_finite() or value < 0 or (most is not None and value > most):
        raise s.error(key, f"expected a number from 0 to {most if most is not None else 'any'}"
                           f", got {value}")
    return value


def _max_cost(s: Section) -> Money | None:
    """``max_cost_per_minute`` (> 0) in ``max_cost_currency`` (default JPY), or None."""
    currency = s.str("max_cost_currency", "JPY")
    try:
        currency = check_currency(currency)
    except UnknownCurrency as exc:
        raise s.error("max_cost_currency", str(exc)) from None
    if not s.has("max_cost_per_minute"):
        return None
    amount = s.decimal("max_cost_per_minute")
    if not amount.is_finite() or amount <= 0:
        raise s.error("max_cost_per_minute", f"expected an amount above 0, got {amount}")
    return Money(amount, currency)


@dataclass(frozen=True, slots=True)
class Merchant:
    """A tenant: a merchant with its own numbers, flows, tariffs and limits."""

    id: str
    name: str
    numbers: tuple[E164, ...]
    callback_caller_id: E164
    announce_mode: AnnounceMode
    inbound_tariff: str
    pre_callback_delay_s: Decimal
    max_attempts: int
    retry_backoff_s: tuple[int, ...]
    ring_timeout_s: int
    ivr_flow: str
    operator: str
    api_token_sha256: str | None
    call_lengths: CallLengthSettings = CallLengthSettings()
    #: the language of every prompt the merchant's callers hear (edge and call-back IVR)
    language: Language = Language.JAPANESE
    #: business hours (``[merchants.hours]``, :mod:`ivr_platform.hours_config`); None:
    #: always open. The edge refuses a call-back outside them, the callback worker re-checks
    hours: MerchantHours | None = None
    outside_hours: OutsideHours = OutsideHours.WAIT   # [merchants.hours] outside_hours
    #: the edge's presence numbers: an advisor calling one from their registered phone
    #: goes online (standby) or offline (``edge_server.presence_flow``); None: no such line
    presence_online_number: E164 | None = None
    presence_offline_number: E164 | None = None
    #: ``max_cost_per_minute`` (in ``max_cost_currency``, default JPY): no carrier dearer per
    #: minute calls this merchant's customers back; None: no limit
    max_cost_per_minute: Money | None = None
    #: ``[merchants.carrier_quality]``; None: carriers are ranked by cost alone
    carrier_quality: CarrierQuality | None = None
    #: where the merchant's customers top their balance up (an https URL); the
    #: click-to-call page links it when billing finds the balance too low. None: no link
    topup_url: str | None = None

    @classmethod
    def parse(cls, s: Section) -> Merchant:
        numbers = []
        for i, text in enumerate(s.str_list("numbers")):
            try:
                numbers.append(normalise(text))
            except InvalidNumber as exc:
                raise s.error(f"numbers[{i}]", str(exc)) from None
        if not numbers:
            raise s.error("numbers", "a merchant needs at least one number")
        backoff = s.int_list("retry_backoff_s", (30, 120, 600))
        if not backoff or any(b < 0 for b in backoff):
            raise s.error("retry_backoff_s", "expected non-negative seconds")
        token = s.opt_str("api_token_sha256")
        if token is not None and not re.fullmatch(r"[0-9a-f]{64}", token):
            raise s.error("api_token_sha256", "expected a lower-case hex SHA-256 digest")
        hours = s.section("hours")
        return cls(
            id=s.str("id", pattern=r"[a-z0-9][a-z0-9-]{0,62}"),
            name=s.str("name"),
            numbers=tuple(numbers),
            callback_caller_id=s.number("callback_caller_id", str(numbers[0])),
            announce_mode=s.enum("announce_mode", AnnounceMode, AnnounceMode.EARLY_MEDIA),
            inbound_tariff=s.str("inbound_tariff", "ntt-freedial"),
            pre_callback_delay_s=s.decimal("pre_callback_delay_s", "3", min=Decimal(0)),
            max_attempts=s.int("max_attempts", 3, min=1, max=20),
            retry_backoff_s=backoff,
            ring_timeout_s=s.int("ring_timeout_s", 30, min=5, max=180),
            ivr_flow=s.str("ivr_flow", "order", pattern=r"[a-z0-9_-]+"),
            operator=s.str("operator", "operator", pattern=r"[A-Za-z0-9_-]+"),
            api_token_sha256=token,
            call_lengths=CallLengthSettings.parse(s.section("call_lengths")),
            language=s.enum("language", Language, Language.JAPANESE),
            hours=parse_merchant_hours(hours) if s.has("hours") else None,
            outside_hours=hours.enum("outside_hours", OutsideHours, OutsideHours.WAIT),
            presence_online_number=_opt_number(s, "presence_online_number"),
            presence_offline_number=_opt_number(s, "presence_offline_number"),
            max_cost_per_minute=_max_cost(s),
            carrier_quality=CarrierQuality.parse(s.section("carrier_quality")),
            topup_url=_opt_https(s, "topup_url"),
        )

    def presence_numbers(self) -> tuple[tuple[str, E164], ...]:
        """``(key, number)`` of each presence number the merchant has."""
        return tuple((key, number) for key, number in (
            ("presence_online_number", self.presence_online_number),
            ("presence_offline_number", self.presence_offline_number)) if number is not None)


def _opt_https(s: Section, key: str) -> str | None:
    url = s.opt_str(key)
    if url is not None and not re.fullmatch(r"https://[^\s\"<>]+", url):
        raise s.error(key, f"expected an https:// URL, got {url!r}")
    return url


def _opt_number(s: Section, key: str) -> E164 | None:
    return s.number(key) if s.has(key) else None


def parse_merchants(s: Section) -> tuple[Merchant, ...]:
    """Every ``[[merchants]]``; a number (toll-free or presence) belongs to one of them
    and has one use."""
    merchants = tuple(Merchant.parse(m) for m in s.sections("merchants"))
    seen_ids: set[str] = set()
    seen_numbers: dict[E164, str] = {}
    for i, m in enumerate(merchants):
        if m.id in seen_ids:
            raise s.error(f"merchants[{i}].id", f"duplicate merchant id {m.id!r}")
        seen_ids.add(m.id)
        for key, n in (*(("numbers", n) for n in m.numbers), *m.presence_numbers()):
            if n in seen_numbers:
                raise s.error(f"merchants[{i}].{key}",
                              f"{n} is already {seen_numbers[n]}")
            seen_numbers[n] = (f"a number of merchant {m.id!r}" if key == "numbers" else
                               f"merchant {m.id!r}'s {key}")
    return merchants
