"""What the logs say of a request: its path with the secrets in it left out.

Several addresses are their own credential: a page's link (``/card/{token}``,
``/topup/{token}``, ``/advisor/signin/{token}``, the billing routes behind them) and a
recording's signed link (``?signature=``). Whoever reads the logs must not be able to
use them, so :func:`logged_path` replaces a path parameter named in
:data:`SECRET_PARAMS` and a query parameter named in :data:`SECRET_QUERY` by
:data:`REDACTED`. :class:`AccessLogger` is ``[http] access_log``'s line (the client's
address, the request line so redacted, status, size, duration, user agent), and the error
middleware names requests the same way. The client is the TCP peer, or behind one of the
site's trusted proxies the client it names (:func:`AccessLogger.behind`,
:mod:`shared.client_address`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from shared.client_address import Network, client_of

SECRET_PARAMS = frozenset({"token"})
SECRET_QUERY = frozenset({"signature"})
REDACTED = "[redacted]"


def logged_path(request: web.BaseRequest) -> str:
    """The request's path and query as a log line may show them."""
    match_info = getattr(request, "match_info", None)
    secrets = {value for name, value in (match_info or {}).items()
               if name in SECRET_PARAMS and value}
    path = "/".join(REDACTED if segment in secrets else segment
                    for segment in request.path.split("/"))
    if not request.query:
        return path
    return f"{path}?" + urlencode([(name, REDACTED if name in SECRET_QUERY else value)
                                   for name, value in request.query.items()], safe="[]")


class AccessLogger(AbstractAccessLogger):
    """One line per request, its secrets left out (``web.run_app(access_log_class=)``)."""

    #: the proxies whose ``X-Forwarded-For`` names the client (:meth:`behind`)
    trusted: ClassVar[tuple[Network, ...]] = ()

    @classmethod
    def behind(cls, trusted: Sequence[Network]) -> type[AccessLogger]:
        """The logger of a site behind the proxies ``trusted`` (``[http]
        trusted_proxies``): aiohttp makes the logger itself, so the class carries them."""
        return type("ProxiedAccessLogger", (cls,), {"trusted": tuple(trusted)})

    def log(self, request: web.BaseRequest, response: web.StreamResponse,
            time: float) -> None:
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.3fs "%s"', client_of(request, self.trusted) or "-",
            request.method, logged_path(request), *request.version, response.status,
            response.body_length, time, request.headers.get("User-Agent", "-"))
