"""A local server speaking Twilio's Messages API (2010-04-01), for the SMS adapter's tests.

It checks HTTP basic auth, lists messages (newest first, by ``To`` and ``From``),
answers Twilio's JSON resources and errors (codes 20003, 20404, 21211, 21602, 21603,
21610), keeps what it was sent, and delivers: it POSTs status callbacks to
``StatusCallback`` signed as Twilio signs them (HMAC-SHA1 of the URL and the sorted
parameters, written here from Twilio's documentation, not from the adapter). Its
``num_segments`` is Twilio's count of the body (:func:`twilio_segments`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import aiohttp
from aiohttp import web

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "f" * 32
#: GSM 03.38's basic table and the extension table's characters (each 2 septets)
GSM_BASIC = ("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
             "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM_EXTENDED = "^{}\\[~]|€\f"


def twilio_segments(body: str) -> int:
    """How many segments Twilio sends ``body`` as: GSM-7 160 septets in one, else 153 a
    segment; UCS-2 70 UTF-16 units in one, else 67 a segment (its documentation's figures;
    a character is not split across segments, which these bodies never need)."""
    if all(c in GSM_BASIC or c in GSM_EXTENDED for c in body):
        units, single, part = sum(1 + (c in GSM_EXTENDED) for c in body), 160, 153
    else:
        units, single, part = len(body.encode("utf-16-le")) // 2, 70, 67
    return 1 if units <= single else math.ceil(units / part)


@dataclass
class FakeTwilio:
    account_sid: str = ACCOUNT_SID
    auth_token: str = AUTH_TOKEN
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    received: list[dict[str, str]] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)
    unsubscribed: set[str] = field(default_factory=set)
    fail_next: list[int] = field(default_factory=list)   # HTTP statuses to answer first

    def app(self) -> web.Application:
        app = web.Application()
        base = "/2010-04-01/Accounts/{account}/Messages"
        app.router.add_post(base + ".json", self._create)
        app.router.add_get(base + ".json", self._list)
        app.router.add_get(base + "/{sid}.json", self._fetch)
        return app

    def _error(self, status: int, code: int, message: str) -> web.Response:
        return web.json_response({"code": code, "message": message, "status": status,
                                  "more_info": f"https://www.twilio.com/docs/errors/{code}"},
                                 status=status)

    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization")
        self.auth_headers.append(header)
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return (header == f"Basic {expected}"
                and request.match_info["account"] == self.account_sid)

    async def _create(self, request: web.Request) -> web.Response:
        if self.fail_next:
            return web.Response(status=self.fail_next.pop(0), text="upstream trouble")
        if not self._authorised(request):
            return self._error(401, 20003, "Authenticate")
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        self.received.append(form)
        to = form.get("To", "")
        if not re.fullmatch(r"\+[1-9][0-9]{6,14}", to):
            return self._error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return self._error(400, 21603, "A 'From' phone number is required.")
        if not form.get("Body"):
            return self._error(400, 21602, "Message body is required.")
        if to in self.unsubscribed:
            return self._error(400, 21610, "Attempt to send to unsubscribed recipient")
        sid = "SM" + secrets.token_hex(16)
        resource = {
            "sid": sid, "account_sid": self.account_sid, "to": to,
            "from": form.get("From"), "messaging_service_sid": form.get("MessagingServiceSid"),
            "body": form["Body"], "status": "accepted" if form.get("MessagingServiceSid")
            else "queued", "num_segments": str(twilio_segments(form["Body"])),
            "direction": "outbound-api",
            "error_code": None, "error_message": None, "price": None, "price_unit": "USD",
            "api_version": "2010-04-01", "status_callback": form.get("StatusCallback"),
            "date_created": format_datetime(datetime.now(UTC)),
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json"}
        self.messages[sid] = resource
        return web.json_response(resource, status=201)

    async def _list(self, request: web.Request) -> web.Response:
        """Newest first, filtered by ``To`` and ``From``, ``PageSize`` of them."""
        if self.fail_next:
            return web.Response(status=self.fail_next.pop(0), text="upstream trouble")
        if not self._authorised(request):
            return self._error(401, 20003, "Authenticate")
        query = request.query
        found = [m for m in reversed(self.messages.values())
                 if m["to"] == query.get("To", m["to"])
                 and m["from"] == query.get("From", m["from"])]
        return web.json_response({"messages": found[:int(query.get("PageSize", "50"))]})

    async def _fetch(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._error(401, 20003, "Authenticate")
        resource = self.messages.get(request.match_info["sid"])
        if resource is None:
            return self._error(404, 20404, "The requested resource was not found")
        return web.json_response(resource)

    def sign(self, url: str, params: dict[str, str]) -> str:
        data = url + "".join(key + params[key] for key in sorted(params))
        mac = hmac.new(self.auth_token.encode(), data.encode(), hashlib.sha1)
        return base64.b64encode(mac.digest()).decode()

    async def deliver(self, sid: str, status: str, error_code: int | None = None,
                      signature: str | None = None) -> int:
        """POST one status callback for ``sid``; the HTTP status it got."""
        resource = self.messages[sid]
        resource["status"] = status
        resource["error_code"] = error_code
        params = {"AccountSid": self.account_sid, "ApiVersion": "2010-04-01",
                  "From": resource["from"] or "", "To": resource["to"], "MessageSid": sid,
                  "SmsSid": sid, "MessageStatus": status, "SmsStatus": status}
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        url = resource["status_callback"]
        headers = {"X-Twilio-Signature": signature or self.sign(url, params)}
        async with aiohttp.ClientSession() as session, session.post(
                url, data=params, headers=headers) as response:
            return response.status
