"""Test helpers shipped with the package: merchant factories and in-process fakes."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from edge_server import presence_flow as pf
from edge_server.flow_messages import (
    CancelRequest,
    Decided,
    DecisionUnavailable,
    Outcome,
    RecordCall,
    RequestDecision,
    StoreRequest,
)
from shared import ari
from shared.config import AnnounceMode, Merchant
from shared.phone import normalise


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def merchant(merchant_id: str, *numbers: str, announce_mode: str = "early_media",
             api_token: str | None = None, operator: str = "operator") -> Merchant:
    """A :class:`shared.config.Merchant` with the contract's defaults."""
    parsed = tuple(normalise(n) for n in numbers or ("0120123456",))
    return Merchant(
        id=merchant_id, name=merchant_id.upper(), numbers=parsed,
        callback_caller_id=parsed[0], announce_mode=AnnounceMode(announce_mode),
        inbound_tariff="ntt-freedial", pre_callback_delay_s=Decimal(3), max_attempts=3,
        retry_backoff_s=(30, 120, 600), ring_timeout_s=30, ivr_flow="order",
        operator=operator,
        api_token_sha256=None if api_token is None else token_digest(api_token))


# --- in-process fakes for the stasis adapter ---------------------------------------------

class FakeAri:
    """Records every ARI call as ``(name, channel_id, detail)``."""

    def __init__(self, variables: dict[str, str] | None = None,
                 channels: dict[str, ari.Channel] | None = None) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.variables = variables or {}
        self.channels = channels or {}
        self.fail: dict[str, Exception] = {}

    def _record(self, name: str, channel_id: str, detail: str = "") -> None:
        self.calls.append((name, channel_id, detail))
        if name in self.fail:
            raise self.fail[name]

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    async def answer(self, channel_id: str) -> None:
        self._record("answer", channel_id)

    async def play(self, channel_id: str, media: Sequence[str], *,
                   playback_id: str | None = None, lang: str | None = None) -> ari.Playback:
        self._record("play", channel_id, f"{','.join(media)} lang={lang}")
        return ari.Playback(id=playback_id or "pb", media_uri=",".join(media),
                            target_uri=f"channel:{channel_id}", state="queued")

    async def hangup(self, channel_id: str, *, reason: str | None = None,
                     reason_code: int | None = None) -> None:
        self._record("hangup", channel_id, reason or str(reason_code))

    async def get_variable(self, channel_id: str, name: str) -> str | None:
        self.calls.append(("get_variable", channel_id, name))
        return self.variables.get(name)

    async def get_channel(self, channel_id: str) -> ari.Channel | None:
        return self.channels.get(channel_id)

    async def continue_in_dialplan(self, channel_id: str, *, context: str | None = None,
                                   extension: str | None = None, priority: int | None = None,
                                   label: str | None = None) -> None:
        self._record("continue", channel_id, f"{context},{extension},{priority}")

    async def application(self) -> ari.AppState:
        return ari.AppState(name="edge", channel_ids=tuple(self.channels))


class FakeCallStore:
    """Keeps requests in memory; ``fail_store`` makes ``store_request`` raise."""

    def __init__(self) -> None:
        self.stored: dict[str, StoreRequest] = {}
        self.released: list[tuple[str, Outcome]] = []
        self.cancelled: list[str] = []
        self.recorded: list[RecordCall] = []
        self.fail_store: Exception | None = None
        self.store_delay_s = 0.0
        self.events: list[str] = []

    async def store_request(self, cmd: StoreRequest, received_at: datetime) -> str:
        if self.store_delay_s:
            await asyncio.sleep(self.store_delay_s)
        if self.fail_store is not None:
            raise self.fail_store
        self.stored[cmd.edge_call_id] = cmd
        self.events.append(f"store {cmd.edge_call_id}")
        return cmd.edge_call_id

    async def release(self, request_id: str, outcome: Outcome,
                      hungup_at: datetime | None = None) -> bool:
        self.released.append((request_id, outcome))
        self.events.append(f"release {request_id}")
        return True

    async def cancel(self, cmd: CancelRequest) -> bool:
        self.cancelled.append(cmd.request_id)
        return True

    async def record_call(self, cmd: RecordCall, received_at: datetime) -> None:
        self.recorded.append(cmd)

    async def held_for_channel_ids(self, channel_ids: Sequence[str]) -> list[str]:
        released = {r for r, _ in self.released}
        return [f"edge-{c}" for c in channel_ids
                if f"edge-{c}" in self.stored and f"edge-{c}" not in released]


class FakeDecider:
    def __init__(self, result: Decided | DecisionUnavailable | None = None,
                 delay_s: float = 0.0) -> None:
        self.result = result or Decided(True, "mobile caller: call back is cheaper")
        self.delay_s = delay_s
        self.asked: list[RequestDecision] = []

    async def decide(self, cmd: RequestDecision, at: datetime
                     ) -> Decided | DecisionUnavailable:
        self.asked.append(cmd)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return self.result


class FakePresence:
    """The call-back site's answer to a presence call, after ``delay_s``."""

    def __init__(self, result: pf.PresenceAnswered | pf.PresenceUnavailable | None = None,
                 delay_s: float = 0.0) -> None:
        self.result = result or pf.PresenceAnswered(pf.PresenceOutcome.ONLINE)
        self.delay_s = delay_s
        self.asked: list[pf.AskPresence] = []

    async def ask(self, cmd: pf.AskPresence) -> pf.PresenceAnswered | pf.PresenceUnavailable:
        self.asked.append(cmd)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return self.result
