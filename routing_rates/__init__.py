"""Carrier rate decks, least-cost routing and the call-back-or-not decision.

Public API (see docs/CONTRACTS.md, section "routing_rates service"):
:class:`RatingService`, :class:`DurationModel`, :data:`DEFAULT_DURATION`,
:func:`migrations`. Pure parts: ``tariff`` (billing arithmetic, periods),
``index`` (longest-prefix match), ``duration``, ``decision``, ``deckfile``.
I/O: ``store``, ``importer``, ``service``, ``cdr``, ``report``, ``http``, ``cli``.
"""

from __future__ import annotations

from routing_rates.decision import Decision, Dropped, RouteQuote
from routing_rates.duration import DEFAULT_DURATION, DurationModel
from routing_rates.service import DeckNotInForce, RatingService, UnknownTariff
from routing_rates.store import migrations

__all__ = ["DEFAULT_DURATION", "Decision", "DeckNotInForce", "Dropped", "DurationModel",
           "RatingService", "RouteQuote", "UnknownTariff", "migrations"]
