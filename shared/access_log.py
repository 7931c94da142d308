"""What the logs say of a request: its path with the secrets in it left out.

Several addresses are their own credential: a page's link (``/card/{token}``,
``/topup/{token}``, ``/advisor/signin/{token}``, the billing routes behind them) and a
recording's signed link (``?signature=``). Whoever reads the logs must not be able to
use them, so :func:`logged_path` replaces a path parameter named in
:data:`SECRET_PARAMS` and a query parameter named in :data:`SECRET_QUERY` by
:data:`REDACTED`. :class:`AccessLogger` is ``[http] access_log``'s line (the client's
address, the request line so redacted, status, size, duration, user agent), and the error
middleware names requests the same way.
"""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

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

    def log(self, request: web.BaseRequest, response: web.StreamResponse,
            time: float) -> None:
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.3fs "%s"', request.remote or "-",
            request.method, logged_path(request), *request.version, response.status,
            response.body_length, time, request.headers.get("User-Agent", "-"))
