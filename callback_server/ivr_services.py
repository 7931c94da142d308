"""What a round's IVR verbs reach beyond ARI: the recordings store, SMS and webhooks
(:class:`IvrServices`, the real :class:`~callback_server.call_ports.IvrPort`).

* **Recordings** (``record``): Asterisk records into its ``recording`` spool
  (``[media] asterisk_recordings_dir``, as this site sees it); a finished one is moved
  into :class:`~ivr_platform.recordings.RecordingStore` (``[media] recordings_dir``) for
  the merchant's retention, with the call's ids and the caller (its ``message_recorded``
  notification is queued with the row; with ``[media] transcribe``, by the transcription
  worker with its transcript, after the call). Its id is what the node's variable gets. A file
  that is missing, not WAV or shorter than :data:`MIN_RECORDING_S` is nothing recorded.
* **SMS** (``sms``): :class:`~ivr_platform.sms_store.SmsSender` writes the message's row in
  a task of its own (the call never waits for it); the site's SMS worker
  (:mod:`ivr_platform.sms_outbox`) sends it, with retries across restarts.
* **Speech** (``say`` with ``text``): the filled text (:func:`ivr_platform.speech.spoken_text`: a
  ``{name:digits}`` value read digit by digit, :mod:`ivr_platform.speech`) is rendered by
  :class:`~ivr_platform.tts.PromptCache` into the guidance library's ``_tts`` directory
  (``[media] guidance_dir``, which the callback Asterisk reads as ``sounds/cbgw-guidance``)
  and played as ``sound:cbgw-guidance/_tts/<key>`` (:func:`ivr_platform.guidance.speech_ref`).
  A cached text is found without awaiting (:meth:`IvrServices.spoken`); another is
  rendered in a task (:meth:`IvrServices.speak`), the call's events going on meanwhile. A
  text that cannot be rendered is logged and skipped. A flow's texts without variables are
  rendered when the site starts (:meth:`IvrServices.prerender`). The least recently used
  renders are evicted every ``[media] sweep_s`` (:func:`evict_forever`, ``[media]
  tts_cache_max_days`` / ``tts_cache_max_bytes``); an evicted text renders again.
* **Webhooks** (``webhook``): only to public addresses (:class:`PublicResolver`; an IP
  literal URL too): a merchant's flow cannot make the site call its own network (SSRF).
  ``POST`` of a JSON body, signed like the link between the
  sites (:mod:`shared.signing`: ``webhook-id``, ``webhook-timestamp``, ``webhook-key-id``,
  ``webhook-signature: v1a,<Ed25519>`` over ``id.timestamp.POST.<path?query>.
  sha256(body)`` with the site's signing keys, verified with its public key); the answer
  within the node's ``timeout_s``: a 2xx whose JSON object's values (strings or numbers)
  set variables; anything else fails (``WebhookFailed`` with why).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
import time
import uuid
import wave
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from callback_server import ivr
from callback_server.call_ports import CallFacts
from callback_server.config import CallbackSettings
from callback_server.flows_store import Prepare
from callback_server.ivr_flow import PLACEHOLDER, Flow
from ivr_platform import delivery
from ivr_platform.audio import wav_seconds
from ivr_platform.delivery import DeliveryError, json_object
from ivr_platform.guidance import speech_dir, speech_ref
from ivr_platform.media_config import MediaSettings
from ivr_platform.metrics import ivr as ivr_metrics
from ivr_platform.recordings import RecordingStore
from ivr_platform.sms_config import SmsSettings
from ivr_platform.sms_store import SmsSender, SmsStore
from ivr_platform.sms_twilio import TwilioSms
from ivr_platform.tts import CacheLimits, PromptCache, TtsError
from shared.language import Language
from shared.phone import E164
from shared.signing import Signer, SigningKey

log = logging.getLogger("callback.ivr")

MIN_RECORDING_S = 0.2
MAX_VALUE = 256


@dataclass(frozen=True, slots=True)
class Recordings:
    store: RecordingStore
    spool: Path                          # Asterisk's recording directory, as seen here
    retention: Callable[[str], timedelta]
    transcribe: bool = False             # transcribed after the call ([media] transcribe)


@dataclass(frozen=True, slots=True)
class Sms:
    sender: SmsSender
    settings: SmsSettings


class PublicResolver(AbstractResolver):
    """aiohttp's resolver, keeping only public addresses: a merchant's webhook never
    reaches the site's own network (loopback, private, link-local: ARI, the database)."""

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = [a for a in await self._inner.resolve(host, port, family)
                 if public_address(a["host"])]
        if not found:
            raise OSError(f"{host} has no public address")
        return found

    async def close(self) -> None:
        await self._inner.close()


def public_address(host: str) -> bool:
    """Whether ``host`` (an IP address) is a global one."""
    try:
        return ipaddress.ip_address(host).is_global
    except ValueError:
        return False


def webhook_session() -> aiohttp.ClientSession:
    """The session flows' webhooks go out on: public addresses only."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=PublicResolver()))


class IvrServices:
    """``session``: the webhooks' (:func:`webhook_session` on a site: public addresses
    only; an IP literal URL must be public too unless ``private_ok``, for tests)."""

    def __init__(self, *, recordings: Recordings | None = None, sms: Sms | None = None,
                 session: aiohttp.ClientSession | None = None,
                 signer: Signer | None = None, private_ok: bool = False,
                 speech: PromptCache | None = None) -> None:
        self.recordings = recordings
        self.speech = speech             # in the guidance library ([media] guidance_dir)
        self.sms = sms
        self.session = session
        self.signer = signer
        self.private_ok = private_ok
        self._tasks: set[asyncio.Task[None]] = set()

    # --- recordings -----------------------------------------------------------------------

    async def store_recording(self, name: str, call: CallFacts) -> str | None:
        """The stored recording's id, None when nothing was recorded or it cannot be kept."""
        if self.recordings is None:
            log.warning("recording %s: no [media] recordings_dir and asterisk_recordings_dir",
                        name)
            return None
        source = self.recordings.spool / f"{name}.wav"
        try:
            seconds = await asyncio.to_thread(wav_seconds, source)
        except (OSError, EOFError, wave.Error) as exc:
            log.warning("recording %s: not a readable WAV file: %s", name, exc)
            return None
        if seconds < MIN_RECORDING_S:
            log.info("recording %s: %.2f s, nothing recorded", name, seconds)
            source.unlink(missing_ok=True)
            return None
        try:
            stored = await self.recordings.store.add(
                call.merchant_id, source, retention=self.recordings.retention(call.merchant_id),
                call_id=name, callback_id=call.callback_id, edge_call_id=call.edge_call_id,
                caller=call.caller, transcribe=self.recordings.transcribe)
        except Exception:
            log.exception("recording %s could not be stored", name)
            return None
        log.info("recording %s stored as %s (%.1f s)", name, stored.id, seconds)
        return str(stored.id)

    # --- SMS ------------------------------------------------------------------------------

    def send_sms(self, to: str, text: str, call: CallFacts) -> None:
        """Send in the background; the call goes on at once."""
        if self.sms is None:
            log.warning("sms to %s not sent: no [sms] provider configured", to)
            return
        self._background(self._send_sms(self.sms, to, text, call), f"sms {call.callback_id}")

    async def _send_sms(self, sms: Sms, to: str, text: str, call: CallFacts) -> None:
        try:
            record = await sms.sender.send(call.merchant_id, E164.parse(to),
                                           sms.settings.sender_for(call.merchant_id), text)
        except ValueError as exc:
            log.warning("sms to %s not sent: %s", to, exc)
        except Exception:
            log.exception("sms to %s not queued", to)
        else:
            log.info("sms %d to %s queued (%d segments)", record.id, to, record.segments)

    # --- speech ---------------------------------------------------------------------------

    def spoken(self, text: str, language: Language) -> str | None:
        """The media of ``text`` if it is rendered already (a hash, a stat and a touch); None
        also for a text that cannot be (too long: :meth:`speak` says why)."""
        if self.speech is None or not text.strip():
            return None
        try:
            path = self.speech.cached(text, language)
        except ValueError:
            return None
        if path is None:
            return None
        ivr_metrics().tts_lookups.labels(language.value, "hit").inc()
        return speech_ref(path)

    async def speak(self, text: str, language: Language) -> str | None:
        """The media of ``text``, rendered first if need be; None (logged) if it cannot be."""
        if self.speech is None:
            log.warning("say %r: no [media] guidance_dir to render it into", text)
            return None
        ivr_metrics().tts_lookups.labels(language.value, "miss").inc()
        return await render(self.speech, text, language)

    # --- webhooks -------------------------------------------------------------------------

    async def call_webhook(self, cmd: ivr.CallWebhook, call: CallFacts
                           ) -> ivr.WebhookAnswered | ivr.WebhookFailed:
        if self.session is None or self.signer is None:
            return self._failed(cmd, call, "refused", "webhooks are not configured")
        body = json.dumps({
            "request_id": cmd.request_id, "merchant_id": call.merchant_id,
            "callback_id": call.callback_id, "edge_call_id": call.edge_call_id,
            "variables": dict(cmd.variables)}, ensure_ascii=False).encode()
        url = URL(cmd.url)
        host = url.host or ""
        if not self.private_ok and _ip_literal(host) and not public_address(host):
            return self._failed(cmd, call, "refused", f"{host} is not a public address")
        headers = {"Content-Type": "application/json; charset=utf-8",
                   **self.signer.headers("POST", url.raw_path_qs, body,
                                         message_id=str(uuid.uuid4()))}
        try:      # a timeout, a transport error or a 5xx is Unavailable
            status, answered = await delivery.call(self.session, "POST", cmd.url,
                                                   headers=headers, timeout_s=cmd.timeout_s,
                                                   data=body)
        except DeliveryError as exc:     # a name with no public address too
            return self._failed(cmd, call, "unavailable", str(exc))
        if not 200 <= status < 300:
            return self._failed(cmd, call, "rejected", f"HTTP {status}")
        answer = json_object(answered)
        values = tuple((name, value) for name in cmd.sets
                       if (value := _text(answer.get(name))) is not None)
        log.info("webhook %s answered %d: set %s", cmd.request_id, status,
                 [name for name, _ in values])
        ivr_metrics().webhooks.labels(call.merchant_id, "answered").inc()
        return ivr.WebhookAnswered(cmd.request_id, values)

    @staticmethod
    def _failed(cmd: ivr.CallWebhook, call: CallFacts, outcome: str, reason: str
                ) -> ivr.WebhookFailed:
        log.warning("webhook %s failed: %s", cmd.request_id, reason)
        ivr_metrics().webhooks.labels(call.merchant_id, outcome).inc()
        return ivr.WebhookFailed(cmd.request_id, reason)

    # --- tasks ----------------------------------------------------------------------------

    def _background(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Let the background sends finish (at shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)


async def render(speech: PromptCache, text: str, language: Language) -> str | None:
    """The media of ``text`` rendered in ``speech``; None (logged) if it cannot be."""
    started = time.monotonic()
    try:
        path = await speech.get(text, language)
    except (TtsError, ValueError, OSError) as exc:
        log.warning("say %r (%s) could not be rendered: %s", text, language.value, exc)
        result = "failed"
    else:
        result = "ok"
    ivr_metrics().tts_render.labels(language.value, result).observe(time.monotonic() - started)
    return speech_ref(path) if result == "ok" else None


async def prerender(speech: PromptCache, flow: Flow, language: Language) -> None:
    """Render the texts of ``flow``'s say nodes (and its sub-flows') that have no
    variables (``language``: the merchant's), so that no call waits for them."""
    for node in flow.nodes:
        if node.type == "say" and node.text and not PLACEHOLDER.search(node.text):
            await render(speech, node.text, Language(node.language or language.value))
    for _, sub in flow.subflows:
        await prerender(speech, sub, language)


def flow_preparer(settings: CallbackSettings, speech: PromptCache | None) -> Prepare | None:
    """What the site does with a stored flow it activates (``FlowStore``'s ``prepare``):
    its fixed say texts rendered in the merchant's language."""
    if speech is None:
        return None

    async def prepare(merchant_id: str, flow: Flow) -> None:
        await prerender(speech, flow, settings.merchant(merchant_id).language)
    return prepare


def site_speech(media: MediaSettings) -> PromptCache | None:
    """Where the site renders say nodes' texts: the guidance library's ``_tts`` directory,
    which the callback Asterisk reads (None: no ``[media] guidance_dir``)."""
    if media.guidance_dir is None:
        return None
    speech = PromptCache(speech_dir(media.guidance_dir))
    speech.directory.chmod(0o755)
    return speech


async def evict_forever(speech: PromptCache, limits: CacheLimits, every_s: float) -> None:
    """:meth:`PromptCache.evict` now and every ``every_s`` seconds (in a thread: a
    directory scan); a failed run is logged and tried again at the next."""
    while True:
        try:
            evicted = await asyncio.to_thread(speech.evict, limits)
        except OSError as exc:
            log.warning("evicting TTS renders failed (next in %.0f s): %s", every_s, exc)
        else:
            if evicted.files:
                ivr_metrics().tts_evicted.inc(evicted.files)
                log.info("evicted %d TTS renders (%d bytes)", evicted.files, evicted.bytes)
        await asyncio.sleep(every_s)


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _text(value: object) -> str | None:
    """A JSON value a variable can take: a string or a number, as text."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    return str(value)[:MAX_VALUE]


def site_services(settings: CallbackSettings, pool: asyncpg.Pool,
                  webhooks: aiohttp.ClientSession, speech: PromptCache | None = None
                  ) -> IvrServices:
    """The callback site's: recordings when ``[media]`` has both directories, SMS when
    ``[sms]`` is set (queued for the SMS worker), webhooks signed with the site's signing keys (on
    ``webhooks``: :func:`webhook_session`), say nodes' texts rendered in ``speech``
    (:func:`site_speech`)."""
    media = settings.media
    notify = settings.notify if settings.notify.channels else None
    recordings = None
    if media.recordings_dir is not None and media.asterisk_recordings_dir is not None:
        recordings = Recordings(RecordingStore(pool, media.recordings_dir, notify),
                                media.asterisk_recordings_dir, media.retention,
                                media.transcribe)
    sms = None
    if settings.sms is not None:
        sms = Sms(SmsSender(SmsStore(pool), TwilioSms.provider), settings.sms)
    signer = Signer([SigningKey.load(path) for path in settings.signing.keys])
    return IvrServices(recordings=recordings, sms=sms, session=webhooks, signer=signer,
                       speech=speech)
