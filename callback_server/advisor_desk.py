"""The advisors a consultation reaches, in PostgreSQL: the adapter of the consult machine's
database side (:mod:`callback_server.consult`).

:class:`AdvisorDesk` resolves the IVR's choice (a 4-digit code, or a group's name) to
the members an assignment offers the call to, runs the assignment
(``advisors.live.Presences``: the presence rows locked, the machines, the event rows and
their NOTIFY in one transaction), finds the ways to ring an advisor (a PSTN number
ranked by ``callback_server.routing``, cheapest first; a SIP user through the edge
trunk, :func:`sip_routes`) and applies ``ConsultationEnded`` when a consultation is over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, assert_never

import asyncpg

from advisors import assignment as am
from advisors import presence as pm
from advisors.errors import NotFound
from advisors.live import Presences
from advisors.model import Advisor, FirstParty, PstnContact, SipContact, State
from advisors.store import AdvisorStore
from callback_server import ivr
from callback_server.consult import Op
from callback_server.dialer_messages import EDGE_TRUNK, Route, edge_routes
from shared.phone import E164


@dataclass(frozen=True, slots=True)
class Chosen:
    """Who the customer's choice reaches, how long each of them is rung, the price per
    minute billing admits and reserves at (a group: its own price, else its dearest
    member's; :meth:`advisors.model.Group.price`), the price each member is rated at once
    they answer (a group without a price of its own: their own; :meth:`price_of`), the
    merchant's party rung first in a web click-to-call, and how often a queued customer
    hears their place (the merchant's queue_announce_s)."""

    members: frozenset[int]
    ring_timeout_s: int
    group_id: int | None = None
    advisor_id: int | None = None
    price_per_minute_yen: int = 0
    click_to_call_first: FirstParty = FirstParty.CUSTOMER
    queue_announce_s: int = 0
    #: (advisor, their price per minute) of a group priced by whoever answers
    member_prices: tuple[tuple[int, int], ...] = ()

    def price_of(self, advisor_id: int | None) -> int:
        """The price a consultation answered by ``advisor_id`` is rated at: their own in
        a group priced by its members (never above the reserved price), else the price
        admitted and reserved at."""
        own = dict(self.member_prices).get(advisor_id) if advisor_id is not None else None
        return self.price_per_minute_yen if own is None \
            else min(own, self.price_per_minute_yen)


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The choice reaches nobody now: ``unknown`` (no such code or group), ``talking``,
    ``offline`` or ``away`` (the reasons the IVR says)."""

    reason: str


class RouteSource(Protocol):
    async def routes(self, number: E164, at: datetime) -> tuple[Route, ...]: ...


class AdvisorPort(Protocol):
    async def choose(self, merchant_id: str, *, code: str | None, group: str | None,
                     advisor_id: int | None = None) -> Chosen | Unavailable: ...
    async def listing(self, merchant_id: str, listing: str) -> tuple[ivr.Listed, ...]: ...
    async def assignment(self, merchant_id: str, op: Op, a: am.Assignment
                         ) -> tuple[am.Assignment, list[am.Command]]: ...
    async def contact(self, merchant_id: str, advisor_id: int, at: datetime
                      ) -> tuple[str, tuple[Route, ...]]: ...
    async def number_routes(self, number: E164, at: datetime) -> tuple[Route, ...]: ...
    async def ended(self, merchant_id: str, advisor_id: int, consultation_id: str,
                    at: datetime) -> None: ...
    async def ringing(self, merchant_id: str, consultation_id: str) -> list[int]: ...
    async def customer_id(self, merchant_id: str, number: E164) -> int | None: ...


def unavailable_reason(state: State) -> str:
    """What the IVR tells a customer whose advisor is in ``state`` (not taking calls)."""
    match state:
        case State.TALKING | State.RINGING | State.STANDBY:   # standby: all their lines busy
            return "talking"
        case State.OFFLINE:
            return "offline"
        case State.WORKING | State.BREAK | State.WRAP_UP:
            return "away"
        case _:
            assert_never(state)




def sip_routes(merchant_id: str, user: str, operator: str | None,
               trunks: tuple[str, ...] = (EDGE_TRUNK,)) -> tuple[Route, ...]:
    """How a SIP advisor is rung through the edge: the merchant's endpoint
    ``<merchant>.<user>`` at the edge (their softphone, registered there), or, when
    ``user`` is the merchant's ``operator`` extension, the edge's operator phone; over
    each edge trunk in order (the next when an edge Asterisk is down: a carrier fault)."""
    name = user if user == operator else f"{merchant_id}.{user}"
    return edge_routes(f"PJSIP/{name}@{{trunk}}", trunks)


def name_media(advisor: Advisor) -> tuple[str, ...]:
    """How an advisor is named aloud: their name prompt (a media URI, or a sound name),
    else the digits of their code."""
    prompt = advisor.name_prompt
    if not prompt:
        return (f"digits:{advisor.code}",)
    return (prompt if ":" in prompt else f"sound:{prompt}",)


class AdvisorDesk:
    def __init__(self, pool: asyncpg.Pool, routes: RouteSource,
                 operators: Mapping[str, str] | None = None,
                 edge_trunks: tuple[str, ...] = (EDGE_TRUNK,)) -> None:
        self.pool = pool
        self.presences = Presences(pool)
        self.store = AdvisorStore(pool)
        self.route_source = routes
        self.operators = operators or {}      # merchant -> its operator extension
        self.edge_trunks = edge_trunks        # [callback] edge_trunks, in order

    async def choose(self, merchant_id: str, *, code: str | None, group: str | None,
                     advisor_id: int | None = None) -> Chosen | Unavailable:
        """The members a choice reaches: the advisor of a code or chosen from a list
        (only while they can take a call), or a group's members."""
        rules = await self.store.rules(merchant_id)
        if code is not None or advisor_id is not None:
            found = await self._advisor(merchant_id, code, advisor_id)
            if found is None:
                return Unavailable("unknown")
            advisor, presence = found
            if not presence.takes_offer():
                return Unavailable(unavailable_reason(presence.state))
            return Chosen(frozenset({advisor.id}), rules.ring_timeout_s,
                          advisor_id=advisor.id,
                          price_per_minute_yen=advisor.price_per_minute_yen,
                          click_to_call_first=rules.click_to_call_first,
                          queue_announce_s=rules.queue_announce_s)
        group_id = await self.pool.fetchval(
            "SELECT id FROM advisor_groups WHERE merchant_id = $1 AND name = $2",
            merchant_id, group)
        if group_id is None:
            return Unavailable("unknown")
        try:
            members = await self.presences.members(merchant_id, group_id=group_id)
            chosen = await self.store.group(merchant_id, group_id)
        except NotFound:
            return Unavailable("unknown")
        prices = tuple((a.id, a.price_per_minute_yen)
                       for a, _ in await self.store.advisors(merchant_id) if a.id in members)
        return Chosen(members, rules.ring_timeout_s, group_id=group_id,
                      price_per_minute_yen=chosen.price(p for _, p in prices),
                      queue_announce_s=rules.queue_announce_s,
                      member_prices=() if chosen.price_per_minute_yen is not None else prices)

    async def _advisor(self, merchant_id: str, code: str | None, advisor_id: int | None
                       ) -> tuple[Advisor, pm.Presence] | None:
        if code is not None:
            by_code = await self.store.advisor_by_code(merchant_id, code)
            if by_code is None:
                return None
            advisor_id = by_code.id
        assert advisor_id is not None
        try:
            found = await self.store.advisor(merchant_id, advisor_id)
        except NotFound:
            return None
        return None if found[0].retired_at is not None else found

    async def listing(self, merchant_id: str, listing: str) -> tuple[ivr.Listed, ...]:
        """The advisors an IVR list reads (by id; the IVR reads them 9 a page):
        ``online`` those who can take a call now, ``all`` everyone, with why those who
        cannot."""
        listed = []
        for advisor, presence in await self.store.advisors(merchant_id):
            free = presence.takes_offer()
            if free or listing == "all":
                listed.append(ivr.Listed(advisor.id, name_media(advisor), None if free
                                         else unavailable_reason(presence.state)))
        return tuple(listed)

    async def assignment(self, merchant_id: str, op: Op, a: am.Assignment
                         ) -> tuple[am.Assignment, list[am.Command]]:
        match op:
            case Op.ASSIGN:
                return await self.presences.assign(merchant_id, a)
            case Op.RING_MISSED:
                return await self.presences.ring_missed(merchant_id, a)
            case Op.ANSWERED:
                return await self.presences.answered(merchant_id, a)
            case Op.CANCELLED:
                return await self.presences.cancelled(merchant_id, a)
            case _:
                assert_never(op)

    async def contact(self, merchant_id: str, advisor_id: int, at: datetime
                      ) -> tuple[str, tuple[Route, ...]]:
        advisor, _ = await self.store.advisor(merchant_id, advisor_id)
        match advisor.contact:
            case PstnContact(number=number):
                return str(number), await self.number_routes(number, at)
            case SipContact(user=user):
                return user, sip_routes(merchant_id, user, self.operators.get(merchant_id),
                                        self.edge_trunks)
            case _:
                assert_never(advisor.contact)

    async def number_routes(self, number: E164, at: datetime) -> tuple[Route, ...]:
        """The ways to a number, cheapest carrier first."""
        return await self.route_source.routes(number, at)

    async def ended(self, merchant_id: str, advisor_id: int, consultation_id: str,
                    at: datetime) -> None:
        await self.presences.apply(merchant_id, advisor_id,
                                   pm.ConsultationEnded(at, consultation_id))

    async def ringing(self, merchant_id: str, consultation_id: str) -> list[int]:
        return await self.presences.ringing(merchant_id, consultation_id)

    async def customer_id(self, merchant_id: str, number: E164) -> int | None:
        customer = await self.store.customer_by_number(merchant_id, number)
        return None if customer is None else customer.id
