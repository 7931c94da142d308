"""Billing of consultation lines paid by the minute (phone fortune telling, coaching).

Pure logic: :mod:`billing.rating` (a consultation's talk time and the merchant's terms →
the charge in yen, tax-inclusive, and the inverse for a prepaid balance) and
:mod:`billing.meter` (the billing clock of a prepaid consultation: reserve, extend, warn,
cut off, settle). Adapters:
:mod:`billing.ledger` (the prepaid ledger in PostgreSQL: append-only entries,
reservations held by live consultations), :mod:`billing.transfers` (bank transfers an
operator enters as deposits), :mod:`billing.card_topups` (card top-ups through Stripe,
recorded before the call and reconciled after a crash), :mod:`billing.cards` (a card on
file through a SetupIntent), :mod:`billing.postpaid` (consultations charged to it once,
dunning), :mod:`billing.admission` (may a customer start a consultation, for how long),
:mod:`billing.http` (deposits, balance and ledger over JSON), :mod:`billing.card_http`
(the card routes, Stripe's webhook, the periodic job; mounted with ``[billing.stripe]``,
:mod:`billing.settings`) and :mod:`billing.cli` (``python -m billing``).

Money is integer yen; no float anywhere in this package (a test reads the source).
This package imports only :mod:`shared` (and ``stripe``, in the modules that call it:
:mod:`billing.stripe_payments`, :mod:`billing.card_topups`, :mod:`billing.cards`,
:mod:`billing.postpaid`, :mod:`billing.card_http`).
"""
