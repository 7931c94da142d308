"""Twilio's delivery status callback as an aiohttp handler (not mounted by a server yet).

``StatusCallback`` is the public URL Twilio posts to; the signature covers that URL as
Twilio saw it, so it is configured, not taken from the request (a proxy changes it).
Answers: 204 recorded; 403 ``sms-signature-invalid``; 400 ``sms-callback-invalid``
naming the field; 404 ``sms-unknown`` for a message this site did not send. Errors are
``shared.http.ApiError``: mount the handler behind ``shared.http.error_middleware``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from ivr_platform.sms_store import SmsStore
from ivr_platform.sms_twilio import parse_status_callback, verify
from shared.http import ApiError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def twilio_status_handler(store: SmsStore, auth_token: str, public_url: str) -> Handler:
    async def status_callback(request: web.Request) -> web.StreamResponse:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        if not verify(auth_token, public_url, form, request.headers.get("X-Twilio-Signature")):
            raise ApiError(403, "sms-signature-invalid",
                           "X-Twilio-Signature does not match this request")
        try:
            update = parse_status_callback(form)
        except ValueError as exc:
            field, _, reason = str(exc).partition(": ")
            raise ApiError(400, "sms-callback-invalid", reason, field=field) from None
        record = await store.record_status("twilio", update.provider_id, update.status,
                                           update.error_code)
        if record is None:
            raise ApiError(404, "sms-unknown", f"no message {update.provider_id}")
        return web.Response(status=204)

    return status_callback
