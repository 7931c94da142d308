"""The pages of the callback site, served by its aiohttp app.

``GET /advisor`` (:mod:`web.advisor_page`): the advisor's own page, signed in by a
one-time link. ``GET /operator`` (:mod:`web.operator_page`): the merchant's operators'
live board and controls, signed in by a one-time link. ``GET /m/{merchant}/advisors``
(:mod:`web.click_page`): the customer's click-to-call page. ``GET /card/{token}``
(:mod:`web.card_page`): the page behind a card registration's link, where a customer
types in the card Stripe.js confirms the SetupIntent with; the site puts the card on
file only from Stripe's own word (the ``setup_intent.succeeded`` webhook, or ``POST
/v1/billing/card-setup/{token}/confirm``, which asks Stripe). Pages are Japanese,
English with ``?lang=en`` or an English ``Accept-Language`` (:mod:`web.language`); each
is rendered with its strict headers by :mod:`web.render` (no inline script: the scripts
and the style sheet are the package's ``static/`` files, ``GET /web/{name}``).
"""
