"""Test helpers for the guard: a settable clock and the IRSF trigger corpus.

``irsf_corpus(n)`` yields ``n`` caller strings an attacker could make the edge
forward: premium and personal numbers abroad (+44 70, +881, +882, ...),
Japanese service ranges (0570, 0990, 020, 0120, 0800, 0180), IP phones (050,
not enabled by default), withheld names, and dial-string injection attempts.
Every one must be refused; the default policy dials none of them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass
class FakeClock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


_TEMPLATES = (
    "+4470{:08d}",           # UK personal numbers: classic IRSF
    "+44871{:07d}",          # UK non-geographic
    "+881{:09d}",            # global mobile satellite
    "+882{:08d}",            # international networks
    "+8157{:08d}",           # 0570 navi dial (UAN)
    "+81990{:06d}",          # 0990 dial Q2 (premium)
    "+8120{:08d}",           # 020 M2M / pager
    "+81120{:06d}",          # 0120 free dial
    "+81800{:07d}",          # 0800 free dial
    "+81180{:06d}",          # 0180 telephone information
    "+8150{:08d}",           # 050 IP phone (not enabled by default)
    "+252{:08d}",            # Somalia
    "+3750{:08d}",           # Belarus
    "+1900{:07d}",           # US premium
    "+2327{:07d}",           # Sierra Leone
    "+819{:01d}",            # far too short
)
_RAW = (
    "anonymous", "Anonymous", "unknown", "private", "", "  ", "withheld", "unavailable",
    "09012345678&PJSIP/x", "+819012345678;foo", "09012345678@carrier-a", "PJSIP/evil",
    "+819012345678\r\nX-Evil: 1", "${CALLERID(num)}", "0901234567８", "sip:+819012345678@x",
    "+81-90-1234-5678", "+81 90 1234 5678", "1849012345678", "+819012345678,1",
    "+819012345678)", "090 1234 5678;ext=1",
)


def irsf_corpus(n: int = 1000) -> Iterator[str]:
    numbered = (t.format(i) for i in itertools.count() for t in _TEMPLATES)
    raw = itertools.cycle(_RAW)
    for i in range(n):
        yield next(raw) if i % 4 == 3 else next(numbered)
