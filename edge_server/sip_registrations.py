"""Which advisors' softphones are registered, read from this edge's Asterisk.

Every ``every_s`` the edge server reads the state of the advisor endpoints its Asterisk
holds (ARI ``GET /endpoints/PJSIP``: an endpoint is ``online`` while a registered
contact is there) and records it under the Asterisk's system name
(:meth:`edge_server.sip_endpoints.SipEndpoints.registrations`), which tells the callback
site of each endpoint registered now at some edge Asterisk and not before, or the other
way round. Reading the states (rather than following events) needs no subscription and
misses nothing across reconnects: an Asterisk restarted (its pushed endpoints gone) reads
as none registered there. A failed read or write is tried again at the next round.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import asyncpg

from edge_server.sip_endpoints import SipEndpoints
from shared import ari
from shared.db import CONNECTION_ERRORS

log = logging.getLogger("edge.sip")


class EndpointStates(Protocol):
    """The part of ``shared.ari.AriClient`` this reads."""

    async def system_name(self) -> str | None: ...
    async def list_endpoints(self, technology: str) -> list[ari.Endpoint]: ...


async def online_advisors(gateway: EndpointStates) -> set[str]:
    """The advisor endpoints (named with a ``.``: pjsip.conf's never are) with a
    registered contact at this Asterisk."""
    return {e.resource for e in await gateway.list_endpoints("PJSIP")
            if "." in e.resource and e.state == "online"}


class RegistrationWatch:
    def __init__(self, gateway: EndpointStates, endpoints: SipEndpoints, *,
                 every_s: float = 2.0) -> None:
        self.gateway = gateway
        self.endpoints = endpoints
        self.every_s = every_s
        self.asterisk: str | None = None

    async def round(self) -> list[str]:
        """Read and record once; the endpoints whose state the callback site is told."""
        if self.asterisk is None:
            self.asterisk = await self.gateway.system_name()
            if self.asterisk is None:
                raise ari.AriError("the Asterisk has no system name")
        changed = await self.endpoints.registrations(self.asterisk,
                                                     await online_advisors(self.gateway))
        if changed:
            log.info("SIP registrations changed at %s: %s", self.asterisk, ", ".join(changed))
        return changed

    async def run(self) -> None:
        while True:
            try:
                await self.round()
            except (ari.AriError, asyncpg.PostgresError, *CONNECTION_ERRORS) as exc:
                log.warning("SIP registrations not read (%s); again in %.0f s", exc,
                            self.every_s)
            await asyncio.sleep(self.every_s)
