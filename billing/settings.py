"""``[billing]`` of the callback site: cards through Stripe, postpaid merchants, dunning.

One Stripe account for the site (``[billing.stripe]``): the site's operator collects for
its merchants, and every PaymentIntent, Customer and SetupIntent names the merchant and
account in its metadata. Merchants with Stripe accounts of their own (Connect, or a key
per merchant) are not supported. Without ``[billing.stripe]`` the card routes, the
webhook and the periodic job are not mounted, and no merchant can be postpaid::

    [billing]
    postpaid_merchants = ["acme"]     # their customers pay after the consultation
    max_unpaid_charges = 1            # a new consultation is refused at this many unpaid
    retry_after_s = [3600, 86400, 259200]   # dunning: the n-th retry after the n-th failure
    every_s = 60                      # the periodic job: due retries and reconciles
    reconcile_after_s = 300           # a Stripe call left unanswered this long is looked up
    card_page_url = "https://pay.example.jp/card/{token}"   # the link sent to a customer
    card_link_valid_s = 604800        # the card page refuses a link older than this (410)
    topup_page_url = "https://pay.example.jp/topup/{token}"   # a top-up link sent
    customer_leg_wait_s = 600         # a billing record waits this long for the customer
                                      # leg's CDR, then goes without its cost

    [billing.stripe]
    api_key = "sk_live_…"             # CALLBACK__BILLING__STRIPE__API_KEY overrides it
    webhook_secret = "whsec_…"        # the webhook endpoint's signing secret
    publishable_key = "pk_live_…"     # handed to the card page
    api_base = "http://127.0.0.1:8420"   # tests: localstripe
    js_url = "https://js.stripe.com/v3/"   # Stripe.js for the card page (tests: localstripe's
                                           # fake at http://127.0.0.1:8420/js.stripe.com/v3/)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.config import Section

if TYPE_CHECKING:
    import stripe

_URL = r"https?://[^\s]+"
#: unpaid postpaid charges allowed before a new consultation is refused
MAX_UNPAID_CHARGES = 1
#: the default dunning schedule: one hour, one day and three days after each failure
RETRY_AFTER_S = (3600, 86400, 259200)
#: Stripe.js, which the card page loads
STRIPE_JS_URL = "https://js.stripe.com/v3/"
#: how long a card page's link is good for: a week
CARD_LINK_VALID_S = 7 * 86400
#: how long a billing record waits for its customer leg's CDR before it goes without
CUSTOMER_LEG_WAIT_S = 600


@dataclass(frozen=True, slots=True)
class StripeSettings:
    api_key: str
    webhook_secret: str | None = None
    publishable_key: str | None = None
    #: another API server than Stripe's (localstripe in tests)
    api_base: str | None = None
    #: Stripe.js for the card page (tests: localstripe's own fake of it)
    js_url: str = STRIPE_JS_URL

    def client(self) -> stripe.StripeClient:
        import stripe

        if self.api_base is None:
            return stripe.StripeClient(self.api_key, max_network_retries=2)
        return stripe.StripeClient(self.api_key, base_addresses={"api": self.api_base},
                                   max_network_retries=0)


def _page_url(s: Section, key: str) -> str | None:
    page = s.opt_str(key)
    if page is not None and (not re.fullmatch(_URL, page) or "{token}" not in page):
        raise s.error(key, "expected an http(s) URL with {token}")
    return page


@dataclass(frozen=True, slots=True)
class BillingSettings:
    stripe: StripeSettings | None = None
    postpaid_merchants: frozenset[str] = frozenset()
    max_unpaid_charges: int = MAX_UNPAID_CHARGES
    retry_after_s: tuple[int, ...] = RETRY_AFTER_S
    every_s: int = 60
    reconcile_after_s: int = 300
    card_page_url: str | None = None
    card_link_valid_s: int = CARD_LINK_VALID_S
    topup_page_url: str | None = None
    customer_leg_wait_s: int = CUSTOMER_LEG_WAIT_S

    @classmethod
    def parse(cls, s: Section, merchant_ids: Sequence[str]) -> BillingSettings:
        stripe = None
        if s.has("stripe"):
            t = s.section("stripe")
            stripe = StripeSettings(
                api_key=t.str("api_key", pattern=r"(sk|rk)_(test|live)_[0-9A-Za-z_]+"),
                webhook_secret=(t.str("webhook_secret", pattern=r"whsec_[0-9A-Za-z_]+")
                                if t.opt_str("webhook_secret") else None),
                publishable_key=(t.str("publishable_key", pattern=r"pk_(test|live)_\w+")
                                 if t.opt_str("publishable_key") else None),
                api_base=(t.str("api_base", pattern=_URL).rstrip("/")
                          if t.opt_str("api_base") else None),
                js_url=t.str("js_url", STRIPE_JS_URL, pattern=_URL))
        postpaid = s.str_list("postpaid_merchants")
        for name in postpaid:
            if name not in merchant_ids:
                raise s.error("postpaid_merchants", f"no [[merchants]] id {name!r}")
        if postpaid and stripe is None:
            raise s.error("postpaid_merchants", "postpaid needs [billing.stripe] (the card "
                                                "on file is charged through Stripe)")
        retries = s.int_list("retry_after_s", RETRY_AFTER_S)
        if len(retries) > 20 or any(not 60 <= r <= 90 * 86400 for r in retries):
            raise s.error("retry_after_s", "expected at most 20 delays of 60..7776000 s")
        page, topup_page = _page_url(s, "card_page_url"), _page_url(s, "topup_page_url")
        return cls(stripe=stripe, postpaid_merchants=frozenset(postpaid),
                   max_unpaid_charges=s.int("max_unpaid_charges", MAX_UNPAID_CHARGES,
                                            min=1, max=100),
                   retry_after_s=retries, every_s=s.int("every_s", 60, min=1, max=86400),
                   reconcile_after_s=s.int("reconcile_after_s", 300, min=60, max=86400),
                   card_page_url=page, topup_page_url=topup_page,
                   card_link_valid_s=s.int("card_link_valid_s", CARD_LINK_VALID_S, min=60,
                                           max=90 * 86400),
                   customer_leg_wait_s=s.int("customer_leg_wait_s", CUSTOMER_LEG_WAIT_S,
                                             min=1, max=7 * 86400))
