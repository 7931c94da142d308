"""Destination policy: may this number be called back at all? Pure; both sites apply it.

The edge applies it before offering a call-back (a refused caller is kept on the
toll-free line and routed to the call center); the callback site applies it again
to every request, even validly signed ones (``callback_server.guard``).

The callback destination is the caller ID the edge saw, and Japanese caller
IDs are not authenticated, so this is attacker-controlled input. Only what the
operator enables is dialled (Twilio geo permissions, Kazoo CCCP
``allowed_callee_regex``). The default allows Japanese mobile
(060/070/080/090) and geographic numbers only.

Evaluation order (first match wins)::

    1 block list (exact number)                        number_blocked
    2 built-in service prefixes (always)               destination_premium (0990),
                                                       destination_uan (0570),
                                                       destination_toll_free (0120, 0800),
                                                       destination_m2m (020),
                                                       destination_service (0170, 0180)
    3 operator deny prefixes                           destination_prefix_denied
    4 country not enabled (unless allow list/prefix)   destination_foreign
    5 hard-denied types (always)                       destination_premium, destination_uan,
                                                       destination_m2m (pager),
                                                       destination_type_not_allowed
    6 allow list (exact number) or allow prefix        allowed
    7 not a valid number                               destination_invalid
    8 type not enabled                                 destination_toll_free, destination_voip,
                                                       destination_type_not_allowed
    9 Japanese shape check (defence in depth)          destination_invalid

So the allow list and allow prefixes widen the country/type allowlist but
never reach premium-rate, UAN, M2M/pager, shared-cost or personal numbers, and
never override the block list or a deny prefix.

Raw caller strings (``anonymous``, ``09012345678&PJSIP/x``) are classified by
:func:`classify_raw` through :func:`shared.phone.classify_caller_id`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from shared.config import Section
from shared.phone import E164, CallerIdRefusal, NumberType, classify_caller_id
from shared.refusals import Refusal, Verdict

# E.164 digit prefixes of Japanese service ranges that are never a customer's phone.
BUILTIN_DENY: tuple[tuple[str, Refusal], ...] = (
    ("81990", Refusal.DESTINATION_PREMIUM),     # 0990 dial Q2 (premium rate)
    ("81570", Refusal.DESTINATION_UAN),         # 0570 navi dial
    ("81120", Refusal.DESTINATION_TOLL_FREE),   # 0120 free dial
    ("81800", Refusal.DESTINATION_TOLL_FREE),   # 0800 free dial
    ("8120", Refusal.DESTINATION_M2M),          # 020 M2M / pager
    ("81170", Refusal.DESTINATION_SERVICE),     # 0170 message dial
    ("81180", Refusal.DESTINATION_SERVICE),     # 0180 telephone information (mass calling)
    ("8110", Refusal.DESTINATION_INVALID),      # 010 is the international prefix
    ("8100", Refusal.DESTINATION_INVALID),
)
HARD_DENY_TYPES: dict[NumberType, Refusal] = {
    NumberType.PREMIUM_RATE: Refusal.DESTINATION_PREMIUM,
    NumberType.UAN: Refusal.DESTINATION_UAN,
    NumberType.PAGER: Refusal.DESTINATION_M2M,
    NumberType.SHARED_COST: Refusal.DESTINATION_TYPE,
    NumberType.PERSONAL_NUMBER: Refusal.DESTINATION_TYPE,   # +44 70: classic IRSF
    NumberType.VOICEMAIL: Refusal.DESTINATION_TYPE,
}
TYPE_REFUSAL: dict[NumberType, Refusal] = {
    NumberType.TOLL_FREE: Refusal.DESTINATION_TOLL_FREE,
    NumberType.VOIP: Refusal.DESTINATION_VOIP,
}
_JP_SHAPES: dict[NumberType, re.Pattern[str]] = {
    NumberType.MOBILE: re.compile(r"^81[6-9]0\d{8}$"),
    NumberType.FIXED_LINE: re.compile(r"^81[1-9]\d{8}$"),
    NumberType.FIXED_LINE_OR_MOBILE: re.compile(r"^81[1-9]\d{8,9}$"),
}
_PREFIX = re.compile(r"^[1-9][0-9]{0,14}$")
_ASCII_NUMBER = re.compile(r"\+?[0-9]+")          # fullmatch only
_STRICT_E164 = re.compile(r"\+[1-9][0-9]{6,14}")   # fullmatch only: no Unicode digits, no \n


def parse_prefix(text: str) -> str:
    """``+8150`` or ``8150`` → ``8150``; raises ValueError for anything else."""
    digits = text.strip().removeprefix("+")
    if not _PREFIX.match(digits):
        raise ValueError(f"not an E.164 prefix (digits, country code first): {text!r}")
    return digits


@dataclass(frozen=True, slots=True)
class PolicySettings:
    countries: frozenset[str] = frozenset({"JP"})
    number_types: frozenset[NumberType] = frozenset({NumberType.MOBILE, NumberType.FIXED_LINE})
    allow_prefixes: tuple[str, ...] = ()
    deny_prefixes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, s: Section) -> PolicySettings:
        """A ``[...policy]``/``[edge.destinations]`` section; defaults as above."""
        types = s.str_list("number_types", ("mobile", "fixed_line"))
        try:
            number_types = frozenset(NumberType(t) for t in types)
        except ValueError:
            raise s.error("number_types", "expected names from: "
                          + ", ".join(t.value for t in NumberType)) from None
        countries = s.str_list("countries", ("JP",))
        for c in countries:
            if not re.fullmatch(r"[A-Z]{2}", c):
                raise s.error("countries", f"{c!r} is not an ISO 3166 alpha-2 region code")
        prefixes: dict[str, tuple[str, ...]] = {}
        for key in ("allow_prefixes", "deny_prefixes"):
            try:
                prefixes[key] = tuple(parse_prefix(p) for p in s.str_list(key))
            except ValueError as exc:
                raise s.error(key, str(exc)) from None
        return cls(countries=frozenset(countries), number_types=number_types,
                   allow_prefixes=prefixes["allow_prefixes"],
                   deny_prefixes=prefixes["deny_prefixes"])


@dataclass(frozen=True, slots=True)
class Listing:
    """The number's entries on the operator lists (looked up by the caller)."""

    blocked: bool = False
    allowed: bool = False
    block_reason: str = ""


@dataclass(frozen=True, slots=True)
class Policy:
    settings: PolicySettings = field(default_factory=PolicySettings)

    def evaluate(self, number: E164, listing: Listing | None = None) -> Verdict | None:
        """None: the number may be dialled. Otherwise the reason-coded refusal."""
        s = self.settings
        listing = listing or Listing()
        digits = number.digits
        if not _STRICT_E164.fullmatch("+" + digits):
            # E164 accepts Unicode digits and a trailing newline ("\d", "$"); never dial them.
            return Verdict(Refusal.DESTINATION_MALFORMED, "not ASCII digits")
        if listing.blocked:
            return Verdict(Refusal.NUMBER_BLOCKED, listing.block_reason or "on the block list")
        denied = self._denied_prefix(digits)
        if denied is not None:
            return denied
        explicit = listing.allowed or any(digits.startswith(p) for p in s.allow_prefixes)
        region = number.region
        if not explicit and region not in s.countries:
            return Verdict(Refusal.DESTINATION_FOREIGN, f"country {region or 'unknown'} "
                                                        "is not enabled")
        kind = number.number_type
        if kind in HARD_DENY_TYPES:
            return Verdict(HARD_DENY_TYPES[kind], f"number type {kind}")
        if explicit:
            return None
        if not number.is_valid():
            return Verdict(Refusal.DESTINATION_INVALID, "not a valid number")
        if kind not in s.number_types:
            return Verdict(TYPE_REFUSAL.get(kind, Refusal.DESTINATION_TYPE),
                           f"number type {kind} is not enabled")
        shape = _JP_SHAPES.get(kind)
        if region == "JP" and shape is not None and not shape.match(digits):
            return Verdict(Refusal.DESTINATION_INVALID, f"unexpected shape for a JP {kind}")
        return None


    def _denied_prefix(self, digits: str) -> Verdict | None:
        for prefix, reason in BUILTIN_DENY:
            if digits.startswith(prefix):
                return Verdict(reason, f"service prefix +{prefix}")
        for prefix in self.settings.deny_prefixes:
            if digits.startswith(prefix):
                return Verdict(Refusal.DESTINATION_PREFIX, f"deny prefix +{prefix}")
        return None


def classify_raw(raw: str) -> Verdict | E164:
    """A raw caller string as sent to us: a strict E.164 number, or why not.

    Only a strict ``+<ASCII digits>`` string is a number. Withheld names
    (``anonymous``), injection attempts (``09012345678&PJSIP/x``,
    ``+819012345678;foo``), Unicode digits, national forms and garbage are
    refusals, never numbers.
    """
    if _STRICT_E164.fullmatch(raw):
        return E164.parse(raw)
    verdict = classify_caller_id(raw)
    if verdict.refusal is CallerIdRefusal.WITHHELD:
        return Verdict(Refusal.DESTINATION_WITHHELD, verdict.detail)
    if verdict.refusal is CallerIdRefusal.MALFORMED or not _ASCII_NUMBER.fullmatch(raw):
        # Python's \d also matches fullwidth and other Unicode digits: refuse them here.
        return Verdict(Refusal.DESTINATION_MALFORMED, f"not ASCII digits: {sanitise(raw)!r}")
    if verdict.refusal is CallerIdRefusal.INVALID:
        return Verdict(Refusal.DESTINATION_INVALID, verdict.detail)
    return Verdict(Refusal.DESTINATION_MALFORMED,
                   f"a valid number, but not in E.164 form: {sanitise(raw)!r}")


def sanitise(raw: str, limit: int = 40) -> str:
    """A raw caller string made safe to store and log (printable ASCII, bounded)."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in raw[:limit])


def parse_types(values: Iterable[str]) -> frozenset[NumberType]:
    return frozenset(NumberType(v) for v in values)
