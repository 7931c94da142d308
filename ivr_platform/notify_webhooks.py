"""Call notifications to chat tools: Slack, Microsoft Teams (a Workflows webhook), Google
Chat and Chatwork. Each webhook URL is the destination's secret: errors name its host only.

* **Slack** incoming webhook: ``POST`` JSON ``{"text", "blocks"}``; 200 ``ok``; errors
  are plain-text ids (``invalid_payload``, ``no_service``, ``channel_is_archived``).
* **Teams** Workflows ("When a Teams webhook request is received"): ``POST`` JSON
  ``{"type": "message", "attachments": [<Adaptive Card 1.4>]}``; 202 Accepted.
* **Google Chat** space webhook (``.../v1/spaces/{space}/messages?key=…&token=…``):
  ``POST`` JSON ``{"text"}``, ``*bold*`` and ``<url|label>`` markup; 200 and the message.
* **Chatwork** API v2 (:class:`ChatworkRoom`): a room's messages with an API token.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import aiohttp

from ivr_platform.delivery import Rejected, call, check_url, json_object
from ivr_platform.notice import CallNotice
from shared.language import Language


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    url: str
    language: Language = Language.JAPANESE
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        check_url("url", self.url)

    def __repr__(self) -> str:
        return f"WebhookSettings(url=<secret>, language={self.language.value!r})"


class _Webhook(abc.ABC):
    def __init__(self, session: aiohttp.ClientSession, settings: WebhookSettings) -> None:
        self._session = session
        self.settings = settings

    @abc.abstractmethod
    def payload(self, notice: CallNotice) -> dict[str, Any]:
        """The JSON body this destination takes."""

    async def notify(self, notice: CallNotice) -> None:
        status, text = await call(
            self._session, "POST", self.settings.url, json_body=self.payload(notice),
            timeout_s=self.settings.timeout_s,
            headers={"Content-Type": "application/json; charset=UTF-8"})
        if status >= 400:
            raise Rejected(status, _error_code(text), text[:200])


def _error_code(text: str) -> str | None:
    """Slack answers an id in plain text; Google Chat a JSON error with a status."""
    body = json_object(text)
    if not body:
        return text.strip()[:64] or None
    error = body.get("error")
    if isinstance(error, dict):
        return str(error.get("status") or error.get("code") or "") or None
    return None


class SlackWebhook(_Webhook):
    def payload(self, notice: CallNotice) -> dict[str, Any]:
        lang = self.settings.language
        fields = [{"type": "mrkdwn", "text": f"*{_slack(k)}*\n{_slack(v)}"}
                  for k, v in notice.fields(lang)]
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": notice.title(lang)}}]
        for start in range(0, len(fields), 10):   # a section holds at most 10 fields
            blocks.append({"type": "section", "fields": fields[start:start + 10]})
        link = notice.link(lang)
        if link is not None:
            blocks.append({"type": "section", "text": {
                "type": "mrkdwn", "text": f"<{link[1]}|{_slack(link[0])}>"}})
        return {"text": notice.text(lang), "blocks": blocks}


def _slack(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class TeamsWorkflowWebhook(_Webhook):
    def payload(self, notice: CallNotice) -> dict[str, Any]:
        lang = self.settings.language
        card: dict[str, Any] = {
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard", "version": "1.4",
            "body": [{"type": "TextBlock", "text": notice.title(lang), "weight": "Bolder",
                      "size": "Medium", "wrap": True},
                     {"type": "FactSet", "facts": [{"title": k, "value": v}
                                                   for k, v in notice.fields(lang)]}]}
        link = notice.link(lang)
        if link is not None:
            card["actions"] = [{"type": "Action.OpenUrl", "title": link[0], "url": link[1]}]
        return {"type": "message", "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None,
            "content": card}]}


class GoogleChatWebhook(_Webhook):
    def payload(self, notice: CallNotice) -> dict[str, Any]:
        lang = self.settings.language
        lines = [f"*{notice.title(lang)}*"]
        lines += [f"{k}: {v}" for k, v in notice.fields(lang)]
        link = notice.link(lang)
        if link is not None:
            lines.append(f"<{link[1]}|{link[0]}>")
        return {"text": "\n".join(lines)}


@dataclass(frozen=True, slots=True)
class ChatworkSettings:
    api_token: str
    room_id: str
    language: Language = Language.JAPANESE
    api_base: str = "https://api.chatwork.com/v2"
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        check_url("api_base", self.api_base)

    def __repr__(self) -> str:
        return f"ChatworkSettings(room_id={self.room_id!r}, api_token=<secret>)"


class ChatworkRoom:
    """Chatwork API v2: ``POST /rooms/{room_id}/messages``, header ``X-ChatWorkToken``,
    form ``body`` in Chatwork's markup (``[info][title]…[/title]…[/info]``); 200 and the
    ``message_id``; errors are ``{"errors": [...]}``."""

    def __init__(self, session: aiohttp.ClientSession, settings: ChatworkSettings) -> None:
        self._session = session
        self.settings = settings

    def body(self, notice: CallNotice) -> str:
        lang = self.settings.language
        lines = [f"{k}: {v}" for k, v in notice.fields(lang)]
        link = notice.link(lang)
        if link is not None:
            lines.append(f"{link[0]}: {link[1]}")
        return f"[info][title]{notice.title(lang)}[/title]" + "\n".join(lines) + "[/info]"

    async def notify(self, notice: CallNotice) -> None:
        s = self.settings
        status, text = await call(
            self._session, "POST", f"{s.api_base.rstrip('/')}/rooms/{s.room_id}/messages",
            data={"body": self.body(notice), "self_unread": "0"}, timeout_s=s.timeout_s,
            headers={"X-ChatWorkToken": s.api_token, "Accept": "application/json"})
        if status >= 400:
            errors = json_object(text).get("errors")
            message = "; ".join(map(str, errors)) if isinstance(errors, list) else text[:200]
            raise Rejected(status, None, message)
