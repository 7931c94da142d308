"""Where a call leg went, as a CDR names it: a PSTN number or a SIP endpoint.

A leg to a customer, a PSTN advisor or a transfer number calls an E.164 number
(kind ``pstn``); a leg to a SIP advisor (their softphone ``<merchant>.<user>`` at the
edge) or to the edge's operator phone calls a SIP endpoint (kind ``sip``): the advisor's
SIP user or the endpoint's dial string, such as ``PJSIP/operator@edge-trunk``. The
callback site names the kind of each CDR's destination with :func:`kind_of`; the edge
checks the pair with :func:`parse`.
"""

from __future__ import annotations

import re
from typing import Final

from shared.phone import E164, InvalidNumber

PSTN: Final = "pstn"
SIP: Final = "sip"
KINDS: Final = (PSTN, SIP)
#: the longest SIP destination taken (a dial string: technology, endpoint, trunk)
MAX_SIP = 128
#: a SIP user (``advisors.schemas``) or a dial string built of one (``PJSIP/<name>@<trunk>``)
SIP_PATTERN: Final = r"^[A-Za-z0-9._~+@/:-]+$"
_SIP = re.compile(SIP_PATTERN)


def kind_of(destination: str) -> str:
    """``pstn`` for an E.164 number, else ``sip``."""
    try:
        E164.parse(destination)
    except InvalidNumber:
        return SIP
    return PSTN


def parse(destination: str, kind: str | None) -> tuple[str, str]:
    """``(destination, kind)`` checked: a ``pstn`` destination is an E.164 number, a
    ``sip`` one a SIP user or dial string. ``kind`` (one of :data:`KINDS`) None: a CDR
    sent before CDRs named it, such as a dead letter requeued; inferred from the
    destination. Raises ``ValueError`` naming what is wrong with the destination."""
    if kind is None:
        kind = kind_of(destination)
    if kind == PSTN:
        try:
            return str(E164.parse(destination)), PSTN
        except InvalidNumber as exc:
            raise ValueError(str(exc)) from None
    if len(destination) > MAX_SIP or not _SIP.match(destination):
        raise ValueError(f"not a SIP endpoint (at most {MAX_SIP} of A-Z a-z 0-9 ._~+@/:-): "
                         f"{destination!r}")
    return destination, SIP
