"""The IVR step of a call-back round, and its confirm gate.

Once the customer answers, :class:`IvrRunner` drives the pure IVR machine
(:mod:`callback_server.ivr`) over the customer's leg: it plays prompts, runs the
IVR's timers, stores what the customer gave (request info) and hands the
dialer's part (operator, hang-up) and a consultation (``ConnectAdvisor``) back to the
round as follow-up events. When
the flow has a confirm gate (``Flow.confirm_callback``) and the customer
passes it, the round counts as confirmed (the guard's harassment brake).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from callback_server import ivr
from callback_server.call_ports import (
    AriPort,
    CallContext,
    CallFacts,
    CallStore,
    IvrPort,
    Timers,
    safely,
    utcnow,
)
from callback_server.dialer_messages import EndCall, Job, OperatorRequested
from ivr_platform.metrics import ivr as ivr_metrics
from ivr_platform.speech import spoken_text
from shared import ari
from shared.db import holding
from shared.language import Language

log = logging.getLogger("callback.stasis")

#: the most SMS one round's flow sends
MAX_SMS = 3


class IvrRunner:
    """The IVR of one round (started by the dialer's ``StartIvr``)."""

    def __init__(self, job: Job, ctx: CallContext, *, client: AriPort, store: CallStore,
                 timers: Timers, customer: Callable[[], str | None],
                 follow_up: Callable[[object], None], post: Callable[[object], None],
                 services: IvrPort | None = None) -> None:
        self.job = job
        self.ctx = ctx
        self.client = client
        self.store = store
        self.timers = timers
        self.customer = customer         # the customer leg's channel id, while there is one
        self.follow_up = follow_up       # an event for the round, after the current one
        self.post = post                 # an event for the round, from another task
        self.services = services         # recordings, SMS, webhooks (None: not configured)
        self.facts = CallFacts(job.merchant_id, job.callback_id, ctx.edge_call_id,
                               job.destination)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sms_sent = 0
        self.state: ivr.IvrState | None = None
        self.confirmed = False           # the customer passed the flow's confirm gate
        self._submits = 0

    async def start(self, channel_id: str) -> None:
        self.state, commands = ivr.start(self.ctx.flow, channel_id,
                                         (("caller", str(self.job.destination)),))
        self._count(None, None, self.state)
        for cmd in commands:
            await self._run(cmd)

    async def handle(self, event: ivr.Event) -> None:
        if self.state is None:
            return
        before = self.state
        self.state, commands = ivr.transition(before, event)
        self._count(before, event, self.state)
        gate = self.ctx.flow.confirm_callback
        if gate is not None and before.node == gate \
                and self.state.node == self.ctx.flow.confirm_yes \
                and self.state.flow is self.ctx.flow:
            self.confirmed = True
            log.debug("the customer confirmed the call-back")   # the guard logs it at the end
        for cmd in commands:
            await self._run(cmd)

    def _count(self, before: ivr.IvrState | None, event: ivr.Event | None,
               after: ivr.IvrState) -> None:
        """The nodes a step entered, by verb; a re-prompt of the node (its tries went up,
        nothing entered) by why: a key it does not take, no key in time, or an advisor
        that cannot be reached."""
        metrics, merchant = ivr_metrics(), self.job.merchant_id
        for verb in after.entered:
            metrics.nodes.labels(merchant, verb).inc()
        if before is not None and not after.entered and after.tries > before.tries:
            reason = ("timeout" if isinstance(event, ivr.Timeout)
                      else "invalid" if isinstance(event, ivr.Dtmf) else "unavailable")
            metrics.retries.labels(merchant, after.current.type, reason).inc()

    async def _run(self, cmd: ivr.Command) -> None:
        log.debug("-> ivr %s", cmd)
        customer = self.customer()
        if isinstance(cmd, ivr.Play) and customer is not None:
            await safely(self.client.play(customer, list(cmd.media),
                                          playback_id=cmd.playback_id,
                                          lang=self.ctx.language.value))
        elif isinstance(cmd, ivr.StopPlayback):
            await safely(self.client.stop_playback(cmd.playback_id))
        elif isinstance(cmd, ivr.StartTimer):
            self.timers.start(cmd.timer_id, cmd.seconds, _timeout(cmd.timer_id))
        elif isinstance(cmd, ivr.CancelTimer):
            self.timers.cancel(cmd.timer_id)
        elif isinstance(cmd, ivr.Submit):
            self._submits += 1
            with holding("ivr_info"):
                await self.store.record_info(
                    cmd, callback_id=self.job.callback_id, edge_call_id=self.ctx.edge_call_id,
                    merchant_id=self.job.merchant_id, caller=self.job.destination,
                    collected_at=utcnow(), seq=self._submits)
            log.debug("collected %s %s", cmd.category, cmd.as_dict())
        elif isinstance(cmd, ivr.DialOperator):
            self.follow_up(OperatorRequested(utcnow()))
        elif isinstance(cmd, _ROUND_COMMANDS):
            self.follow_up(cmd)          # the round's consultation (ConsultRunner), transfer
        elif isinstance(cmd, ivr.Hangup):
            self.follow_up(EndCall(utcnow()))
        else:
            await self._verb(cmd, customer)

    async def _verb(self, cmd: ivr.Command, customer: str | None) -> None:
        """Hours, recordings, SMS, webhooks and speech."""
        if isinstance(cmd, ivr.CheckHours):
            hours = self.ctx.hours
            self.follow_up(ivr.HoursChecked(hours is None or hours.is_open(self.ctx.clock())))
        elif isinstance(cmd, ivr.StartRecording):
            await self._record(cmd, customer)
        elif isinstance(cmd, ivr.SendSms):
            self._sms(cmd)
        elif isinstance(cmd, ivr.CallWebhook):
            self._webhook(cmd)
        elif isinstance(cmd, ivr.Speak):
            self._speak(cmd)

    def _speak(self, cmd: ivr.Speak) -> None:
        """A cached text plays at once; another is rendered in a task of its own (the
        call's events go on meanwhile); one that cannot be is skipped."""
        services = self.services
        language = Language(cmd.language) if cmd.language else self.ctx.language
        text = spoken_text(cmd.parts, language)
        media = services.spoken(text, language) if services is not None else None
        if services is None or media is not None or not text.strip():
            if media is None:
                log.warning("say %r skipped: %s", text, "nothing to say" if text.strip()
                            else "no IVR services")
            self.follow_up(ivr.Spoken(cmd.request_id, media))
            return

        async def render() -> None:
            self.post(ivr.Spoken(cmd.request_id, await services.speak(text, language)))

        self._task(render(), f"say {cmd.request_id}")

    def _sms(self, cmd: ivr.SendSms) -> None:
        """At most :data:`MAX_SMS` a round: a flow looping through an sms node (a menu
        answered again and again) cannot run up the merchant's bill or flood a phone."""
        self._sms_sent += 1
        if self.services is None or self._sms_sent > MAX_SMS:
            log.warning("sms to %s not sent: %s", cmd.to, "no IVR services"
                        if self.services is None else f"more than {MAX_SMS} this round")
            return
        self.services.send_sms(cmd.to, cmd.text, self.facts)

    async def _record(self, cmd: ivr.StartRecording, customer: str | None) -> None:
        if customer is None or self.services is None:
            self._nothing_recorded(cmd.name)
            return
        try:
            await self.client.record(customer, cmd.name, max_duration_s=cmd.max_s,
                                     max_silence_s=cmd.silence_s, beep=cmd.beep,
                                     terminate_on=cmd.terminator)
        except ari.AriError as exc:
            log.warning("recording %s could not start: %s", cmd.name, exc)
            self._nothing_recorded(cmd.name)

    async def recorded(self, name: str, ok: bool) -> None:
        """Asterisk finished (``ok``) or failed the recording ``name``: a finished one is
        stored even when the customer has hung up meanwhile."""
        stored = None
        if ok and self.services is not None:
            stored = await self.services.store_recording(name, self.facts)
        self._count_recording(stored)
        await self.handle(ivr.Recorded(name, stored))

    def _nothing_recorded(self, name: str) -> None:
        self._count_recording(None)
        self.follow_up(ivr.Recorded(name, None))

    def _count_recording(self, stored: str | None) -> None:
        ivr_metrics().recordings.labels(self.job.merchant_id,
                                        "none" if stored is None else "stored").inc()

    def _webhook(self, cmd: ivr.CallWebhook) -> None:
        """Called in a task of its own: the call's events go on meanwhile."""
        services = self.services
        if services is None:
            self.follow_up(ivr.WebhookFailed(cmd.request_id, "no IVR services"))
            return

        async def ask() -> None:
            self.post(await services.call_webhook(cmd, self.facts))

        self._task(ask(), f"webhook {cmd.request_id}")

    def _task(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _timeout(timer_id: str) -> Callable[[], object]:
    return lambda: ivr.Timeout(timer_id)


#: the IVR's commands the round carries out (its consultation, a transfer)
_ROUND_COMMANDS = (ivr.ConnectAdvisor, ivr.ListAdvisors, ivr.TransferCall)
