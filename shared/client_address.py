"""Who sent a request: the TCP peer, or behind a trusted proxy the client it names.

A site behind a TLS-terminating load balancer sees the balancer as every request's peer;
the balancer names the client in ``X-Forwarded-For``, appending the address it took the
connection from to whatever the request already carried. Only the hops appended by
proxies of our own are true: anything to their left was written by the client and may be
forged. So the header is read only when the peer is one of ``[http] trusted_proxies``
(:data:`TRUSTED_PROXIES_KEY`), from the right, and the client is the rightmost address
that is not a trusted proxy (every hop trusted: the leftmost). With no trusted proxies
(the default) the client is the peer, and the header is ignored.

:func:`client_address` is what the per-client limits (the click page's SMS codes and
calls), the access log (:mod:`shared.access_log`) and the sign-in pages' log lines use.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: the site's ``[http] trusted_proxies`` (none: the client is the TCP peer)
TRUSTED_PROXIES_KEY = web.AppKey("trusted_proxies", tuple[Network, ...])
FORWARDED_FOR = "X-Forwarded-For"


def parse_network(value: str) -> Network:
    """``"10.0.0.0/8"``, ``"2001:db8::/32"`` or one address (``"192.0.2.7"``: a /32);
    ValueError for anything else, host bits set past the prefix included."""
    return ipaddress.ip_network(value.strip(), strict=True)


def _address(value: str) -> Address | None:
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address in network for network in trusted)


def resolve(peer: str | None, forwarded_for: Iterable[str],
            trusted: Sequence[Network]) -> str | None:
    """The client of a request from ``peer`` carrying the ``X-Forwarded-For`` header
    values ``forwarded_for`` (in order), given the trusted proxies.

    An entry that is not an address ends the walk at the hop that wrote it (a trusted
    proxy writes addresses; the client's own garbage cannot pick its key)."""
    hop = _address(peer) if peer else None
    if hop is None or not _trusted(hop, trusted):
        return peer
    entries = [entry for value in forwarded_for for entry in value.split(",")]
    for entry in reversed(entries):
        named = _address(entry)
        if named is None:
            break
        hop = named
        if not _trusted(hop, trusted):
            break
    return str(hop)


def client_of(request: web.BaseRequest, trusted: Sequence[Network]) -> str | None:
    return resolve(request.remote, request.headers.getall(FORWARDED_FOR, ()), trusted)


def client_address(request: web.Request) -> str:
    """The request's client (see the module); ``"unknown"`` when the peer is not known
    (a closed transport)."""
    trusted: tuple[Network, ...] = request.config_dict.get(TRUSTED_PROXIES_KEY, ())
    return client_of(request, trusted) or "unknown"
