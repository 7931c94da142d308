"""Twilio's Programmable Messaging API (2010-04-01): send, fetch, and its status callbacks.

* Send: ``POST {base}/2010-04-01/Accounts/{AccountSid}/Messages.json``, a form with
  ``To``, ``From`` (a number) or ``MessagingServiceSid``, ``Body`` and optionally
  ``StatusCallback``; HTTP basic auth ``AccountSid:AuthToken`` (the header is built here:
  ``aiohttp.BasicAuth`` is deprecated in this aiohttp). 201 and the message resource
  (``sid``, ``status``, ``error_code``, ``error_message``, ``num_segments``).
* Fetch: ``GET .../Messages/{MessageSid}.json``, the same resource.
* Look-up: ``GET .../Messages.json?To=&From=&PageSize=``, newest first (``messages``).
  Twilio takes no idempotency key on a send, so after an attempt whose outcome is unknown
  (:mod:`ivr_platform.sms_outbox`) the message is looked for among the
  :data:`LOOKUP_PAGE` newest to that number (:meth:`TwilioSms.find`).
* Status callback: Twilio POSTs a form (``MessageSid``, ``MessageStatus``, ``ErrorCode``
  ...) to ``StatusCallback``, signed in ``X-Twilio-Signature``: base64 HMAC-SHA1 with
  the auth token of the URL followed by each POST parameter's name and value, sorted by
  name (:func:`signature`).

Errors are :mod:`ivr_platform.delivery`'s: :class:`~ivr_platform.delivery.Rejected` with
Twilio's error code, :class:`~ivr_platform.delivery.Unavailable`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from yarl import URL

from ivr_platform.delivery import Rejected, Unavailable, call, check_url, json_object
from ivr_platform.sms import SmsStatus
from shared.phone import E164

API_VERSION = "2010-04-01"
DEFAULT_BASE_URL = "https://api.twilio.com"
LOOKUP_PAGE = 50


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the provider says of one message."""

    provider_id: str
    status: SmsStatus
    error_code: int | None = None
    error_message: str | None = None
    segments: int | None = None


@dataclass(frozen=True, slots=True)
class TwilioSettings:
    account_sid: str
    auth_token: str
    base_url: str = DEFAULT_BASE_URL
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        check_url("base_url", self.base_url)

    def __repr__(self) -> str:   # never the token in a log line
        return f"TwilioSettings(account_sid={self.account_sid!r}, base_url={self.base_url!r})"


class TwilioSms:
    """One account; ``session`` belongs to the caller (the composition root)."""

    provider = "twilio"

    def __init__(self, session: aiohttp.ClientSession, settings: TwilioSettings) -> None:
        self._session = session
        self.settings = settings
        token = f"{settings.account_sid}:{settings.auth_token}".encode()
        self._auth = "Basic " + base64.b64encode(token).decode("ascii")
        self._messages = (f"{settings.base_url.rstrip('/')}/{API_VERSION}/Accounts/"
                          f"{settings.account_sid}/Messages")

    async def send(self, to: E164, sender: E164 | str, body: str,
                   status_callback: str | None = None) -> Receipt:
        """``sender``: a number, or a Messaging Service SID (``MG…``)."""
        form = {"To": str(to), "Body": body}
        if isinstance(sender, E164):
            form["From"] = str(sender)
        else:
            form["MessagingServiceSid"] = sender
        if status_callback:
            form["StatusCallback"] = status_callback
        return await self._call("POST", f"{self._messages}.json", form)

    async def fetch(self, provider_id: str) -> Receipt:
        return await self._call("GET", f"{self._messages}/{provider_id}.json", None)

    async def find(self, to: E164, sender: E164 | str, body: str, since: datetime,
                   known: Collection[str]) -> Receipt | None:
        """The message sent to ``to`` with ``body`` (from ``sender`` when it is a number)
        created at ``since`` or later and not one of ``known`` (SIDs already recorded),
        among the :data:`LOOKUP_PAGE` newest to ``to``; None when there is none."""
        query = {"To": str(to), "PageSize": str(LOOKUP_PAGE)}
        if isinstance(sender, E164):
            query["From"] = str(sender)
        url = f"{self._messages}.json"
        found = await self._request("GET", str(URL(url).with_query(query)), None)
        messages = found.get("messages")
        if not isinstance(messages, list):
            raise Unavailable(f"{url}: a message list without messages")
        for message in messages:
            if (isinstance(message, dict) and message.get("body") == body
                    and message.get("sid") not in known
                    and _created(message) >= since.replace(microsecond=0)):
                return _receipt(message, url)
        return None

    async def _call(self, method: str, url: str, form: dict[str, str] | None) -> Receipt:
        return _receipt(await self._request(method, url, form), url)

    async def _request(self, method: str, url: str, form: dict[str, str] | None
                       ) -> dict[str, Any]:
        status, text = await call(
            self._session, method, url, data=form, timeout_s=self.settings.timeout_s,
            headers={"Authorization": self._auth, "Accept": "application/json"})
        body = json_object(text)
        if status >= 400:
            code = body.get("code")
            raise Rejected(status, code if isinstance(code, int) else None,
                           str(body.get("message") or text[:200]))
        return body


def _created(message: Mapping[str, Any]) -> datetime:
    """A resource's ``date_created`` (RFC 2822, to the second); the epoch when missing."""
    raw = message.get("date_created")
    try:
        return parsedate_to_datetime(raw) if isinstance(raw, str) else _EPOCH
    except (TypeError, ValueError):
        return _EPOCH


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _receipt(body: Mapping[str, Any], url: str) -> Receipt:
    sid, status = body.get("sid"), body.get("status")
    if not isinstance(sid, str) or not isinstance(status, str):
        raise Unavailable(f"{url}: a message resource without sid or status: "
                             f"{json.dumps(body)[:200]}")
    try:
        known = SmsStatus(status)
    except ValueError:
        raise Unavailable(f"{url}: unknown message status {status!r}") from None
    segments = body.get("num_segments")
    return Receipt(sid, known, _int_or_none(body.get("error_code")),
                   body.get("error_message") or None,
                   int(segments) if isinstance(segments, str | int) and str(segments).isdigit()
                   else None)


def _int_or_none(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """``X-Twilio-Signature`` of a POST of ``params`` to ``url``."""
    payload = url + "".join(f"{k}{params[k]}" for k in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def verify(auth_token: str, url: str, params: Mapping[str, str], header: str | None) -> bool:
    return header is not None and hmac.compare_digest(
        signature(auth_token, url, params).encode(), header.encode())


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    provider_id: str
    status: SmsStatus
    error_code: int | None


def parse_status_callback(params: Mapping[str, str]) -> StatusUpdate:
    """A status callback's form; ValueError names the field that is wrong."""
    sid = params.get("MessageSid") or params.get("SmsSid")
    if not sid:
        raise ValueError("MessageSid: required")
    raw = params.get("MessageStatus") or params.get("SmsStatus") or ""
    try:
        status = SmsStatus(raw)
    except ValueError:
        raise ValueError(f"MessageStatus: unknown status {raw!r}") from None
    return StatusUpdate(sid, status, _int_or_none(params.get("ErrorCode")))
