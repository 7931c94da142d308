"""The ARI adapter: runs :mod:`edge_server.flow` for each inbound channel.

One :class:`CallSession` task per call (started by ``shared.ari.EventRouter``
on ``StasisStart``) owns an inbox of flow events: translated ARI events, timer
expiries and the results of slow commands (decision, store), which run as
child tasks so a guard timer can fire while they are in flight
(:class:`edge_server.channel.ChannelSession`). Commands are
executed in order against small Protocols (:class:`AriGateway`,
:class:`CallBackend`, :class:`Decider`), so tests drive a session with
in-process fakes (:mod:`edge_server.testing`). A call to a merchant's presence
number is an advisor's, not a customer's: it gets a
:class:`edge_server.presence_stasis.PresenceSession` instead.

On every ``Connected`` (first connect and reconnects)
:meth:`StasisApp.resync` lists the application's channels: a channel with no
live session is an orphan parked by a crash, so its held request (if any) is
released and the channel hung up; a live session whose channel vanished while
the websocket was down is told the caller hung up.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from edge_server import flow
from edge_server.channel import (
    PAI_VAR,
    PRESENTATION_VAR,
    AriGateway,
    ChannelSession,
    asserted_number,
)
from edge_server.flow_messages import (
    Answer,
    CallArrived,
    CancelRequest,
    CancelTimer,
    Command,
    ContinueDirect,
    Decided,
    DecisionUnavailable,
    Event,
    FlowTimings,
    Hangup,
    Log,
    MerchantSettings,
    Outcome,
    Play,
    RecordCall,
    ReleaseToCallback,
    RequestDecision,
    RequestStored,
    StartTimer,
    StoreFailed,
    StoreRequest,
    edge_call_id_for,
)
from edge_server.hours_prompts import ClosedPrompts
from edge_server.metrics import OUTCOME_CLASS, UNKNOWN_MERCHANT, child
from edge_server.metrics import edge as edge_metrics
from edge_server.presence_flow import PresenceLine, PresenceTimings
from edge_server.presence_stasis import PresenceAsker, PresenceSession
from edge_server.sip_endpoints import advisor_of_channel
from shared import ari, logs
from shared.language import Language
from shared.phone import E164, InvalidNumber, normalise

__all__ = ["EVENTS_USED", "PAI_VAR", "PRESENTATION_VAR", "AriGateway", "asserted_number"]

log = logging.getLogger("edge.stasis")

#: the ARI event types the edge reads (the router's calls, ``edge_server.channel``'s
#: translation): the application's event filter, so Asterisk sends no other. A call
#: brings three: its start, its announcement's end and its ``StasisEnd``; the
#: ``ChannelHangupRequest`` each hang-up sent before that one (and, rarely, a
#: ``ChannelDestroyed``) told the session nothing ``StasisEnd`` does not
EVENTS_USED = ari.event_types(ari.StasisStart, ari.StasisEnd, ari.PlaybackFinished)

#: the Stasis argument of calls placed by advisors' softphones (the dialplan's
#: ``[from-advisor]``): only their merchant's presence numbers are taken
ADVISOR_ARG = "advisor"
flow_log = logging.getLogger("edge.flow")


class CallBackend(Protocol):
    """Durable storage of calls and requests (``edge_server.store.CallStore``)."""

    async def store_request(self, cmd: StoreRequest, received_at: datetime) -> str: ...
    async def release(self, request_id: str, outcome: Outcome,
                      hungup_at: datetime | None = None) -> bool: ...
    async def cancel(self, cmd: CancelRequest) -> bool: ...
    async def record_call(self, cmd: RecordCall, received_at: datetime) -> None: ...
    async def held_for_channel_ids(self, channel_ids: Sequence[str]) -> list[str]: ...


class Decider(Protocol):
    """Call back or keep the call direct (``edge_server.decide``)."""

    async def decide(self, cmd: RequestDecision, at: datetime
                     ) -> Decided | DecisionUnavailable: ...


@functools.lru_cache(maxsize=1024)
def dialled_number(exten: str) -> E164 | None:
    """The dialled extension as E.164, or None if it is not a number. Remembered: the
    extensions dialled are the merchants' few numbers, each parsed by libphonenumber
    once instead of twice a call (the presence check, then the call's arrival)."""
    try:
        return normalise(exten)
    except InvalidNumber:
        return None


@dataclass(frozen=True, slots=True)
class MerchantDirectory:
    """Dialled number → the merchant's flow settings, or the presence line it is."""

    by_number: Mapping[E164, MerchantSettings]
    presence_lines: Mapping[E164, PresenceLine] = field(default_factory=dict)

    def resolve(self, exten: str) -> tuple[E164 | None, MerchantSettings | None]:
        dialed = dialled_number(exten)
        return dialed, None if dialed is None else self.by_number.get(dialed)

    def presence_line(self, exten: str) -> PresenceLine | None:
        dialed, _ = self.resolve(exten)
        return None if dialed is None else self.presence_lines.get(dialed)


@dataclass
class StasisDeps:
    ari: AriGateway
    store: CallBackend
    decider: Decider
    merchants: MerchantDirectory
    timings: FlowTimings = field(default_factory=FlowTimings)
    direct_context: str = "direct"
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    release_retries: int = 3
    resync_grace_s: float = 1.0
    #: the closed messages rendered ahead; None: the fixed ``sound:cbgw/closed`` plays
    closed_prompts: ClosedPrompts | None = None
    #: asks the call-back site for an advisor calling a presence number (None: the
    #: edge has no presence lines)
    presence: PresenceAsker | None = None
    presence_timings: PresenceTimings = field(default_factory=PresenceTimings)


class CallSession(ChannelSession[Event]):
    """One inbound call: feeds flow events in, executes commands out."""

    def __init__(self, deps: StasisDeps, start: ari.StasisStart,
                 ari_queue: asyncio.Queue[ari.Event]) -> None:
        super().__init__(deps.ari, start, ari_queue)
        self.deps = deps
        self.received_at = deps.clock()
        self.state: flow.State = flow.Idle()
        self.merchant_id = UNKNOWN_MERCHANT     # until the dialled number is resolved

    async def run(self) -> None:
        """The call's task: every line it (and each task it starts) logs names the call."""
        with logs.bind(call_id=edge_call_id_for(self.channel_id)):
            await self._run()

    async def _run(self) -> None:
        forwarder = self._start_forwarding()
        try:
            await self.feed(await self._arrival())
            while not flow.is_terminal(self.state):
                await self.feed(await self.inbox.get())
        except Exception:
            log.exception("call crashed in %s; hanging up", type(self.state).__name__)
            child(edge_metrics().calls, self.merchant_id, "failed", "crashed").inc()
            await self._safe_hangup("congestion")
            raise
        else:
            self._count()
        finally:
            self._stop(forwarder)

    def _count(self) -> None:
        outcome = self.state.outcome if isinstance(self.state, flow.Done) else None
        if outcome is None:
            return
        child(edge_metrics().calls, self.merchant_id, OUTCOME_CLASS[outcome],
              outcome.value).inc()

    async def feed(self, event: Event) -> None:
        before = self.state
        self.state, commands = flow.transition(self.state, event)
        flow_log.info("%s --%s--> %s", type(before).__name__, type(event).__name__,
                      _describe_state(self.state))
        for command in commands:
            await self._execute(command)

    async def _arrival(self) -> CallArrived:
        pres, asserted = await self._caller_headers()
        dialed, merchant = self.deps.merchants.resolve(self.channel.exten)
        if merchant is not None:
            logs.update(merchant=merchant.id)
            self.merchant_id = merchant.id
        return CallArrived(self.channel_id, self.channel.caller_number, pres, dialed, merchant,
                           asserted_raw=asserted, timings=self.deps.timings,
                           at=self.received_at)

    # --- commands -------------------------------------------------------------------------

    async def _execute(self, command: Command) -> None:  # noqa: C901 - one case per command
        deps, cid = self.deps, self.channel_id
        match command:
            case StartTimer(name=name, seconds=seconds):
                self._start_timer(name, seconds)
            case CancelTimer(name=name):
                self._cancel_timer(name)
            case RequestDecision():
                self._spawn(self._decide(command), "decide")
            case StoreRequest():
                self._spawn(self._store(command), "store")
            case Play(media=media, language=language, say=say):
                await self._play(self._media(media, language, say), language)
            case Answer():
                await self._ari_step("answer", deps.ari.answer(cid))
            case Hangup(reason=reason):
                await self._safe_hangup(reason.value)
            case ContinueDirect(extension=extension):
                await self._ari_step("continue", deps.ari.continue_in_dialplan(
                    cid, context=deps.direct_context, extension=extension, priority=1))
            case ReleaseToCallback(request_id=request_id, outcome=outcome):
                await self._release(request_id, outcome)
            case CancelRequest():
                await self._db_step("cancel", deps.store.cancel(command))
            case RecordCall(closed=closed):
                if closed is not None:
                    child(edge_metrics().closed_calls, command.merchant_id, closed).inc()
                await self._db_step("record", deps.store.record_call(command,
                                                                     self.received_at))
            case Log(code=code, detail=detail, warning=warning):
                flow_log.log(logging.WARNING if warning else logging.INFO, "%s %s", code, detail)

    async def _decide(self, cmd: RequestDecision) -> None:
        try:
            result = await self.deps.decider.decide(cmd, self.deps.clock())
        except Exception as exc:  # a rating bug must not strand the call
            log.exception("decision failed")
            result = DecisionUnavailable(f"{type(exc).__name__}: {exc}")
        self.inbox.put_nowait(result)

    async def _store(self, cmd: StoreRequest) -> None:
        try:
            request_id = await self.deps.store.store_request(cmd, self.received_at)
        except Exception as exc:  # DB down, pool exhausted, constraint: all mean "not stored"
            log.warning("request not stored: %s: %s", type(exc).__name__, exc)
            self.inbox.put_nowait(StoreFailed(f"{type(exc).__name__}: {exc}"[:300]))
            return
        self.inbox.put_nowait(RequestStored(request_id))

    def _media(self, media: str, language: Language, say: str | None) -> str:
        """The pre-rendered ``say`` if it is ready, else ``media``: never a render now."""
        prompts = self.deps.closed_prompts
        if say is None or prompts is None:
            return media
        return prompts.media(say, language) or media

    async def _release(self, request_id: str, outcome: Outcome) -> None:
        hungup_at = self.deps.clock()
        for attempt in range(1, self.deps.release_retries + 1):
            try:
                await self.deps.store.release(request_id, outcome, hungup_at)
                return
            except Exception as exc:
                log.warning("release of %s failed (attempt %d): %s", request_id, attempt, exc)
                await asyncio.sleep(0.2 * attempt)
        log.error("request %s stays held; the sweeper will release it", request_id)

    async def _db_step(self, what: str, step: Awaitable[object]) -> None:
        try:
            await step
        except Exception as exc:
            log.warning("%s failed: %s", what, exc)


def _describe_state(state: flow.State) -> str:
    if isinstance(state, flow.Done):
        return f"Done({state.outcome.value if state.outcome else '-'})"
    return type(state).__name__


class StasisApp:
    """Glue between the ``EventRouter`` and the call sessions."""

    def __init__(self, deps: StasisDeps) -> None:
        self.deps = deps
        self.sessions: dict[str, CallSession | PresenceSession] = {}
        self.router = ari.EventRouter(on_stasis_start=self.on_stasis_start,
                                      on_connected=self.on_connected)
        self.connected = False

    async def on_stasis_start(self, start: ari.StasisStart,
                              queue: asyncio.Queue[ari.Event]) -> None:
        deps = self.deps
        line = deps.merchants.presence_line(start.channel.exten)
        session: CallSession | PresenceSession
        if start.args[:1] == (ADVISOR_ARG,):        # an advisor's softphone ([from-advisor])
            advisor = advisor_of_channel(start.channel.name)
            if line is None or deps.presence is None or advisor is None \
                    or advisor[0] != line.merchant_id:
                with logs.bind(call_id=edge_call_id_for(start.channel.id)):
                    log.warning("advisor phone %s dialled %s: not a presence number of its "
                                "merchant, refused (403)", start.channel.name,
                                start.channel.exten)
                await deps.ari.hangup(start.channel.id, reason_code=21)
                return
            session = PresenceSession(deps.ari, deps.presence, line, deps.presence_timings,
                                      start, queue, sip_user=advisor[1])
        elif line is not None and deps.presence is not None:
            session = PresenceSession(deps.ari, deps.presence, line, deps.presence_timings,
                                      start, queue)
        else:
            session = CallSession(deps, start, queue)
        self.sessions[session.channel_id] = session
        try:
            await session.run()
        finally:
            self.sessions.pop(session.channel_id, None)

    async def on_connected(self, event: ari.Connected) -> None:
        self.connected = True
        log.info("ARI %s: re-syncing parked channels", "reconnected" if event.reconnect
                 else "connected")
        try:
            await self.resync()
        except ari.AriError as exc:
            log.warning("re-sync failed (%s); channels are re-checked on the next connect", exc)

    async def resync(self) -> tuple[list[str], list[str]]:
        """Recover orphans and wake sessions whose channel vanished. Returns both lists.

        A channel's ``StasisStart`` may still be on its way when the snapshot is
        taken, so orphans are only those still without a session after
        ``resync_grace_s``; a session is only "vanished" if it existed before.
        """
        known_before = set(self.sessions)
        state = await self.deps.ari.application()
        present = set(state.channel_ids)
        vanished = [cid for cid in known_before if cid not in present and cid in self.sessions]
        for cid in vanished:
            with logs.bind(call_id=edge_call_id_for(cid)):
                log.warning("channel vanished while disconnected")
            self.sessions[cid].notify_gone()
        if self.deps.resync_grace_s:
            await asyncio.sleep(self.deps.resync_grace_s)
        orphans = [cid for cid in present
                   if cid not in self.sessions and cid not in self.router.channel_ids]
        if orphans:
            await self._recover(orphans)
        return orphans, vanished

    async def _recover(self, orphans: list[str]) -> None:
        held = set(await self.deps.store.held_for_channel_ids(orphans))
        for cid in orphans:
            with logs.bind(call_id=edge_call_id_for(cid)):
                await self._recover_one(cid, held)

    async def _recover_one(self, cid: str, held: set[str]) -> None:
        request_id = edge_call_id_for(cid)
        channel = await self.deps.ari.get_channel(cid)
        if channel is None:
            reason = None
        elif request_id in held:
            reason = "normal" if channel.is_up else "busy"
        else:
            reason = "congestion"  # never told "we will call you back": let them retry
        if reason is not None:
            try:
                await self.deps.ari.hangup(cid, reason=reason)
            except ari.AriError as exc:
                log.warning("recovery: cannot hang up %s: %s", cid, exc)
        if request_id in held:
            await self.deps.store.release(request_id, Outcome.RELEASED_AFTER_GUARD,
                                          self.deps.clock())
        log.warning("recovered orphan channel %s: hangup %s%s", cid, reason or "(gone)",
                    ", request released" if request_id in held else "")


async def run_events(app: StasisApp, client: ari.AriClient) -> None:
    """Consume the client's events forever (the client reconnects by itself)."""
    await app.router.run(client.events())
