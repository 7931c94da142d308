"""What a browser's session needs, whoever opened it (the advisor's sign-in link, the
customer's verified number): a random token for its cookie, of which only the SHA-256
is stored, and a CSRF token the page sends back in a header and the site compares in
constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_token() -> str:
    return secrets.token_urlsafe(32)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(24)


def digest(token: str) -> bytes:
    """What is stored of a token."""
    return hashlib.sha256(token.encode()).digest()


def csrf_matches(sent: str, expected: str) -> bool:
    return hmac.compare_digest(sent.encode(), expected.encode())
