"""A page as the customer's browser gets it: the HTML shell (the package's style sheet and
scripts, nothing inline), and the headers every page carries: a strict
Content-Security-Policy (``default-src 'none'``; scripts, styles and requests from the site
itself and the origins a page names, such as Stripe's; no framing), ``X-Frame-Options:
DENY``, ``Referrer-Policy: no-referrer`` (a page's address holds its link's token) and
``Cache-Control: no-store``. ``GET /web/{name}`` serves the package's ``static/`` files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from importlib import resources
from urllib.parse import urlsplit

from aiohttp import web

from shared.http import ApiError
from shared.language import Language
from shared.openapi import Operation, Param, Reply, Schema, add_operations, string

TAG = "pages"
#: the package's static files: name → media type
STATIC_TYPES = {"card.js": "text/javascript", "advisor.js": "text/javascript",
                "click.js": "text/javascript", "operator.js": "text/javascript",
                "page.css": "text/css"}
HTML: Schema = {"type": "string", "description": "an HTML page"}
#: a page link's token
TOKEN_PARAM = Param("token", "path", string(128))
LANG_PARAM = Param("lang", "query", {"enum": ["ja", "en"]},
                   "the page's language (default: from Accept-Language, else Japanese)")


@dataclass(frozen=True, slots=True)
class Sources:
    """Origins a page may use besides its own site: scripts, ``fetch`` and frames."""

    script: Sequence[str] = ()
    connect: Sequence[str] = ()
    frame: Sequence[str] = ()


def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(sources: Sources) -> str:
    frame = " ".join(sources.frame) or "'none'"
    return "; ".join((
        "default-src 'none'", " ".join(("script-src 'self'", *sources.script)),
        "style-src 'self'", " ".join(("connect-src 'self'", *sources.connect)),
        f"frame-src {frame}", "img-src 'self' data:", "base-uri 'none'",
        "form-action 'self'", "frame-ancestors 'none'"))


def page(language: Language, title: str, body: str, *, status: int = 200,
         scripts: Sequence[str] = (), sources: Sources = Sources(),
         headers: Mapping[str, str] | None = None) -> web.Response:
    """An HTML page: ``title`` (text) and ``body`` (HTML, its values escaped by the
    caller), the style sheet, then ``scripts`` (URLs, run in order once the page is
    parsed)."""
    tags = "".join(f'\n<script src="{escape(src)}" defer></script>' for src in scripts)
    html = (f'<!doctype html>\n<html lang="{language.value}">\n<head>\n<meta charset="utf-8">'
            '\n<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'\n<title>{escape(title)}</title>\n<link rel="stylesheet" href="/web/page.css">'
            f'{tags}\n</head>\n<body>\n{body}\n</body>\n</html>\n')
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8",
                        headers={**security_headers(sources), "Cache-Control": "no-store",
                                 **(headers or {})})


def message_page(language: Language, status: int, title: str, message: str, *,
                 headers: Mapping[str, str] | None = None) -> web.Response:
    """A page that only says something (a link that is no good, the site unavailable)."""
    body = (f'<main class="message">\n<h1>{escape(title)}</h1>\n<p>{escape(message)}</p>'
            '\n</main>')
    return page(language, title, body, status=status, headers=headers)


def security_headers(sources: Sources = Sources()) -> dict[str, str]:
    return {"Content-Security-Policy": content_security_policy(sources),
            "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer"}


def _read_static() -> dict[str, bytes]:
    folder = resources.files(__package__).joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in STATIC_TYPES}


_STATIC = _read_static()


async def get_static(request: web.Request) -> web.Response:
    """A script or the style sheet of the pages."""
    name = request.match_info["name"]
    if name not in _STATIC:
        raise ApiError(404, "not-found", f"no file {name!r}")
    return web.Response(body=_STATIC[name], content_type=STATIC_TYPES[name],
                        charset="utf-8", headers={**security_headers(),
                                                  "Cache-Control": "public, max-age=300"})


STATIC_OPERATION = Operation(
    "GET", "/web/{name}", get_static, "A script or the style sheet of the pages", TAG,
    {200: Reply("the file", {"type": "string"}, "text/javascript",
                also={"text/css": {"type": "string"}})},
    params=(Param("name", "path", string(64, enum=sorted(STATIC_TYPES))),),
    errors={404: ("not-found",)})


_STATIC_KEY = web.AppKey("web_static_mounted", bool)


def mount_static(app: web.Application) -> None:
    """``GET /web/{name}``, once whichever pages ask for it."""
    if not app.get(_STATIC_KEY):
        app[_STATIC_KEY] = True
        add_operations(app, (STATIC_OPERATION,))
