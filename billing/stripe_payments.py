"""Off-session card payments through Stripe, shared by card top-ups
(:mod:`billing.card_topups`) and postpaid charges (:mod:`billing.postpaid`).

A payment carries a key of ours in its PaymentIntent's metadata (and as the request's
``Idempotency-Key``); :func:`find_intent` looks the PaymentIntent up by it, so a payment
whose answer was lost in a crash is found instead of made again. :func:`outcome_of`
reads what a PaymentIntent says as one of our outcomes. The calls block: run them in a
thread. Stripe's answer being unknown (network error, 429, 5xx, still processing) is
:class:`Pending`. Amounts are yen, a zero-decimal currency for Stripe.
"""

from __future__ import annotations

from typing import Any, Literal

import stripe

Outcome = Literal["succeeded", "failed", "abandoned"]
_FAILED_STATUSES = ("requires_payment_method", "canceled")


class Pending(Exception):
    """Stripe's answer is not known yet: the payment stays pending for a reconcile."""


def find_intent(client: stripe.StripeClient, metadata_key: str, key: str) -> Any:
    """The PaymentIntent whose metadata ``metadata_key`` is ``key``, or None.

    It lists the PaymentIntents page by page (localstripe has neither the search API nor
    a customer filter on that list)."""
    try:
        listed = client.v1.payment_intents.list(params={"limit": 100})
        for intent in listed.auto_paging_iter():
            if metadata_value(intent, metadata_key) == key:
                return intent
    except stripe.StripeError as exc:
        raise Pending(f"looking the PaymentIntent up failed: {exc}") from exc
    return None


def metadata_value(stripe_object: Any, name: str) -> str | None:
    """The object's metadata ``name``, or None."""
    metadata = stripe_object.metadata
    return str(metadata[name]) if metadata and name in metadata else None


def create_intent(client: stripe.StripeClient, *, amount_yen: int, customer: str,
                  payment_method: str, metadata_key: str, key: str,
                  metadata: dict[str, str]) -> tuple[Any, str]:
    """A confirmed off-session PaymentIntent and no failure; a declined card: the
    PaymentIntent it left (or none) and the decline code; a request Stripe refuses (4xx):
    none and why. A network error, 429 or 5xx: :class:`Pending`."""
    try:
        intent = client.v1.payment_intents.create(
            params={"amount": amount_yen, "currency": "jpy", "customer": customer,
                    "payment_method": payment_method, "off_session": True, "confirm": True,
                    "metadata": {metadata_key: key, **metadata}},
            options={"idempotency_key": key})
    except stripe.CardError as exc:
        return find_intent(client, metadata_key, key), str(exc.code or "card_error")
    except (stripe.InvalidRequestError, stripe.AuthenticationError,
            stripe.PermissionError) as exc:     # refused as asked: nothing was created
        return None, f"{type(exc).__name__}: {exc.user_message or exc}"[:500]
    except stripe.StripeError as exc:
        raise Pending(f"creating the PaymentIntent failed: {exc}") from exc
    return intent, ""


def outcome_of(intent: Any, failure: str, what: str) -> tuple[Outcome, str | None, str]:
    """``(outcome, PaymentIntent id, failure)`` of ``intent`` (None: no PaymentIntent,
    ``failed`` with a failure, else ``abandoned``); still in progress: :class:`Pending`."""
    if intent is None:
        return ("failed" if failure else "abandoned"), None, failure
    pi_id = str(intent.id)
    if intent.status == "succeeded":
        return "succeeded", pi_id, ""
    if intent.status in _FAILED_STATUSES:
        error = intent.last_payment_error
        return "failed", pi_id, failure or (str(error.code) if error else str(intent.status))
    raise Pending(f"{what}: PaymentIntent {pi_id} is {intent.status}")
