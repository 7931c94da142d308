"""Advisors' SIP endpoints pushed to the edge Asterisk over ARI.

The edge Asterisk backs res_pjsip's ``endpoint``, ``auth`` and ``aor`` with the
``memory`` wizard beside pjsip.conf (``deploy/asterisk/edge/sorcery.conf``), so
:class:`EndpointPusher` creates, changes and removes each advisor's endpoint with ARI
push configuration (``PUT``/``DELETE /ari/asterisk/config/dynamic/res_pjsip/...``):
no restart, no reload, no config file edited. Memory is empty after Asterisk
restarts, so every endpoint in :mod:`edge_server.sip_endpoints` is pushed again on
each ARI ``Connected`` (first connect and reconnects); a change made by any edge
server arrives on the NOTIFY channel ``sip_endpoints`` and is pushed by every one of
them (each drives its own Asterisk). A push that fails (Asterisk or the database
down) is tried again after ``retry_s``.

An advisor endpoint's context is ``from-advisor`` (it calls only presence numbers), it is
identified by its user name only and must answer the digest challenge; the edge
dialplan rings only endpoints of that context for the trunk (``[from-callback-site]``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from edge_server.sip_endpoints import CHANNEL, SipEndpoint, SipEndpoints
from shared import ari
from shared.db import CONNECTION_ERRORS, listening
from shared.waits import within

log = logging.getLogger("edge.sip")

CONFIG_CLASS = "res_pjsip"
#: the dialplan context of advisor endpoints: the trunk's route checks it
ADVISOR_CONTEXT = "from-advisor"
#: the pjsip.conf transport advisors' phones register over
TRANSPORT = "transport-udp"


@dataclass(frozen=True, slots=True)
class SipEndpointSettings:
    """``[edge.sip_endpoints]``: the digest realm of new passwords, and how often
    Asterisk sends each registered phone an OPTIONS (0: never)."""

    realm: str = "cbgw"
    qualify_s: int = 0


class ConfigGateway(Protocol):
    """The part of ``shared.ari.AriClient`` that pushes configuration."""

    async def put_config(self, config_class: str, object_type: str, object_id: str,
                         fields: Sequence[tuple[str, str]]) -> None: ...
    async def delete_config(self, config_class: str, object_type: str, object_id: str
                            ) -> bool: ...
    async def list_endpoints(self, technology: str) -> list[ari.Endpoint]: ...


def objects(endpoint: SipEndpoint, settings: SipEndpointSettings
            ) -> list[tuple[str, list[tuple[str, str]]]]:
    """The sorcery objects of one advisor endpoint, in the order they are pushed (the
    endpoint names its auth and aor, so they go first)."""
    name = endpoint.endpoint_id
    return [
        ("auth", [("auth_type", "md5"), ("username", name), ("realm", endpoint.realm),
                  ("md5_cred", endpoint.ha1)]),
        ("aor", [("max_contacts", "1"), ("remove_existing", "yes"),
                 ("qualify_frequency", str(settings.qualify_s))]),
        ("endpoint", [("context", ADVISOR_CONTEXT), ("transport", TRANSPORT),
                      ("aors", name), ("auth", name), ("identify_by", "username"),
                      ("allow", "!all,ulaw,alaw"), ("direct_media", "no"),
                      ("send_connected_line", "no"), ("dtmf_mode", "rfc4733"),
                      ("rtp_symmetric", "yes"), ("force_rport", "yes"),
                      ("rewrite_contact", "yes"), ("timers", "no"),
                      ("trust_id_outbound", "yes"), ("send_pai", "yes")]),
    ]


class EndpointPusher:
    def __init__(self, gateway: ConfigGateway, endpoints: SipEndpoints,
                 settings: SipEndpointSettings, *, retry_s: float = 5.0,
                 sweep_s: float = 60.0) -> None:
        self.gateway = gateway
        self.endpoints = endpoints
        self.settings = settings
        self.retry_s = retry_s
        self.sweep_s = sweep_s
        self._everything = False
        self._changed: set[str] = set()
        self._wake = asyncio.Event()

    def observe(self, event: ari.Event) -> None:
        """An ARI router observer: on every ``Connected``, push every endpoint."""
        if isinstance(event, ari.Connected):
            self.push_everything()

    def push_everything(self) -> None:
        self._everything = True
        self._wake.set()

    def changed(self, endpoint_id: str) -> None:
        self._changed.add(endpoint_id)
        self._wake.set()

    async def push(self, endpoint: SipEndpoint) -> None:
        for object_type, fields in objects(endpoint, self.settings):
            await self.gateway.put_config(CONFIG_CLASS, object_type, endpoint.endpoint_id,
                                          fields)

    async def remove(self, endpoint_id: str) -> None:
        for object_type in ("endpoint", "aor", "auth"):
            await self.gateway.delete_config(CONFIG_CLASS, object_type, endpoint_id)

    async def sync(self, endpoint_id: str) -> None:
        """Make Asterisk hold what the table says of one endpoint."""
        found = await self.endpoints.get(endpoint_id)
        if found is None:
            await self.remove(endpoint_id)
            log.info("SIP endpoint %s removed", endpoint_id)
        else:
            await self.push(found)
            log.info("SIP endpoint %s pushed", endpoint_id)

    async def push_all(self) -> int:
        """Push every endpoint of the table, and remove from Asterisk the advisor
        endpoints it holds that the table no longer has (deleted while this server was
        not listening). Advisor endpoints are the ones named with a ``.``: pjsip.conf's
        never are."""
        every = await self.endpoints.all()
        for endpoint in every:
            await self.push(endpoint)
        held = {e.resource for e in await self.gateway.list_endpoints("PJSIP")
                if "." in e.resource}
        stale = sorted(held - {e.endpoint_id for e in every})
        for endpoint_id in stale:
            await self.remove(endpoint_id)
        log.info("pushed %d advisor SIP endpoint(s) to Asterisk%s", len(every),
                 f", removed {len(stale)} deleted meanwhile: {', '.join(stale)}"
                 if stale else "")
        return len(every)

    async def run(self) -> None:
        """Push what is asked, for ever; a failed push is tried again after ``retry_s``."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            everything, self._everything = self._everything, False
            changed, self._changed = self._changed, set()
            try:
                if everything:
                    await self.push_all()
                else:
                    for endpoint_id in sorted(changed):
                        await self.sync(endpoint_id)
            except (ari.AriError, asyncpg.PostgresError, *CONNECTION_ERRORS) as exc:
                log.warning("SIP endpoints not pushed (%s); again in %.0f s", exc, self.retry_s)
                self._everything |= everything
                self._changed |= changed
                await asyncio.sleep(self.retry_s)
                self._wake.set()

    async def listen(self, db_url: str) -> None:
        """Follow the changes every edge server makes (NOTIFY ``sip_endpoints``). A
        listening connection that is lost carries no notification, so every ``sweep_s``
        the table's fingerprint is compared with the one last seen: a change that came
        without its notification has everything pushed again (as after a reconnect)."""
        while True:
            try:
                async with listening(db_url, CHANNEL) as changes:
                    self.push_everything()
                    seen = await self.endpoints.fingerprint()
                    while True:
                        endpoint_id = await within(changes.get(), self.sweep_s)
                        if endpoint_id is None:
                            now = await self.endpoints.fingerprint()
                            if now != seen:
                                log.warning("SIP endpoints changed without a notification: "
                                            "pushing them all")
                                self.push_everything()
                            seen = now
                            continue
                        self.changed(endpoint_id)
                        seen = await self.endpoints.fingerprint()
            except (OSError, asyncpg.PostgresError, *CONNECTION_ERRORS) as exc:
                log.warning("listening for SIP endpoint changes failed (%s); again in %.0f s",
                            exc, self.retry_s)
            await asyncio.sleep(self.retry_s)

    async def serve(self, db_url: str) -> None:
        """:meth:`run` and :meth:`listen` together."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.run())
            tasks.create_task(self.listen(db_url))

