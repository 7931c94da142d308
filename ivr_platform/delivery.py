"""One HTTP call to a provider (SMS, chat, mail API), with the errors every adapter uses::

    DeliveryError
    ├── Rejected      the provider refused this request (4xx but 408 and 429): never
    │                 send it again as it is
    └── Unavailable   transport error, timeout, 408, 429 or 5xx: the same request may be
                      sent again later (by an outbox, after :func:`backoff`)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp
from yarl import URL

_RETRYABLE_4XX = frozenset({408, 429})


class DeliveryError(RuntimeError):
    pass


class Rejected(DeliveryError):
    def __init__(self, http_status: int, code: int | str | None, message: str) -> None:
        super().__init__(f"HTTP {http_status}, error {code}: {message}")
        self.http_status, self.code, self.message = http_status, code, message


class Unavailable(DeliveryError):
    pass


async def call(session: aiohttp.ClientSession, method: str, url: str, *,
               headers: Mapping[str, str], timeout_s: float,
               data: Mapping[str, str] | bytes | None = None,
               json_body: Any = None) -> tuple[int, str]:
    """``(status, body text)`` of a 2xx-4xx answer; :class:`Unavailable` for what is worth
    trying again. The caller turns the 4xx it got into :class:`Rejected` with the
    provider's own error code. ``data``: a form, or the raw body (sent as it is: what
    was signed)."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with session.request(method, url, data=data, json=json_body, headers=headers,
                                   timeout=timeout) as response:
            status, text = response.status, await response.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise Unavailable(f"{method} {_safe(url)}: {type(exc).__name__}: {exc}") from exc
    if status in _RETRYABLE_4XX or status >= 500:
        raise Unavailable(f"{method} {_safe(url)}: HTTP {status}: {text[:200]}")
    return status, text


def backoff(first_s: float, most_s: float, failed: int) -> float:
    """Seconds before the next attempt after ``failed`` failed ones: ``first_s``, doubling
    each time, at most ``most_s``."""
    return float(min(most_s, first_s * 2 ** max(0, failed - 1)))


def json_object(text: str) -> dict[str, Any]:
    """A provider's JSON answer as an object; ``{}`` when it is not one."""
    try:
        body = json.loads(text)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def check_url(field: str, url: str) -> None:
    """ValueError naming ``field`` unless ``url`` is an absolute http(s) URL."""
    parsed = URL(url)
    if parsed.scheme not in ("https", "http") or not parsed.host:
        raise ValueError(f"{field}: expected an http(s) URL, got {_safe(url)!r}")


def _safe(url: str) -> str:
    """A webhook URL is its own secret (Slack, Teams, Google Chat): errors name its host."""
    parsed = URL(url)
    return str(parsed.origin()) if parsed.is_absolute() else "<not an absolute URL>"
