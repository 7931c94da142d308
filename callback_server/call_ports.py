"""What a call-back round talks to, and what its runners share.

The ports are Protocols (ARI, the store, rating, the guard, Asterisk's own leg
records); the real adapters are ``shared.ari.AriClient``,
:class:`~callback_server.store.CallbackStore`, ``callback_server.routing`` and
``callback_server.guard.service.Guard``, and the fakes are in
:mod:`callback_server.testing`. :class:`Timers` and :func:`safely` are the round's
timers and its ARI calls whose failure the round survives.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from callback_server import ivr
from callback_server.dialer_messages import Finish, PersistAttempt, RecordCdr
from callback_server.guard.service import RoundEnd
from callback_server.ivr_flow import Flow
from callback_server.legrecord import LegRecord
from callback_server.store.leg_end import LegEnd
from ivr_platform.hours import BusinessHours
from shared import ari
from shared.language import Language
from shared.money import Money
from shared.phone import E164

log = logging.getLogger("callback.stasis")


def utcnow() -> datetime:
    return datetime.now(UTC)


class CallStore(Protocol):
    async def persist_leg(self, cmd: PersistAttempt, merchant_id: str) -> None: ...
    async def leg_result(self, channel_id: str, status: str, cause: int | None) -> None: ...
    async def record_cdr(self, cdr: RecordCdr, *, edge_call_id: str, merchant_id: str,
                         billed_s: int, carrier_cost: Money | None,
                         direct_cost: Money | None) -> bool: ...
    async def record_info(self, submit: ivr.Submit, *, callback_id: str, edge_call_id: str,
                          merchant_id: str, caller: E164, collected_at: datetime,
                          seq: int) -> str: ...
    async def end_leg(self, end: LegEnd) -> None: ...
    async def finish(self, callback_id: str, outcome: Finish, *, ended: LegEnd | None = None,
                     round_end: RoundEnd | None = None) -> bool: ...


class IvrPort(Protocol):
    """What the IVR's verbs reach beyond ARI (:class:`callback_server.ivr_services.
    IvrServices`): ``call`` is a :class:`~callback_server.ivr_services.CallFacts`."""

    async def store_recording(self, name: str, call: CallFacts) -> str | None: ...
    def send_sms(self, to: str, text: str, call: CallFacts) -> None: ...
    async def call_webhook(self, cmd: ivr.CallWebhook, call: CallFacts
                           ) -> ivr.WebhookAnswered | ivr.WebhookFailed: ...
    def spoken(self, text: str, language: Language) -> str | None: ...
    async def speak(self, text: str, language: Language) -> str | None: ...


@dataclass(frozen=True, slots=True)
class CallFacts:
    """Who and which call a verb acts for."""

    merchant_id: str
    callback_id: str
    edge_call_id: str
    caller: E164


class LegRecordSource(Protocol):
    """Asterisk's own record of a leg (``callback_server.legrecord.LegRecords``)."""

    async def fetch(self, channel_id: str, started_at: datetime) -> LegRecord | None: ...


class Rater(Protocol):
    """Prices a finished leg: (carrier cost, billed seconds) and the direct counterfactual."""

    def leg_cost(self, carrier_id: str, number: E164, at: datetime,
                 duration_s: int) -> tuple[Money | None, int]: ...
    def direct_cost(self, inbound_tariff: str, number: E164, at: datetime,
                    duration_s: int) -> Money | None: ...


class AriPort(Protocol):
    async def originate(self, endpoint: str, *, channel_id: str | None = None,
                        app_args: tuple[str, ...] | list[str] = (),
                        caller_id: str | None = None,
                        timeout: int = 30,  # noqa: ASYNC109
                        variables: Mapping[str, str] | None = None) -> ari.Channel: ...
    async def hangup(self, channel_id: str, *, reason: str | None = None) -> None: ...
    async def play(self, channel_id: str, media: tuple[str, ...] | list[str], *,
                   playback_id: str | None = None, lang: str | None = None) -> ari.Playback: ...
    async def record(self, channel_id: str, name: str, *, max_duration_s: int = 0,
                     max_silence_s: int = 0, beep: bool = True,
                     terminate_on: str = "#") -> ari.LiveRecording: ...
    async def stop_playback(self, playback_id: str) -> None: ...
    async def start_moh(self, channel_id: str) -> None: ...
    async def stop_moh(self, channel_id: str) -> None: ...
    async def create_bridge(self, bridge_id: str, *, type: str = "mixing") -> ari.Bridge: ...
    async def add_channel(self, bridge_id: str, channel_ids: str | list[str]) -> None: ...
    async def remove_channel(self, bridge_id: str, channel_id: str) -> None: ...
    async def destroy_bridge(self, bridge_id: str) -> None: ...
    async def get_channel(self, channel_id: str) -> ari.Channel | None: ...
    async def get_variable(self, channel_id: str, name: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class CallContext:
    edge_call_id: str
    inbound_tariff: str
    flow: Flow
    #: the caller's hang-up at the edge (else their arrival): the first originate of the
    #: job observes ``cbgw_callback_latency_seconds`` from it; None: not observed
    hungup_at: datetime | None = None
    #: the merchant's language: every prompt plays as ``sound:`` of that language
    language: Language = Language.JAPANESE
    #: the dialled number's business hours (an ``hours`` node's answer; None: always open)
    hours: BusinessHours | None = None
    #: the time an ``hours`` node is answered at
    clock: Callable[[], datetime] = utcnow


Inbox = asyncio.Queue[object]


class Timers:
    """A round's named timers: each one, when it fires, puts its event into the inbox."""

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox
        self._handles: dict[str, asyncio.TimerHandle] = {}

    def start(self, name: str, seconds: float, make: Callable[[], object]) -> None:
        self.cancel(name)
        loop = asyncio.get_running_loop()
        self._handles[name] = loop.call_later(seconds, lambda: self._inbox.put_nowait(make()))

    def cancel(self, name: str) -> None:
        handle = self._handles.pop(name, None)
        if handle is not None:
            handle.cancel()

    def cancel_all(self) -> None:
        for handle in self._handles.values():
            handle.cancel()


async def safely(call: Awaitable[object]) -> None:
    """Await an ARI call whose failure the round survives (logged)."""
    try:
        await call
    except ari.AriError as exc:
        log.warning("ARI call failed: %s", exc)
