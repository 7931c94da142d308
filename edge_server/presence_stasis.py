"""The ARI adapter of an advisor's presence call: runs :mod:`edge_server.presence_flow`.

:class:`edge_server.stasis.StasisApp` starts a :class:`PresenceSession` instead of a
customer's call session when the dialled number is a merchant's presence number. The
session asks the call-back site through a :class:`PresenceAsker`
(:class:`LinkPresence` over the signed link; a fake in unit tests) while the guard
timer runs, plays the announcement as early media and rejects the call: it is never
answered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Protocol

from edge_server import presence_flow as pf
from edge_server.channel import AriGateway, ChannelSession
from edge_server.flow_messages import (
    CancelTimer,
    Hangup,
    Log,
    Play,
    StartTimer,
    edge_call_id_for,
)
from edge_server.metrics import edge as edge_metrics
from shared import ari, logs
from shared.link import LinkClient, LinkError, LinkRejected

log = logging.getLogger("edge.presence")

#: the call-back site's route (``advisors.phone.PRESENCE_PATH``) and the link kind
#: (``[peer.policy] presence = ...`` picks its routes)
PRESENCE_PATH = "/v1/link/presence"
LINK_KIND = "presence"


class PresenceAsker(Protocol):
    """Sets an advisor's presence at the call-back site and says how it went."""

    async def ask(self, cmd: pf.AskPresence
                  ) -> pf.PresenceAnswered | pf.PresenceUnavailable: ...


class LinkPresence:
    """:class:`PresenceAsker` over the signed link: ``POST /v1/link/presence``.

    The request goes by the link's policy for kind ``presence`` (by default the
    primary route, then the backup), each route given ``ask_s`` divided among the
    routes, so the answer comes within the flow's guard. A refusal (4xx), a busy peer
    or no route answering is :class:`~edge_server.presence_flow.PresenceUnavailable`.
    """

    def __init__(self, client: LinkClient, ask_s: float) -> None:
        self.client = client
        self.ask_s = ask_s

    async def ask(self, cmd: pf.AskPresence) -> pf.PresenceAnswered | pf.PresenceUnavailable:
        body = json.dumps({
            "merchant_id": cmd.merchant_id, "edge_call_id": cmd.edge_call_id,
            "presence": cmd.wanted.value,
            "caller": None if cmd.caller is None else str(cmd.caller),
            "caller_user": cmd.caller_user}).encode()
        per_route = self.ask_s / max(1, len(self.client.ordered_routes(LINK_KIND)))
        try:
            delivery = await self.client.post(PRESENCE_PATH, body, str(uuid.uuid4()),
                                              kind=LINK_KIND, timeout_s=per_route)
        except LinkRejected as exc:
            return pf.PresenceUnavailable(f"refused: HTTP {exc.status} {exc.body}"[:300])
        except LinkError as exc:
            return pf.PresenceUnavailable(f"{type(exc).__name__}: {exc}"[:300])
        answer = delivery.body if isinstance(delivery.body, dict) else {}
        try:
            outcome = pf.PresenceOutcome(str(answer.get("outcome")))
        except ValueError:
            return pf.PresenceUnavailable(f"unexpected answer {answer}"[:300])
        return pf.PresenceAnswered(outcome, f"advisor {answer.get('advisor_id')}, "
                                            f"{answer.get('state')} (via {delivery.route})")


class PresenceSession(ChannelSession[pf.Event]):
    """One advisor's call to a presence number."""

    def __init__(self, gateway: AriGateway, asker: PresenceAsker, line: pf.PresenceLine,
                 timings: pf.PresenceTimings, start: ari.StasisStart,
                 ari_queue: asyncio.Queue[ari.Event], *, sip_user: str | None = None
                 ) -> None:
        super().__init__(gateway, start, ari_queue)
        self.asker = asker
        self.line = line
        self.timings = timings
        #: the caller is the advisor's softphone registered at the edge: this is who
        #: they are (their endpoint's user), whatever their phone put in From
        self.sip_user = sip_user
        self.state: pf.State = pf.Idle()

    async def run(self) -> None:
        with logs.bind(call_id=edge_call_id_for(self.channel_id),
                       merchant=self.line.merchant_id):
            forwarder = self._start_forwarding()
            try:
                if self.sip_user is None:
                    pres, asserted = await self._caller_headers()
                    caller = self.channel.caller_number
                else:
                    pres, asserted, caller = None, None, self.sip_user
                await self.feed(pf.PresenceCallArrived(
                    self.channel_id, self.line, caller, pres,
                    asserted_raw=asserted, timings=self.timings))
                while not pf.is_terminal(self.state):
                    await self.feed(await self.inbox.get())
            except Exception:
                log.exception("presence call crashed in %s; hanging up",
                              type(self.state).__name__)
                await self._safe_hangup("congestion")
                raise
            finally:
                self._stop(forwarder)
            if isinstance(self.state, pf.Done):
                edge_metrics().presence_calls.labels(self.line.merchant_id,
                                                     self.state.outcome.value).inc()

    async def feed(self, event: pf.Event) -> None:
        before = self.state
        self.state, commands = pf.transition(self.state, event)
        log.info("%s --%s--> %s", type(before).__name__, type(event).__name__,
                 type(self.state).__name__)
        for command in commands:
            await self._execute(command)

    async def _execute(self, command: pf.Command) -> None:
        match command:
            case pf.AskPresence():
                self._spawn(self._ask(command), "presence")
            case Play(media=media, language=language):
                await self._play(media, language)
            case Hangup(reason=reason):
                await self._safe_hangup(reason.value)
            case StartTimer(name=name, seconds=seconds):
                self._start_timer(name, seconds)
            case CancelTimer(name=name):
                self._cancel_timer(name)
            case Log(code=code, detail=detail, warning=warning):
                log.log(logging.WARNING if warning else logging.INFO, "%s %s", code, detail)

    async def _ask(self, cmd: pf.AskPresence) -> None:
        try:
            result = await self.asker.ask(cmd)
        except Exception as exc:  # a bug must not leave the advisor without an answer
            log.exception("presence request failed")
            result = pf.PresenceUnavailable(f"{type(exc).__name__}: {exc}"[:300])
        self.inbox.put_nowait(result)
