"""Mounting the card page, the top-up page and their static files (the advisor's page:
:func:`web.advisor_page.install`, which needs no Stripe)."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from shared.openapi import add_operations
from web.card_form import MERCHANTS_KEY
from web.card_page import CARD_OPERATION
from web.render import mount_static
from web.topup_page import TOPUP_OPERATION


def install(app: web.Application, merchant_names: Mapping[str, str]) -> None:
    """The card and top-up pages, on an app with the billing card routes
    (:func:`billing.card_http.install`, :func:`billing.topup_link_http.install`);
    ``merchant_names``: id → the name a page shows."""
    app[MERCHANTS_KEY] = dict(merchant_names)
    add_operations(app, (CARD_OPERATION, TOPUP_OPERATION))
    mount_static(app)
