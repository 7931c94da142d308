"""SMS on the callback site: the SMS worker in ``cleanup_ctx`` (when ``[sms]`` is set) and
Twilio's delivery status callback, ``POST /v1/sms/twilio/status`` (in ``/openapi.json``).

``status_callback_url`` is the public URL Twilio posts to; the signature covers that URL
as Twilio saw it, so it is configured, not taken from the request (a proxy changes it).
Answers: 204 recorded; 403 ``sms-signature-invalid``; 400 ``sms-callback-invalid``
naming the field; 404 ``sms-unknown`` for a message this site did not send, or
``sms-disabled`` without ``[sms] status_callback_url``; 503 ``sms-unavailable`` before the
database is connected. Errors are ``shared.http.ApiError``: mount the handler behind
``shared.http.error_middleware``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import asyncpg
from aiohttp import web

from ivr_platform.sms_config import SmsSettings
from ivr_platform.sms_outbox import SmsWorker
from ivr_platform.sms_store import SmsStore
from ivr_platform.sms_twilio import TwilioSms, parse_status_callback, verify
from shared.http import ApiError, database_errors_as_503, started
from shared.openapi import Operation, Param, Reply, add_operations, string
from shared.site import background

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SMS_STORE_KEY = web.AppKey("sms_store", SmsStore)
STATUS_PATH = "/v1/sms/twilio/status"


def install(app: web.Application, settings: SmsSettings | None,
            pool: Callable[[web.Application], asyncpg.Pool], *, owner: str,
            db_url: Callable[[web.Application], str] | None = None) -> None:
    """Mount the status callback; with ``[sms]``, run the SMS worker while the app runs
    (woken by NOTIFY through ``db_url``, else every ``poll_s``)."""
    add_operations(app, [Operation(
        "POST", STATUS_PATH, twilio_status_handler(settings), "Twilio's delivery status",
        "sms", {204: Reply("recorded")},
        params=(Param("X-Twilio-Signature", "header", string(64),
                      "base64 HMAC-SHA1 with the auth token of status_callback_url followed "
                      "by each POST parameter's name and value, sorted by name",
                      required=True),),
        body={"type": "object", "required": ["MessageSid", "MessageStatus"],
              "properties": {"MessageSid": string(64), "MessageStatus": string(32),
                             "ErrorCode": string(16)}},
        body_type="application/x-www-form-urlencoded",
        errors={400: ("sms-callback-invalid",), 403: ("sms-signature-invalid",),
                404: ("sms-unknown", "sms-disabled"),
                503: ("sms-unavailable", "database-unavailable")})])

    async def sms_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SMS_STORE_KEY] = SmsStore(pool(app))
        if settings is None:
            yield
            return
        async with aiohttp.ClientSession() as session:
            worker = SmsWorker(pool(app), TwilioSms(session, settings.twilio), settings,
                               owner=owner)
            url = db_url(app) if db_url is not None else None
            async with background(worker.run(url), "SMS delivery"):
                yield

    app.cleanup_ctx.append(sms_ctx)


def twilio_status_handler(settings: SmsSettings | None) -> Handler:
    @database_errors_as_503
    async def status_callback(request: web.Request) -> web.Response:
        if settings is None or settings.status_callback_url is None:
            raise ApiError(404, "sms-disabled", "no [sms] status_callback_url")
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        if not verify(settings.twilio.auth_token, settings.status_callback_url, form,
                      request.headers.get("X-Twilio-Signature")):
            raise ApiError(403, "sms-signature-invalid",
                           "X-Twilio-Signature does not match this request")
        try:
            update = parse_status_callback(form)
        except ValueError as exc:
            field, _, reason = str(exc).partition(": ")
            raise ApiError(400, "sms-callback-invalid", reason, field=field) from None
        store = started(request, SMS_STORE_KEY, "sms-unavailable")
        record = await store.record_status("twilio", update.provider_id, update.status,
                                           update.error_code)
        if record is None:
            raise ApiError(404, "sms-unknown", f"no message {update.provider_id}")
        return web.Response(status=204)

    return status_callback
