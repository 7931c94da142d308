"""Prepaid top-ups by a card the customer types into the top-up page (``GET
/topup/{token}``, :mod:`web.topup_page`).

A top-up link is a card registration (:meth:`billing.cards.Cards.register`: a SetupIntent
and a link token) for an amount (table ``billing_topup_links``; migration 0009). The page
confirms the SetupIntent with Stripe.js; the site then learns from Stripe itself that it
succeeded (:meth:`TopUpLinks.confirm` retrieves it; the ``setup_intent.succeeded`` webhook
says it), puts the card on file and charges the amount to it once
(:meth:`TopUpLinks.charge`): the top-up (:class:`billing.card_topups.CardTopUps`) is
requested under the link's row lock, so a second caller (the webhook and the page at once)
finds it instead of making another, and ``CardTopUps`` charges it once and credits the
ledger only with the PaymentIntent Stripe says succeeded. The browser's word is never
taken: the page only asks the site to look.
"""

from __future__ import annotations

from dataclasses import dataclass

from billing.card_topups import CardTopUps, Pending, Result
from billing.cards import CardError, Cards, Registration
from billing.ledger import MAX_AMOUNT_YEN


@dataclass(frozen=True, slots=True)
class TopUpLink:
    registration: Registration
    amount_yen: int
    #: the top-up the link made, once its card is on file
    topup_id: int | None
    #: its outcome (None: not charged yet, or Stripe's answer not known yet)
    result: Result | None


class TopUpLinks:
    def __init__(self, cards: Cards, topups: CardTopUps) -> None:
        self.cards = cards
        self.topups = topups
        self.pool = cards.pool

    async def create(self, merchant_id: str, account: str, amount_yen: int, *, by: str
                     ) -> TopUpLink:
        """A link for a top-up of ``amount_yen`` by a card typed into the page."""
        if type(amount_yen) is not int or not 0 < amount_yen <= MAX_AMOUNT_YEN:
            raise ValueError(f"amount_yen: expected an integer 1..{MAX_AMOUNT_YEN}")
        reg = await self.cards.register(merchant_id, account, by=by)
        await self.pool.execute("INSERT INTO billing_topup_links (registration_id, amount_yen)"
                                " VALUES ($1, $2)", reg.id, amount_yen)
        return TopUpLink(reg, amount_yen, None, None)

    async def by_token(self, token: str) -> TopUpLink:
        """The link and its top-up's outcome; 404 ``not-found`` for a token that is no
        top-up link."""
        return await self._link(await self.cards.by_token(token))

    async def get(self, merchant_id: str, registration_id: int) -> TopUpLink:
        """The merchant's link ``registration_id``; 404 ``not-found`` otherwise."""
        return await self._link(await self.cards.get(merchant_id, registration_id))

    async def _link(self, reg: Registration) -> TopUpLink:
        row = await self.pool.fetchrow(
            "SELECT l.amount_yen, c.topup_id FROM billing_topup_links l "
            "LEFT JOIN billing_topup_link_charges c USING (registration_id) "
            "WHERE l.registration_id = $1", reg.id)
        if row is None:
            raise CardError(404, "not-found", "no top-up with this link")
        result = None
        if row["topup_id"] is not None:
            _, result = await self.topups.get(reg.merchant_id, row["topup_id"])
        return TopUpLink(reg, row["amount_yen"], row["topup_id"], result)

    async def confirm(self, token: str) -> TopUpLink:
        """Ask Stripe whether the link's SetupIntent succeeded (409 ``setup-not-succeeded``
        if not), then charge the amount once."""
        link = await self.by_token(token)
        reg = await self.cards.confirm(link.registration.merchant_id, link.registration.id)
        charged = await self.charge(reg)
        assert charged is not None
        return charged

    async def charge_due(self) -> list[TopUpLink]:
        """Charge every link whose card is on file and whose top-up was never requested
        (the process stopped between the two): the periodic job's part."""
        rows = await self.pool.fetch(
            "SELECT l.registration_id FROM billing_topup_links l "
            "JOIN billing_cards c USING (registration_id) "
            "LEFT JOIN billing_topup_link_charges t USING (registration_id) "
            "WHERE t.registration_id IS NULL ORDER BY l.registration_id")
        charged = []
        for row in rows:
            reg = await self.cards.by_id(row["registration_id"])
            link = await self.charge(reg)
            if link is not None:
                charged.append(link)
        return charged

    async def charge(self, reg: Registration) -> TopUpLink | None:
        """The amount of the link ``reg`` is (None: it is none) charged to its card on file,
        once; the outcome None while Stripe's answer is not known (the periodic reconcile
        of top-ups finishes it)."""
        if reg.payment_method is None:
            raise CardError(409, "setup-not-succeeded", "the card is not on file yet")
        async with self.pool.acquire() as conn, conn.transaction():
            amount = await conn.fetchval("SELECT amount_yen FROM billing_topup_links WHERE "
                                         "registration_id = $1 FOR UPDATE", reg.id)
            if amount is None:
                return None
            topup_id = await conn.fetchval("SELECT topup_id FROM billing_topup_link_charges "
                                           "WHERE registration_id = $1", reg.id)
            if topup_id is None:
                topup = await self.topups.request(
                    reg.merchant_id, reg.account, amount, customer=reg.customer,
                    payment_method=reg.payment_method, by=f"top-up link {reg.id}", conn=conn)
                topup_id = topup.id
                await conn.execute("INSERT INTO billing_topup_link_charges (registration_id, "
                                   "topup_id) VALUES ($1, $2)", reg.id, topup_id)
        try:
            result: Result | None = await self.topups.charge(topup_id)
        except Pending:
            result = None
        return TopUpLink(reg, amount, topup_id, result)
