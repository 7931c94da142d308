"""The ``[notify]`` section of the callback site's config: where each merchant's call
notifications go, for which events, and how the delivery worker retries.

```toml
[notify]
poll_s = 1.0            # besides waking on NOTIFY, the worker looks this often
max_attempts = 10       # then a delivery still failing is parked
backoff_s = 5           # first retry after this; doubles each time ...
max_backoff_s = 900     # ... up to this
lease_s = 60            # a claimed delivery is another worker's again after this
                        # (at least 4 x the longest channel timeout_s)

[[notify.channels]]
merchant = "acme"
name = "ops-slack"                  # [a-z0-9][a-z0-9_-]{0,63}, unique per merchant
kind = "slack"                      # slack | teams | google_chat | chatwork | lineworks | mail
events = ["request_collected", "message_recorded", "callback_missed"]   # default: all
# (also "charge_failed", "charge_recovered": a postpaid card charge failed, was paid later)
language = "en"                     # default: the merchant's language
url = "https://hooks.slack.com/services/..."         # slack, teams, google_chat: a secret
```

``chatwork``: ``api_token``, ``room_id`` (``api_base``). ``lineworks``: ``client_id``,
``client_secret``, ``service_account``, ``private_key_file`` (PEM, RSA), ``bot_id``,
``channel_id`` (``auth_url``, ``api_base``). ``mail``: ``host``, ``port`` (25),
``mail_from``, ``mail_to`` (a list), ``starttls``, ``username``, ``password``. Every kind
takes ``timeout_s`` (10). A key another kind takes is unknown here (an error naming file,
line and key). Secrets (URLs, tokens, passwords, keys) are never in an error or a log line:
the settings' ``repr`` hides them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp

from ivr_platform.delivery import backoff
from ivr_platform.notice import Notifier
from ivr_platform.notify_lineworks import AUTH_URL, LineWorksBot, LineWorksSettings
from ivr_platform.notify_mail import MailNotifier, MailSettings
from ivr_platform.notify_webhooks import (
    ChatworkRoom,
    ChatworkSettings,
    GoogleChatWebhook,
    SlackWebhook,
    TeamsWorkflowWebhook,
    WebhookSettings,
)
from shared.config import Section
from shared.language import Language

CHANNEL_NAME = r"[a-z0-9][a-z0-9_-]{0,63}"
#: a delivery may make this many requests, each up to the channel's timeout_s (LINE WORKS:
#: a token, the message, a renewed token, the message again), all within its lease
LEASE_TIMEOUTS = 4


class Event(enum.StrEnum):
    REQUEST_COLLECTED = "request_collected"   # the IVR stored what the caller gave
    MESSAGE_RECORDED = "message_recorded"     # a recording of the call was stored
    CALLBACK_MISSED = "callback_missed"       # the call-back ended failed: never reached
    CHARGE_FAILED = "charge_failed"           # a postpaid card charge failed: dunning
    CHARGE_RECOVERED = "charge_recovered"     # a charge in dunning was paid on a retry


class Kind(enum.StrEnum):
    SLACK = "slack"
    TEAMS = "teams"
    GOOGLE_CHAT = "google_chat"
    CHATWORK = "chatwork"
    LINEWORKS = "lineworks"
    MAIL = "mail"


_WEBHOOKS: Mapping[Kind, Callable[[aiohttp.ClientSession, WebhookSettings], Notifier]] = {
    Kind.SLACK: SlackWebhook, Kind.TEAMS: TeamsWorkflowWebhook,
             Kind.GOOGLE_CHAT: GoogleChatWebhook}
ChannelSettings = WebhookSettings | ChatworkSettings | LineWorksSettings | MailSettings


@dataclass(frozen=True, slots=True)
class Channel:
    merchant_id: str
    name: str
    kind: Kind
    events: frozenset[Event]
    settings: ChannelSettings

    @property
    def language(self) -> Language:
        return self.settings.language

    def notifier(self, session: aiohttp.ClientSession) -> Notifier:
        s = self.settings
        if isinstance(s, WebhookSettings):
            return _WEBHOOKS[self.kind](session, s)
        if isinstance(s, ChatworkSettings):
            return ChatworkRoom(session, s)
        if isinstance(s, LineWorksSettings):
            return LineWorksBot(session, s)
        return MailNotifier(s)


@dataclass(frozen=True, slots=True)
class NotifySettings:
    channels: tuple[Channel, ...] = ()
    poll_s: float = 1.0
    max_attempts: int = 10
    backoff_s: float = 5.0
    max_backoff_s: float = 900.0
    lease_s: float = 60.0
    _by_event: Mapping[tuple[str, Event], tuple[str, ...]] = field(
        default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        plan: dict[tuple[str, Event], tuple[str, ...]] = {}
        for c in self.channels:
            for event in c.events:
                plan[c.merchant_id, event] = (*plan.get((c.merchant_id, event), ()), c.name)
        object.__setattr__(self, "_by_event", plan)

    def channels_for(self, merchant_id: str, event: Event) -> tuple[str, ...]:
        """The names of the merchant's channels that take ``event`` (none: no row)."""
        return self._by_event.get((merchant_id, event), ())

    def channel(self, merchant_id: str, name: str) -> Channel | None:
        return next((c for c in self.channels
                     if (c.merchant_id, c.name) == (merchant_id, name)), None)

    def backoff(self, attempts: int) -> float:
        """Seconds before the next attempt after ``attempts`` failed ones."""
        return backoff(self.backoff_s, self.max_backoff_s, attempts)

    @classmethod
    def parse(cls, s: Section, merchants: Mapping[str, Language]) -> NotifySettings:
        """``merchants``: each merchant's id and language (a channel's default)."""
        channels: list[Channel] = []
        for c in s.sections("channels"):
            channel = _channel(c, merchants)
            if any((o.merchant_id, o.name) == (channel.merchant_id, channel.name)
                   for o in channels):
                raise c.error("name", f"merchant {channel.merchant_id!r} has two channels "
                                      f"named {channel.name!r}")
            channels.append(channel)
        backoff = float(s.decimal("backoff_s", "5", min=Decimal("0.01")))
        lease_s = float(s.decimal("lease_s", "60", min=Decimal(1)))
        longest = max((c.settings.timeout_s for c in channels), default=0.0)
        if lease_s < LEASE_TIMEOUTS * longest:
            raise s.error("lease_s", f"{lease_s:g} s is shorter than {LEASE_TIMEOUTS} times "
                                     f"the longest channel timeout_s ({longest:g} s): a "
                                     "delivery still being sent would be sent again")
        return cls(
            channels=tuple(channels),
            poll_s=float(s.decimal("poll_s", "1", min=Decimal("0.01"))),
            max_attempts=s.int("max_attempts", 10, min=1, max=100),
            backoff_s=backoff,
            max_backoff_s=float(s.decimal("max_backoff_s", "900", min=Decimal(str(backoff)))),
            lease_s=lease_s)


def _channel(c: Section, merchants: Mapping[str, Language]) -> Channel:
    merchant_id = c.str("merchant")
    if merchant_id not in merchants:
        raise c.error("merchant", f"no merchant {merchant_id!r}")
    name = c.str("name", pattern=CHANNEL_NAME)
    kind = c.enum("kind", Kind)
    events = frozenset(_event(c, e) for e in c.str_list("events", [e.value for e in Event]))
    if not events:
        raise c.error("events", "at least one event")
    common: dict[str, Any] = {
        "language": c.enum("language", Language, merchants[merchant_id]),
        "timeout_s": float(c.decimal("timeout_s", "10", min=Decimal("0.1")))}
    try:
        settings = _settings(c, kind, common)
    except ValueError as exc:   # the settings' own checks (URLs): they name the field
        field_name = str(exc).partition(":")[0]
        raise c.error(field_name, str(exc).partition(": ")[2] or str(exc)) from None
    return Channel(merchant_id, name, kind, events, settings)


def _event(c: Section, value: str) -> Event:
    try:
        return Event(value)
    except ValueError:
        allowed = ", ".join(e.value for e in Event)
        raise c.error("events", f"expected some of {allowed}, got {value!r}") from None


def _settings(c: Section, kind: Kind, common: dict[str, Any]) -> ChannelSettings:
    if kind in _WEBHOOKS:
        return WebhookSettings(url=c.str("url"), **common)
    if kind is Kind.CHATWORK:
        return ChatworkSettings(api_token=c.str("api_token"), room_id=c.str("room_id"),
                                api_base=c.str("api_base", "https://api.chatwork.com/v2"),
                                **common)
    if kind is Kind.LINEWORKS:
        key_file = c.path_value("private_key_file")
        try:
            pem = key_file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise c.error("private_key_file", f"cannot read {key_file}: {exc}") from None
        settings = LineWorksSettings(
            client_id=c.str("client_id"), client_secret=c.str("client_secret"),
            service_account=c.str("service_account"), private_key_pem=pem,
            bot_id=c.str("bot_id"), channel_id=c.str("channel_id"),
            auth_url=c.str("auth_url", AUTH_URL),
            api_base=c.str("api_base", "https://www.worksapis.com/v1.0"), **common)
        if not pem.lstrip().startswith("-----BEGIN"):
            raise c.error("private_key_file", f"{key_file} is not a PEM private key")
        return settings
    mail_to = c.str_list("mail_to")
    if not mail_to:
        raise c.error("mail_to", "at least one recipient")
    return MailSettings(host=c.str("host"), port=c.int("port", 25, min=1, max=65535),
                        mail_from=c.str("mail_from"), mail_to=mail_to,
                        starttls=c.bool("starttls", False), username=c.opt_str("username"),
                        password=c.opt_str("password"), **common)


def merchant_languages(merchants: Iterable[Any]) -> dict[str, Language]:
    """``{id: language}`` of :class:`shared.config.Merchant` rows."""
    return {m.id: m.language for m in merchants}
