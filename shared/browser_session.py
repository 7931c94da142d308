"""What a browser's session needs, whoever opened it (the advisor's sign-in link, the
customer's verified number): a random token for its cookie, of which only the SHA-256
is stored, and a CSRF token the page sends back in a header and the site compares in
constant time.

Every route a page POSTs or PUTs to also refuses a request another site's page made
(:func:`refuse_cross_site`): the session cookies are SameSite=Strict and changes need
the CSRF token, but the routes that open a session (the advisor's sign-in, the
customer's code check) or cost money without one (an SMS code) have neither yet. A
browser names where a request comes from (``Sec-Fetch-Site``, else ``Origin``); a
request naming neither is no other site's page (browsers send ``Origin`` on every
cross-origin POST), so a script or a test may still call the routes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from aiohttp import web

from shared.http import ApiError

CROSS_SITE = "cross-site-request"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(24)


def digest(token: str) -> bytes:
    """What is stored of a token."""
    return hashlib.sha256(token.encode()).digest()


def csrf_matches(sent: str, expected: str) -> bool:
    return hmac.compare_digest(sent.encode(), expected.encode())


def from_own_pages(request: web.Request) -> bool:
    """Whether the browser that sent ``request`` says it comes from a page of this site
    (``Sec-Fetch-Site: same-origin``; without it, an ``Origin`` whose host and port are
    the request's ``Host``), or names no origin at all (not a browser's cross-site
    request)."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site == "same-origin"
    origin = request.headers.get("Origin")
    return origin is None or (origin != "null" and urlsplit(origin).netloc == request.host)


def refuse_cross_site(request: web.Request) -> None:
    """403 :data:`CROSS_SITE` for a request another site's page made."""
    if not from_own_pages(request):
        raise ApiError(403, CROSS_SITE, "this request must come from the site's own page")
