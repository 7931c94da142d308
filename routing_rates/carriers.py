"""Carriers (and inbound tariffs): who prices a leg, how to dial them.

Both kinds are *tariffs* owning versioned decks. A ``carrier`` terminates
call-backs (its deck is keyed by destination prefix); an ``inbound`` tariff
prices the direct path, what the merchant pays for a toll-free call (its deck
is keyed by the *caller's* prefix, e.g. NTT Free Dial by mobile/fixed range).

TOML (``routing_rates/data/carriers.toml`` is the demo set)::

    [[carriers]]
    id = "carrier-a"
    name = "Plivo API (published deck)"
    currency = "USD"
    timezone = "America/Los_Angeles"
    max_channels = 30
    dial_string = "PJSIP/{digits}@carrier-a"
    profile = "plivo"
    [[carriers.periods]]        # optional rate periods, carrier local time
    name = "peak"
    days = ["mon", "tue", "wed", "thu", "fri"]   # "hol": Japan's public holidays
    start = "08:00"
    end = "19:00"

    [[inbound]]
    id = "ntt-freedial"
    ...
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from routing_rates.tariff import Period, TariffError
from shared.money import UnknownCurrency, check_currency

_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
KINDS = ("carrier", "inbound")


class CarrierConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Carrier:
    id: str
    name: str
    kind: str = "carrier"
    enabled: bool = True
    currency: str = "USD"
    timezone: str = "UTC"
    max_channels: int | None = None
    dial_string: str = ""
    profile: str = ""
    periods: tuple[Period, ...] = ()

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def endpoint(self, digits: str) -> str:
        """The dial string for a number (``{digits}`` without ``+``, ``{e164}`` with)."""
        return self.dial_string.format(digits=digits, e164="+" + digits)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "kind": self.kind, "enabled": self.enabled,
            "currency": self.currency, "timezone": self.timezone,
            "max_channels": self.max_channels, "dial_string": self.dial_string,
            "profile": self.profile,
            "periods": [{"name": p.name, "days": sorted(p.days),
                         "start": p.start.isoformat("minutes"),
                         "end": p.end.isoformat("minutes"),
                         **({"holidays": True} if p.holidays else {})}
                        for p in self.periods],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Carrier:
        days = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
        periods = tuple(Period.parse(p["name"], [days[d] for d in p["days"]]
                                     + (["hol"] if p.get("holidays") is True else []),
                                     p["start"], p["end"]) for p in data.get("periods", []))
        return cls(id=data["id"], name=data["name"], kind=data["kind"],
                   enabled=bool(data["enabled"]), currency=data["currency"],
                   timezone=data["timezone"], max_channels=data.get("max_channels"),
                   dial_string=data.get("dial_string", ""), profile=data.get("profile", ""),
                   periods=periods)


def valid_id(text: object) -> bool:
    """A carrier or tariff id: ``[a-z0-9][a-z0-9-]``, at most 63 characters."""
    return isinstance(text, str) and _ID.match(text) is not None


def from_json_checked(data: object) -> Carrier:
    """A carrier as another site sent it (``Carrier.to_json``), checked like a TOML entry;
    ``CarrierConfigError`` if it is not one."""
    if not isinstance(data, Mapping):
        raise CarrierConfigError("not an object")
    for key in ("id", "name", "kind", "currency", "timezone", "dial_string", "profile"):
        if not isinstance(data.get(key, ""), str):
            raise CarrierConfigError(f"{key} must be a string")
    try:
        carrier = Carrier.from_json(data)
        check_currency(carrier.currency)
        ZoneInfo(carrier.timezone)
    except (KeyError, TypeError, IndexError, UnknownCurrency, TariffError) as exc:
        raise CarrierConfigError(f"{type(exc).__name__}: {exc}") from exc
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CarrierConfigError(f"unknown timezone: {exc}") from exc
    if not valid_id(carrier.id):
        raise CarrierConfigError(f"id {carrier.id!r} must match [a-z0-9-]+")
    if carrier.kind not in KINDS:
        raise CarrierConfigError(f"kind {carrier.kind!r} must be one of {', '.join(KINDS)}")
    if carrier.max_channels is not None and (not isinstance(carrier.max_channels, int)
                                             or carrier.max_channels < 0):
        raise CarrierConfigError("max_channels must be a whole number >= 0")
    return carrier


def _carrier(entry: Mapping[str, Any], kind: str, where: str) -> Carrier:
    cid = str(entry.get("id", ""))
    if not _ID.match(cid):
        raise CarrierConfigError(f"{where}: id {cid!r} must match [a-z0-9-]+")
    try:
        currency = check_currency(str(entry.get("currency", "USD")))
        timezone = str(entry.get("timezone", "UTC"))
        ZoneInfo(timezone)
        periods = tuple(Period.parse(str(p["name"]), list(p["days"]), str(p["start"]),
                                     str(p["end"])) for p in entry.get("periods", []))
    except (UnknownCurrency, TariffError, KeyError) as exc:
        raise CarrierConfigError(f"{where} ({cid}): {exc}") from exc
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CarrierConfigError(f"{where} ({cid}): unknown timezone: {exc}") from exc
    dial = str(entry.get("dial_string", ""))
    if kind == "carrier" and "{digits}" not in dial and "{e164}" not in dial:
        raise CarrierConfigError(f"{where} ({cid}): dial_string needs {{digits}} or {{e164}}")
    max_ch = entry.get("max_channels")
    if max_ch is not None and (not isinstance(max_ch, int) or max_ch < 0):
        raise CarrierConfigError(f"{where} ({cid}): max_channels must be a whole number >= 0")
    return Carrier(id=cid, name=str(entry.get("name", cid)), kind=kind,
                   enabled=bool(entry.get("enabled", True)), currency=currency,
                   timezone=timezone, max_channels=max_ch, dial_string=dial,
                   profile=str(entry.get("profile", "")), periods=periods)


def parse_carriers(text: str, source: str = "<carriers>") -> list[Carrier]:
    try:
        data = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise CarrierConfigError(f"{source}: {exc}") from exc
    found: list[Carrier] = []
    for key, kind in (("carriers", "carrier"), ("inbound", "inbound")):
        for i, entry in enumerate(data.get(key, [])):
            found.append(_carrier(entry, kind, f"{source}: [[{key}]] #{i + 1}"))
    ids = [c.id for c in found]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise CarrierConfigError(f"{source}: duplicate ids {', '.join(dupes)}")
    return found


def load_carriers(path: Path) -> list[Carrier]:
    return parse_carriers(path.read_text(encoding="utf-8"), str(path))


DATA_DIR = Path(__file__).resolve().parent / "data"
DEMO_CARRIERS = DATA_DIR / "carriers.toml"


def by_id(carriers: Sequence[Carrier]) -> dict[str, Carrier]:
    return {c.id: c for c in carriers}
