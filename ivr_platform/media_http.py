"""The media API of the callback site: a merchant's guidance audio and its calls'
recordings (the merchant's bearer token, :func:`shared.http.authenticated_merchant`, selects
the tenant; all declared as :class:`shared.openapi.Operation`).

* ``PUT /v1/media/guidance/{name}``: the raw body is an mp3, m4a/mp4 or wav file (at most
  ``[media] max_upload_bytes``); converted (:mod:`ivr_platform.audio`) and stored as the
  merchant's guidance ``name``: 201 new, 200 replaced, with its ``media`` reference
* ``GET /v1/media/guidance``, ``GET|DELETE /v1/media/guidance/{name}``
* ``GET /v1/recordings?limit=&offset=&edge_call_id=``, ``GET|DELETE
  /v1/recordings/{recording_id}``: each with a signed ``link`` valid ``[media] link_ttl_s``
* ``GET /v1/recordings/{recording_id}/audio?expires=&signature=``: the WAV file, for the
  link alone (no token): 403 ``link-invalid`` / ``link-expired``

Error ids: ``audio-too-large`` (413), ``audio-unsupported`` (415), ``audio-unreadable``,
``audio-too-long``, ``audio-silent`` (422), ``invalid-field`` (400, with ``field``),
``not-found`` (404), ``guidance-in-use`` (409: a configured flow of the merchant plays it),
``body-timeout`` (408), ``auth-*`` (401), ``media-unavailable`` (503 before the database is
connected, or an upload that cannot be written: a full disk, a directory not writable),
``database-unavailable`` (503 while it is away).

:func:`install` mounts the guidance routes when ``[media] guidance_dir`` is set and the
recordings routes, with the expiry job in ``cleanup_ctx``, when ``recordings_dir`` is.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from ivr_platform.audio import AudioRejected, too_large
from ivr_platform.guidance import NAME, Guidance, GuidanceLibrary, plays
from ivr_platform.media_config import MediaSettings
from ivr_platform.notify_config import NotifySettings
from ivr_platform.recordings import (
    LinkRefused,
    LinkSigner,
    Recording,
    RecordingStore,
    audio_path,
    expire_forever,
    link_for,
)
from ivr_platform.transcribe import PocketSphinxTranscriber
from ivr_platform.transcribe_outbox import TranscriptionWorker
from shared.http import (
    ApiError,
    InvalidField,
    ServiceUnavailable,
    authenticated_merchant,
    database_errors_as_503,
    json_response,
    query_int,
    started,
)
from shared.language import Language
from shared.openapi import (
    BINARY,
    MERCHANT,
    TIMESTAMP,
    Operation,
    Param,
    Reply,
    Schema,
    add_operations,
    nullable,
    string,
)
from shared.site import background

LIBRARY_KEY = web.AppKey("media_guidance", GuidanceLibrary)
RECORDINGS_KEY = web.AppKey("media_recordings", RecordingStore)
SIGNER_KEY = web.AppKey("media_link_signer", LinkSigner)
MEDIA_SETTINGS_KEY = web.AppKey("media_settings", MediaSettings)
#: (merchant, guidance name) -> the configured flows of the merchant that play it
InUse = Callable[[str, str], Sequence[str]]
IN_USE_KEY: web.AppKey[InUse] = web.AppKey("media_guidance_in_use")
UPLOAD_TIMEOUT_S = 120.0
CHUNK = 64 * 1024
MAX_PAGE = 1000


def install(app: web.Application, settings: MediaSettings,
            pool: Callable[[web.Application], asyncpg.Pool],
            in_use: InUse = lambda merchant, name: (),
            notify: NotifySettings | None = None, *,
            owner: str | None = None,
            db_url: Callable[[web.Application], str] | None = None) -> None:
    """``notify``: a stored recording queues its ``message_recorded`` notifications. With
    ``[media] transcribe`` the transcription worker runs while the app runs (as ``owner``,
    woken by NOTIFY through ``db_url``)."""
    app[MEDIA_SETTINGS_KEY] = settings
    app[IN_USE_KEY] = in_use
    if settings.guidance_dir is not None:
        app[LIBRARY_KEY] = GuidanceLibrary(settings.guidance_dir, settings.limits)
        add_operations(app, GUIDANCE_OPERATIONS)
    if settings.recordings_dir is None:
        return
    app[SIGNER_KEY] = LinkSigner.from_file(settings.link_secret_file)
    add_operations(app, RECORDING_OPERATIONS)
    directory = settings.recordings_dir

    async def recordings_ctx(app: web.Application) -> AsyncIterator[None]:
        store = app[RECORDINGS_KEY] = RecordingStore(pool(app), directory, notify)
        async with background(expire_forever(store, settings.sweep_s), "recording expiry"):
            if not settings.transcribe:
                yield
                return
            transcriber = PocketSphinxTranscriber(settings.sphinx_model)
            worker = TranscriptionWorker(
                store, transcriber, owner=owner or f"media-{socket.gethostname()}-{os.getpid()}")
            try:
                async with background(worker.run(db_url(app) if db_url else None),
                                      "transcription"):
                    yield
            finally:
                transcriber.close()

    app.cleanup_ctx.append(recordings_ctx)


# --- guidance ---------------------------------------------------------------------------


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not NAME.fullmatch(name):
        raise InvalidField("name", "expected 1..64 of a-z, 0-9, _ and -, starting with a "
                                   "letter or digit")
    return name


def _language(request: web.Request) -> Language | None:
    """``?language=ja|en``: that language's own file; absent: the one for every language."""
    value = request.query.get("language")
    if value is None:
        return None
    try:
        return Language(value)
    except ValueError:
        raise InvalidField("language", "expected ja or en") from None


def _audio_error(exc: AudioRejected) -> ApiError:
    return ApiError(exc.status, exc.error_id, str(exc))


async def _spool_body(request: web.Request, directory: Path, limit: int) -> Path:
    """The request body in a file of ``directory``; 413 ``audio-too-large`` past ``limit``
    bytes (declared or sent), 408 ``body-timeout`` if it comes slower than
    :data:`UPLOAD_TIMEOUT_S`."""
    if request.content_length is not None and request.content_length > limit:
        raise _audio_error(too_large(limit))
    handle, name = tempfile.mkstemp(prefix="upload-", dir=directory)
    path = Path(name)
    out = os.fdopen(handle, "wb")
    try:
        size = 0
        async with asyncio.timeout(UPLOAD_TIMEOUT_S):
            async for chunk in request.content.iter_chunked(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise _audio_error(too_large(limit))
                await asyncio.to_thread(out.write, chunk)
    except TimeoutError:
        _discard(path)
        raise ApiError(408, "body-timeout",
                       f"the upload did not arrive within {UPLOAD_TIMEOUT_S:.0f} s") from None
    except BaseException:
        _discard(path)
        raise
    finally:
        out.close()
    return path


def _discard(path: Path) -> None:
    path.unlink(missing_ok=True)


async def put_guidance(request: web.Request) -> web.Response:
    """Upload the merchant's own guidance audio (mp3, m4a/mp4 or wav as the raw body). It
    is converted to 8 kHz 16-bit mono WAV at -23 LUFS and replaces a guidance of the same
    name; the reply gives the ``media`` reference a flow plays and the measured length
    and loudness."""
    merchant = authenticated_merchant(request)
    name, language = _name(request), _language(request)
    library = request.app[LIBRARY_KEY]
    try:
        upload = await _spool_body(request, library.spool(), library.limits.max_bytes)
        try:
            existed = library.has(merchant, name, language)
            guidance = await library.add(merchant, name, upload, language)
        finally:
            _discard(upload)
    except AudioRejected as exc:
        raise _audio_error(exc) from None
    except OSError as exc:   # the disk is full, the directory not writable
        raise ServiceUnavailable("media-unavailable",
                                 f"cannot store the guidance: {exc.strerror}") from None
    return json_response(guidance.to_json(), status=200 if existed else 201)


async def list_guidance(request: web.Request) -> web.Response:
    """The merchant's guidance, by name."""
    merchant = authenticated_merchant(request)
    return json_response({"items": [g.to_json()
                                    for g in request.app[LIBRARY_KEY].list(merchant)]})


def _guidance(request: web.Request) -> tuple[str, str, Guidance]:
    merchant = authenticated_merchant(request)
    name, language = _name(request), _language(request)
    guidance = request.app[LIBRARY_KEY].get(merchant, name, language)
    if guidance is None:
        raise ApiError(404, "not-found", f"no guidance {name!r}" + (
            "" if language is None else f" in {language.value!r}"))
    return merchant, name, guidance


async def get_guidance(request: web.Request) -> web.Response:
    """One guidance of the merchant."""
    return json_response(_guidance(request)[2].to_json())


async def delete_guidance(request: web.Request) -> web.Response:
    """Delete a guidance's file (``?language=``: that language's own); 409
    ``guidance-in-use`` while a configured flow of the merchant plays it and without that
    file a call in some language would find none (:func:`ivr_platform.guidance.plays`)."""
    merchant, name, guidance = _guidance(request)
    library = request.app[LIBRARY_KEY]
    flows = request.app[IN_USE_KEY](merchant, name)
    left = [f for f in library.files(merchant, name)
            if (f.value if f is not None else None) != guidance.language]
    if flows and not all(plays(left, language) for language in Language):
        raise ApiError(409, "guidance-in-use", f"guidance {name!r} is played by flow "
                                               f"{', '.join(sorted(flows))}: change the flow "
                                               "first")
    library.delete(merchant, name, None if guidance.language is None
                   else Language(guidance.language))
    return web.Response(status=204)


# --- recordings -------------------------------------------------------------------------


def _store(request: web.Request) -> RecordingStore:
    return started(request, RECORDINGS_KEY, "media-unavailable")


def _recording_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["recording_id"])
    except ValueError:
        raise InvalidField("recording_id", "expected a UUID") from None


def _with_link(request: web.Request, recording: Recording) -> dict[str, Any]:
    settings = request.app[MEDIA_SETTINGS_KEY]
    link = link_for(request.app[SIGNER_KEY], recording, timedelta(seconds=settings.link_ttl_s),
                    datetime.now(UTC))
    url = settings.public_url + link.path if settings.public_url else None
    return {**recording.to_json(), "link": {"path": link.path, "url": url,
                                            "expires_at": link.expires_at.isoformat()}}


@database_errors_as_503
async def list_recordings(request: web.Request) -> web.Response:
    """The merchant's recordings not expired, newest first, each with a signed link."""
    merchant = authenticated_merchant(request)
    store = _store(request)
    call = request.query.get("edge_call_id")
    if call is not None and not 1 <= len(call) <= 128:
        raise InvalidField("edge_call_id", "expected 1..128 characters")
    found = await store.list(
        merchant, limit=query_int(request.query, "limit", low=1, high=MAX_PAGE, default=100),
        offset=query_int(request.query, "offset", low=0, high=10**9, default=0),
        edge_call_id=call)
    return json_response({"items": [_with_link(request, r) for r in found]})


async def _recording(request: web.Request) -> tuple[str, Recording]:
    merchant = authenticated_merchant(request)
    recording_id = _recording_id(request)
    recording = await _store(request).get(merchant, recording_id)
    if recording is None:
        raise ApiError(404, "not-found", f"no recording {recording_id}")
    return merchant, recording


@database_errors_as_503
async def get_recording(request: web.Request) -> web.Response:
    """One recording with a signed link to its audio."""
    return json_response(_with_link(request, (await _recording(request))[1]))


@database_errors_as_503
async def delete_recording(request: web.Request) -> web.Response:
    """Delete a recording now (its file and its row)."""
    merchant, recording = await _recording(request)
    await _store(request).delete(merchant, recording.id)
    return web.Response(status=204)


@database_errors_as_503
async def get_recording_audio(request: web.Request) -> web.StreamResponse:
    """The recording's WAV file, for a signed link (``expires`` and ``signature`` from the
    ``link`` of ``GET /v1/recordings/{recording_id}``); no token."""
    recording_id = _recording_id(request)
    try:
        request.app[SIGNER_KEY].verify(audio_path(recording_id), request.query,
                                       datetime.now(UTC))
    except LinkRefused as exc:
        raise ApiError(403, exc.error_id, str(exc)) from None
    store = _store(request)
    recording = await store.by_id(recording_id)
    path = None if recording is None else store.path(recording)
    if path is None or not path.is_file():
        raise ApiError(404, "not-found", f"no recording {recording_id}")
    return web.FileResponse(path, headers={"Content-Type": "audio/wav",
                                           "Cache-Control": "private, no-store"})


# --- declarations -----------------------------------------------------------------------

GUIDANCE: Schema = {
    "type": "object",
    "required": ["merchant_id", "name", "media", "seconds", "bytes", "loudness_lufs",
                 "source_format", "uploaded_at"],
    "properties": {
        "merchant_id": {"type": "string"}, "name": {"type": "string"},
        "media": {"type": "string", "description": "what a flow plays: "
                                                   "sound:cbgw-guidance/<merchant>/<name>"},
        "seconds": {"type": "number"}, "bytes": {"type": "integer"},
        "loudness_lufs": {"type": "number", "description": "of the converted file"},
        "source_format": {"enum": ["mp3", "mp4", "wav"]}, "source_codec": {"type": "string"},
        "source_loudness_lufs": {"type": "number"}, "uploaded_at": TIMESTAMP,
        "language": nullable({"enum": ["ja", "en"], "description": "that language's own "
                              "file; null: the file for every language"})}}
_NAME_PARAM = Param("name", "path", string(64, pattern=NAME.pattern),
                    "the guidance's name: a-z, 0-9, _ and -")
_LANGUAGE_PARAM = Param("language", "query", {"enum": ["ja", "en"]},
                        "that language's own file (a call in it plays it instead of the "
                        "file for every language); absent: the file for every language")
_ID_PARAM = Param("recording_id", "path", {"type": "string", "format": "uuid"})
LINK: Schema = {"type": "object", "required": ["path", "url", "expires_at"],
                "properties": {"path": {"type": "string", "description": "path and query"},
                               "url": nullable({"type": "string"}), "expires_at": TIMESTAMP}}
RECORDING: Schema = {
    "type": "object",
    "required": ["id", "merchant_id", "duration_ms", "size_bytes", "created_at", "expires_at",
                 "transcript", "link"],
    "properties": {
        "id": {"type": "string", "format": "uuid"}, "merchant_id": {"type": "string"},
        "call_id": nullable({"type": "string"}), "callback_id": nullable({"type": "string"}),
        "edge_call_id": nullable({"type": "string"}), "duration_ms": {"type": "integer"},
        "size_bytes": {"type": "integer"}, "created_at": TIMESTAMP, "expires_at": TIMESTAMP,
        "transcript": nullable({"type": "string"}), "link": LINK}}
_AUDIO_ERRORS = {408: ("body-timeout",), 413: ("audio-too-large",),
                 415: ("audio-unsupported",),
                 422: ("audio-unreadable", "audio-too-long", "audio-silent")}
_TAG = "media"
_UNAVAILABLE = {503: ("media-unavailable", "database-unavailable")}

GUIDANCE_OPERATIONS = [
    Operation("PUT", "/v1/media/guidance/{name}", put_guidance, "Upload a guidance", _TAG,
              {200: Reply("replaced", GUIDANCE), 201: Reply("stored", GUIDANCE)},
              access=MERCHANT, params=(_NAME_PARAM, _LANGUAGE_PARAM), body=BINARY,
              body_type="application/octet-stream",
              errors={**_AUDIO_ERRORS, 503: ("media-unavailable",)}),
    Operation("GET", "/v1/media/guidance", list_guidance, "The merchant's guidance", _TAG,
              {200: Reply("by name, then language", {
                  "type": "object", "required": ["items"],
                  "properties": {"items": {"type": "array", "items": GUIDANCE}}})},
              access=MERCHANT),
    Operation("GET", "/v1/media/guidance/{name}", get_guidance, "One guidance", _TAG,
              {200: Reply("the guidance", GUIDANCE)}, access=MERCHANT,
              params=(_NAME_PARAM, _LANGUAGE_PARAM), errors={404: ("not-found",)}),
    Operation("DELETE", "/v1/media/guidance/{name}", delete_guidance, "Delete a guidance", _TAG,
              {204: Reply("deleted")}, access=MERCHANT, params=(_NAME_PARAM, _LANGUAGE_PARAM),
              errors={404: ("not-found",), 409: ("guidance-in-use",)}),
]

RECORDING_OPERATIONS = [
    Operation("GET", "/v1/recordings", list_recordings, "The merchant's recordings", _TAG,
              {200: Reply("newest first", {"type": "object", "required": ["items"],
                                           "properties": {"items": {"type": "array",
                                                                    "items": RECORDING}}})},
              access=MERCHANT,
              params=(Param("limit", "query", {"type": "integer", "minimum": 1,
                                               "maximum": MAX_PAGE}),
                      Param("offset", "query", {"type": "integer", "minimum": 0,
                                                "maximum": 10**9}),
                      Param("edge_call_id", "query", string(128), "one call's recordings")),
              errors=_UNAVAILABLE),
    Operation("GET", "/v1/recordings/{recording_id}", get_recording, "One recording", _TAG,
              {200: Reply("with a signed link", RECORDING)}, access=MERCHANT,
              params=(_ID_PARAM,), errors={404: ("not-found",), **_UNAVAILABLE}),
    Operation("DELETE", "/v1/recordings/{recording_id}", delete_recording,
              "Delete a recording", _TAG, {204: Reply("deleted")}, access=MERCHANT,
              params=(_ID_PARAM,), errors={404: ("not-found",), **_UNAVAILABLE}),
    Operation("GET", "/v1/recordings/{recording_id}/audio", get_recording_audio,
              "A recording's audio, by signed link", _TAG,
              {200: Reply("the WAV file", BINARY, content_type="audio/wav")},
              params=(_ID_PARAM,
                      Param("expires", "query", {"type": "string"}, "unix seconds"),
                      Param("signature", "query", {"type": "string"},
                            "HMAC-SHA256 of path and expiry, hex")),
              errors={403: ("link-invalid", "link-expired"), 404: ("not-found",),
                      **_UNAVAILABLE}),
]
