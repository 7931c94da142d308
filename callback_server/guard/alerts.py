"""Alerts to a webhook and by e-mail (a real SMTP client: :mod:`smtplib`).

:meth:`Alerter.alert` never blocks the caller: delivery runs in a background
task (the e-mail in a thread). The same ``(kind, key)`` is sent at most once
per ``repeat_s``, for the whole site: a process skips it when it raised it less
than ``repeat_s`` ago, and the recorder (the guard's ``guard_alerts`` table)
lets only the first process that records it send it; the others count it as
``sent="elsewhere"``. When it cannot be recorded it is sent anyway (an alert
twice beats none). Delivery failures are logged and counted
(``cbgw_guard_alert_deliveries_total{channel,result}``); they never undo the
decision that raised the alert.

Webhook body (``POST``, JSON; ``Authorization: Bearer <webhook_token>`` if set)::

    {"kind": "cap_tripped", "key": "global/spend_daily", "message": "...",
     "details": {...}, "at": "2026-11-22T01:02:03Z", "site": "callback"}
"""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from typing import Any

import aiohttp

from callback_server.metrics import callback as metrics

log = logging.getLogger("callback.guard.alerts")


@dataclass(frozen=True, slots=True)
class AlertSettings:
    webhook_url: str | None = None
    webhook_token: str | None = None
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: str | None = None
    mail_from: str = "cbgw-guard@localhost"
    mail_to: tuple[str, ...] = ()
    repeat_s: int = 900
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str                  # cap_tripped | cap_reached | brake_engaged | number_blocked ...
    key: str                   # dedup key within the kind
    message: str
    at: datetime
    details: Mapping[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "message": self.message,
                "details": dict(self.details), "at": self.at.isoformat(), "site": "callback"}


#: records an alert; False when another process recorded it within the repeat window
Recorder = Callable[[Alert], Awaitable[bool]]


class Alerter:
    def __init__(self, settings: AlertSettings, record: Recorder | None = None) -> None:
        self.settings = settings
        self.record = record
        self._last: dict[tuple[str, str], datetime] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def alert(self, alert: Alert) -> bool:
        """Raise an alert; False if this process raised it less than ``repeat_s`` ago.
        Counted as ``sent="yes"`` once it goes out (``"elsewhere"``: another process
        had recorded it; ``"repeat"``: this process had)."""
        dedup = (alert.kind, alert.key)
        last = self._last.get(dedup)
        if last is not None and (alert.at - last).total_seconds() < self.settings.repeat_s:
            metrics().guard_alerts.labels(alert.kind, "repeat").inc()
            return False
        self._last[dedup] = alert.at
        log.error("ALERT %s %s: %s", alert.kind, alert.key, alert.message)
        task = asyncio.get_running_loop().create_task(self._deliver(alert),
                                                      name=f"alert {alert.kind}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def drain(self, timeout_s: float = 15.0) -> None:
        """Wait for deliveries in flight (tests, shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)

    async def close(self) -> None:
        await self.drain()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _deliver(self, alert: Alert) -> None:
        if self.record is not None:
            try:
                first = await self.record(alert)
            except Exception as exc:
                log.warning("alert %s %s not recorded (%s: %s); sending it anyway",
                            alert.kind, alert.key, type(exc).__name__, exc)
                metrics().guard_alert_deliveries.labels("database", "failed").inc()
            else:
                metrics().guard_alert_deliveries.labels("database", "ok").inc()
                if not first:
                    log.info("alert %s %s already sent by another process", alert.kind,
                             alert.key)
                    metrics().guard_alerts.labels(alert.kind, "elsewhere").inc()
                    return
        metrics().guard_alerts.labels(alert.kind, "yes").inc()
        jobs: list[Awaitable[None]] = []
        if self.settings.webhook_url:
            jobs.append(self._guarded("webhook", self._webhook(alert)))
        if self.settings.smtp_host and self.settings.mail_to:
            jobs.append(self._guarded("email", asyncio.to_thread(self._email, alert)))
        await asyncio.gather(*jobs)

    async def _guarded(self, channel: str, job: Awaitable[None]) -> None:
        try:
            await job
        except Exception as exc:
            log.warning("alert delivery by %s failed: %s: %s", channel, type(exc).__name__, exc)
            metrics().guard_alert_deliveries.labels(channel, "failed").inc()
        else:
            metrics().guard_alert_deliveries.labels(channel, "ok").inc()

    async def _webhook(self, alert: Alert) -> None:
        s = self.settings
        assert s.webhook_url is not None
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=s.timeout_s))
        headers = {"content-type": "application/json"}
        if s.webhook_token:
            headers["Authorization"] = f"Bearer {s.webhook_token}"
        async with self._session.post(s.webhook_url, data=json.dumps(alert.body()),
                                      headers=headers) as resp:
            if resp.status >= 300:
                raise RuntimeError(f"webhook answered HTTP {resp.status}")

    def _email(self, alert: Alert) -> None:
        s = self.settings
        assert s.smtp_host is not None
        msg = EmailMessage()
        msg["From"] = s.mail_from
        msg["To"] = ", ".join(s.mail_to)
        msg["Subject"] = f"[cbgw guard] {alert.kind}: {alert.key}"
        msg.set_content(f"{alert.message}\n\nat {alert.at.isoformat()}\n\n"
                        + json.dumps(dict(alert.details), indent=2, default=str) + "\n")
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.timeout_s) as smtp:
            if s.smtp_starttls:
                smtp.starttls()
            if s.smtp_username:
                smtp.login(s.smtp_username, s.smtp_password or "")
            smtp.send_message(msg)
