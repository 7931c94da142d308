"""In-process fakes for the callback site's ports, and small builders for tests.

``FakeAri`` records REST calls and lets a test push ARI events through the
real :class:`~shared.ari.router.EventRouter`; ``MemoryStore`` implements
:class:`~callback_server.call_ports.CallStore` in memory; ``FixedRater`` prices
every second the same; ``MemoryDesk`` is :class:`~callback_server.advisor_desk.AdvisorPort`
over the real pure presence and assignment machines in memory, ``MemoryRecords`` keeps
consultation records, ``MemoryIvrServices`` stands for the IVR verbs' recordings, SMS and
webhooks. Integration tests use the real adapters instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from advisors import assignment as am
from advisors import presence as pm
from advisors.model import Desk, Rules
from advisors.records import ConsultationRecord
from callback_server import ivr
from callback_server.advisor_desk import Chosen, Unavailable, unavailable_reason
from callback_server.call_ports import CallFacts
from callback_server.consult import Assigned, EndPresence, Op, RunAssignment
from callback_server.consult_billing import ChargeTo
from callback_server.consult_recovery import Live
from callback_server.dialer_messages import Finish, PersistAttempt, RecordCdr, Route
from callback_server.guard.service import RoundEnd
from callback_server.ivr import Submit
from callback_server.store.leg_end import LegEnd
from callback_server.store.queue_store import LeaseLost
from shared import ari
from shared.config import AnnounceMode, Merchant
from shared.language import Language
from shared.money import Money
from shared.phone import E164, normalise


def merchant(merchant_id: str = "acme", number: str = "0120123456", *,
             api_token_sha256: str | None = None, delay_s: str = "0",
             max_attempts: int = 3) -> Merchant:
    n = normalise(number)
    return Merchant(id=merchant_id, name=merchant_id.upper(), numbers=(n,),
                    callback_caller_id=n, announce_mode=AnnounceMode.EARLY_MEDIA,
                    inbound_tariff="ntt-freedial", pre_callback_delay_s=Decimal(delay_s),
                    max_attempts=max_attempts, retry_backoff_s=(30, 120, 600),
                    ring_timeout_s=30, ivr_flow="order", operator="operator",
                    api_token_sha256=api_token_sha256)


@dataclass
class FakeAri:
    """Records calls; ``allocation_fails`` makes originate raise for those endpoints;
    ``unanswered`` makes it raise :class:`~shared.ari.AriUnavailable` (no answer in time)
    for those endpoints, after placing the channel when ``placed_unanswered``."""

    router: ari.EventRouter = field(default_factory=ari.EventRouter)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    allocation_fails: set[str] = field(default_factory=set)
    unanswered: set[str] = field(default_factory=set)
    placed_unanswered: bool = True
    channels: dict[str, str] = field(default_factory=dict)   # id -> state
    report_hangups: bool = True
    variables: dict[str, dict[str, str]] = field(default_factory=dict)  # per originate

    async def originate(self, endpoint: str, *, channel_id: str | None = None,
                        app_args: tuple[str, ...] | list[str] = (),
                        caller_id: str | None = None,
                        timeout: int = 30,  # noqa: ASYNC109
                        variables: Mapping[str, str] | None = None) -> ari.Channel:
        self.calls.append(("originate", (endpoint, channel_id, caller_id, timeout)))
        self.variables[channel_id or ""] = dict(variables or {})
        if endpoint in self.allocation_fails:
            raise ari.AllocationFailed(500, "Allocation failed", method="POST", path="/channels")
        assert channel_id is not None
        if endpoint not in self.unanswered or self.placed_unanswered:
            self.channels[channel_id] = "Down"
        if endpoint in self.unanswered:
            raise ari.AriUnavailable("ARI POST /channels: TimeoutError")
        return ari.Channel(id=channel_id, state="Down")

    async def hangup(self, channel_id: str, *, reason: str | None = None) -> None:
        self.calls.append(("hangup", channel_id))
        if self.channels.pop(channel_id, None) is not None and self.report_hangups:
            # Like Asterisk after DELETE /channels/{id}: StasisEnd (no ChannelDestroyed).
            event = ari.StasisEnd(ari.Channel(id=channel_id))
            asyncio.get_running_loop().call_soon(self.router.dispatch, event)

    async def play(self, channel_id: str, media: tuple[str, ...] | list[str], *,
                   playback_id: str | None = None, lang: str | None = None) -> ari.Playback:
        self.calls.append(("play", (channel_id, tuple(media), playback_id, lang)))
        return ari.Playback(id=playback_id or "pb", target_uri=f"channel:{channel_id}")

    async def stop_playback(self, playback_id: str) -> None:
        self.calls.append(("stop_playback", playback_id))

    async def record(self, channel_id: str, name: str, *, max_duration_s: int = 0,
                     max_silence_s: int = 0, beep: bool = True,
                     terminate_on: str = "#") -> ari.LiveRecording:
        self.calls.append(("record", (channel_id, name, max_duration_s, max_silence_s, beep,
                                      terminate_on)))
        return ari.LiveRecording(name=name, target_uri=f"channel:{channel_id}")

    async def start_moh(self, channel_id: str) -> None:
        self.calls.append(("start_moh", channel_id))

    async def stop_moh(self, channel_id: str) -> None:
        self.calls.append(("stop_moh", channel_id))

    async def create_bridge(self, bridge_id: str, *, type: str = "mixing") -> ari.Bridge:
        self.calls.append(("create_bridge", (bridge_id, type)))
        return ari.Bridge(id=bridge_id, bridge_type=type)

    async def add_channel(self, bridge_id: str, channel_ids: str | list[str]) -> None:
        self.calls.append(("add_channel", (bridge_id, tuple(channel_ids))))

    async def remove_channel(self, bridge_id: str, channel_id: str) -> None:
        self.calls.append(("remove_channel", (bridge_id, channel_id)))

    async def destroy_bridge(self, bridge_id: str) -> None:
        self.calls.append(("destroy_bridge", bridge_id))

    async def get_channel(self, channel_id: str) -> ari.Channel | None:
        state = self.channels.get(channel_id)
        return None if state is None else ari.Channel(id=channel_id, state=state)

    async def get_variable(self, channel_id: str, name: str) -> str | None:
        return self.variables.get(channel_id, {}).get(name)

    def named(self, name: str) -> list[Any]:
        return [c[1] for c in self.calls if isinstance(c, tuple) and c[0] == name]


@dataclass
class MemoryStore:
    legs: dict[str, PersistAttempt] = field(default_factory=dict)
    results: list[tuple[str, str, int | None]] = field(default_factory=list)
    cdrs: list[tuple[RecordCdr, int, Money | None, Money | None]] = field(default_factory=list)
    infos: list[Submit] = field(default_factory=list)
    finished: list[Finish] = field(default_factory=list)
    #: the rounds' ends as the guard would record them
    rounds: list[RoundEnd] = field(default_factory=list)
    lease_held: bool = True
    order: list[str] = field(default_factory=list)

    async def persist_leg(self, cmd: PersistAttempt, merchant_id: str) -> None:
        if not self.lease_held:
            raise LeaseLost(cmd.callback_id)
        self.order.append(f"persist {cmd.channel_id}")
        self.legs[cmd.channel_id] = cmd

    async def leg_result(self, channel_id: str, status: str, cause: int | None) -> None:
        self.results.append((channel_id, status, cause))

    async def record_cdr(self, cdr: RecordCdr, *, edge_call_id: str, merchant_id: str,
                         billed_s: int, carrier_cost: Money | None,
                         direct_cost: Money | None) -> bool:
        self.cdrs.append((cdr, billed_s, carrier_cost, direct_cost))
        return True

    async def record_info(self, submit: Submit, *, callback_id: str, edge_call_id: str,
                          merchant_id: str, caller: E164, collected_at: datetime,
                          seq: int) -> str:
        self.infos.append(submit)
        return f"info-{seq}"

    async def end_leg(self, end: LegEnd) -> None:
        self.results.append((end.channel_id, end.status, end.cause))
        if end.cdr is not None:
            self.cdrs.append((end.cdr.cdr, end.cdr.billed_s, end.cdr.carrier_cost,
                              end.cdr.direct_cost))

    async def finish(self, callback_id: str, outcome: Finish, *, ended: LegEnd | None = None,
                     round_end: RoundEnd | None = None) -> bool:
        if ended is not None:
            await self.end_leg(ended)
        if round_end is not None and round_end.counted(outcome.attempts):
            self.rounds.append(round_end)
        self.finished.append(outcome)
        return True


@dataclass
class FixedRater:
    per_minute: Money = field(default_factory=lambda: Money.of("0.1398", "USD"))
    direct_per_minute: Money = field(default_factory=lambda: Money.of("30", "JPY"))

    def leg_cost(self, carrier_id: str, number: E164, at: datetime,
                 duration_s: int) -> tuple[Money | None, int]:
        billed = max(60, -(-duration_s // 60) * 60)
        return self.per_minute * Decimal(billed // 60), billed

    def direct_cost(self, inbound_tariff: str, number: E164, at: datetime,
                    duration_s: int) -> Money | None:
        return self.direct_per_minute * Decimal(max(1, -(-duration_s // 60)))


@dataclass
class MemoryDesk:
    """The advisors of one merchant in memory, all in standby: ``Presences`` with the same
    machines over one board. Advisor ``n`` has code ``f"{n:04d}"`` and is reached by
    ``routes[n]``."""

    advisors: int = 3
    rules: Rules = field(default_factory=Rules)
    routes: dict[int, tuple[Route, ...]] = field(default_factory=dict)
    seats: dict[int, pm.Presence] = field(default_factory=dict)
    #: advisor → yen per minute (0 when not given)
    prices: dict[int, int] = field(default_factory=dict)
    #: the carriers a number is reached by, cheapest first
    carriers: tuple[str, ...] = ("carrier-a",)

    def __post_init__(self) -> None:
        start = datetime(2026, 1, 1, tzinfo=UTC)
        for a in range(1, self.advisors + 1):
            self.seats.setdefault(a, pm.Presence(desk=Desk.STANDBY,
                                                 idle_since=start + timedelta(seconds=a)))

    async def choose(self, merchant_id: str, *, code: str | None, group: str | None,
                     advisor_id: int | None = None) -> Chosen | Unavailable:
        if group is not None:
            return Chosen(frozenset(self.seats), self.rules.ring_timeout_s, group_id=1,
                          price_per_minute_yen=max(self.prices.values(), default=0),
                          member_prices=tuple(sorted(self.prices.items())))
        chosen = int(code) if code is not None else advisor_id
        if chosen not in self.seats:
            return Unavailable("unknown")
        if not self.seats[chosen].takes_offer():
            return Unavailable(unavailable_reason(self.seats[chosen].state))
        return Chosen(frozenset({chosen}), self.rules.ring_timeout_s, advisor_id=chosen,
                      price_per_minute_yen=self.prices.get(chosen, 0),
                      click_to_call_first=self.rules.click_to_call_first)

    async def listing(self, merchant_id: str, listing: str) -> tuple[ivr.Listed, ...]:
        return tuple(ivr.Listed(a, (f"digits:{a:04d}",), None if p.takes_offer()
                                else unavailable_reason(p.state))
                     for a, p in sorted(self.seats.items())
                     if listing == "all" or p.takes_offer())

    async def assignment(self, merchant_id: str, op: Op, a: am.Assignment
                         ) -> tuple[am.Assignment, list[am.Command]]:
        return self.run(op, a, datetime.now(UTC))

    def run(self, op: Op, a: am.Assignment, now: datetime
            ) -> tuple[am.Assignment, list[am.Command]]:
        advisor = a.offered_to
        if advisor is not None and op is Op.RING_MISSED:
            self.apply(advisor, pm.RingMissed(now, a.consultation_id))
        if advisor is not None and op is Op.ANSWERED:
            self.apply(advisor, pm.Answered(now, a.consultation_id))
        board = am.Board(self.rules.lines, dict(self.seats))
        event: am.Event
        match op:
            case Op.ASSIGN:
                event = am.Assign(board)
            case Op.RING_MISSED:
                event = am.OfferMissed(board)
            case Op.ANSWERED:
                event = am.OfferAnswered()
            case Op.CANCELLED:
                event = am.Cancelled()
        after, cmds = am.transition(a, event)
        for cmd in cmds:
            if isinstance(cmd, am.OfferTo):
                self.apply(cmd.advisor_id, pm.Offered(now, cmd.consultation_id))
            elif isinstance(cmd, am.Withdraw):
                self.apply(cmd.advisor_id, pm.ConsultationEnded(now, a.consultation_id))
        return after, cmds

    def results(self, commands: Sequence[object], now: datetime, consultation_id: str,
                routes: Mapping[int, tuple[Route, ...]]) -> list[Assigned]:
        """Run consultation ``consultation_id``'s ``commands`` on the desk at once (as its
        adapter does): each ``RunAssignment``'s result (an ``OfferTo`` with the advisor's
        ``routes``); each ``EndPresence`` applied."""
        results: list[Assigned] = []
        for cmd in commands:
            if isinstance(cmd, RunAssignment):
                a, done = self.run(cmd.op, cmd.assignment, now)
                offer = next((c for c in done if isinstance(c, am.OfferTo)), None)
                results.append(Assigned(a, tuple(done), now,
                                        routes[offer.advisor_id] if offer else ()))
            elif isinstance(cmd, EndPresence):
                self.apply(cmd.advisor_id, pm.ConsultationEnded(
                    now, cmd.consultation_id or consultation_id))
        return results

    def apply(self, advisor: int, event: pm.Event) -> None:
        self.seats[advisor], _ = pm.transition(self.seats[advisor], event, self.rules)

    async def contact(self, merchant_id: str, advisor_id: int, at: datetime
                      ) -> tuple[str, tuple[Route, ...]]:
        return f"+8131234{advisor_id:04d}", self.routes.get(advisor_id, ())

    async def number_routes(self, number: E164, at: datetime) -> tuple[Route, ...]:
        return tuple(Route(c, f"PJSIP/{number}@{c}") for c in self.carriers)

    async def ended(self, merchant_id: str, advisor_id: int, consultation_id: str,
                    at: datetime) -> None:
        self.apply(advisor_id, pm.ConsultationEnded(at, consultation_id))

    async def ringing(self, merchant_id: str, consultation_id: str) -> list[int]:
        return [a for a, p in sorted(self.seats.items())
                if (s := p.session(consultation_id)) is not None and not s.answered]

    async def customer_id(self, merchant_id: str, number: E164) -> int | None:
        return None


@dataclass
class MemoryRecords:
    saved: list[ConsultationRecord] = field(default_factory=list)

    async def save(self, record: ConsultationRecord) -> bool:
        self.saved.append(record)
        return True


@dataclass
class MemoryLive:
    """``consult_live`` in memory: the rows by consultation id, and every write."""

    rows: dict[str, Live] = field(default_factory=dict)
    writes: list[Live] = field(default_factory=list)

    async def keep(self, callback_id: str, live: Live, snapshot: ConsultationRecord,
                   charge_to: ChargeTo | None = None) -> None:
        self.rows[snapshot.consultation_id] = live
        self.writes.append(live)

    async def drop(self, consultation_id: str) -> None:
        self.rows.pop(consultation_id, None)


@dataclass
class MemoryIvrServices:
    """:class:`~callback_server.call_ports.IvrPort` in memory: ``recordings`` maps a
    recording's name to the id it is stored as (absent: nothing recorded), SMS are kept,
    a webhook answers ``webhook_values`` (None: it fails), a text is ``cached`` already
    (text → media) or is rendered as ``rendered`` says (absent: it cannot be), each
    render kept in ``said``."""

    recordings: dict[str, str] = field(default_factory=dict)
    sms: list[tuple[str, str, str]] = field(default_factory=list)   # (merchant, to, text)
    webhook_values: tuple[tuple[str, str], ...] | None = ()
    webhooks: list[ivr.CallWebhook] = field(default_factory=list)
    cached: dict[str, str] = field(default_factory=dict)
    rendered: dict[str, str] = field(default_factory=dict)
    said: list[tuple[str, Language]] = field(default_factory=list)

    def spoken(self, text: str, language: Language) -> str | None:
        return self.cached.get(text)

    async def speak(self, text: str, language: Language) -> str | None:
        self.said.append((text, language))
        return self.rendered.get(text)

    async def store_recording(self, name: str, call: CallFacts) -> str | None:
        return self.recordings.get(name)

    def send_sms(self, to: str, text: str, call: CallFacts) -> None:
        self.sms.append((call.merchant_id, to, text))

    async def call_webhook(self, cmd: ivr.CallWebhook, call: CallFacts
                           ) -> ivr.WebhookAnswered | ivr.WebhookFailed:
        self.webhooks.append(cmd)
        if self.webhook_values is None:
            return ivr.WebhookFailed(cmd.request_id, "HTTP 500")
        return ivr.WebhookAnswered(cmd.request_id, self.webhook_values)
