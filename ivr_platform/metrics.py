"""The IVR platform's metrics on the callback site's ``GET /metrics`` (see
:mod:`shared.metrics` for the registry and the multiprocess mode, and docs/CONTRACTS.md
for the list): flows' nodes and retries, TTS renders, recordings, SMS, notifications and
webhooks. The edge counts the calls refused outside business hours
(``edge_server.metrics``: ``cbgw_edge_closed_calls``).

``merchant`` labels take configured merchants' ids (bounded); ``verb`` a node type,
``kind`` a notification channel's kind, ``language`` ``ja`` or ``en``.
"""

from __future__ import annotations

import functools

from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.language import Language
from shared.metrics import at_zero, registry

#: Open JTalk renders a sentence in 0.1-1 s; the engine's timeout is 60 s
RENDER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class IvrMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.nodes = Counter(
            "cbgw_ivr_nodes",
            "IVR nodes entered, by merchant and verb (the node's type; a re-prompt is a "
            "retry, not another entry).", ["merchant", "verb"], registry=r)
        self.retries = Counter(
            "cbgw_ivr_retries",
            "IVR re-prompts of a node waiting for keys, by merchant, verb (menu, digits, "
            "confirm, advisor_code, advisor_list) and reason (invalid: a key it does not "
            "take; timeout: no key in time).", ["merchant", "verb", "reason"], registry=r)
        self.tts_lookups = Counter(
            "cbgw_ivr_tts_lookups",
            "Say texts looked up in the TTS cache, by language and result (hit: played at "
            "once; miss: rendered first).", ["language", "result"], registry=r)
        self.tts_render = Histogram(
            "cbgw_ivr_tts_render_seconds",
            "Time to render a text not in the TTS cache (engine and sox), by language and "
            "result (ok, failed).", ["language", "result"], buckets=RENDER_BUCKETS,
            registry=r)
        at_zero(self.tts_render, [language.value for language in Language], ("ok", "failed"))
        self.tts_evicted = Counter(
            "cbgw_ivr_tts_evicted",
            "TTS renders evicted (unused too long, or the least recently used over the "
            "cache's size).", registry=r)
        self.recordings = Counter(
            "cbgw_ivr_recordings",
            "Messages recorded by a flow's record node, by merchant and result (stored; "
            "none: nothing recorded, too short or not stored).", ["merchant", "result"],
            registry=r)
        self.sms = Counter(
            "cbgw_ivr_sms",
            "SMS handed to the provider, by merchant and result (sent: accepted; failed: "
            "refused for good or given up).", ["merchant", "result"], registry=r)
        self.sms_segments = Counter(
            "cbgw_ivr_sms_segments",
            "Segments of the SMS the provider accepted (what it bills), by merchant.",
            ["merchant"], registry=r)
        self.notifications = Counter(
            "cbgw_ivr_notifications",
            "Call notifications to a channel, by merchant, kind (slack, teams, google_chat, "
            "chatwork, lineworks, mail) and result (delivered; failed: parked after a "
            "refusal or the last attempt).", ["merchant", "kind", "result"], registry=r)
        self.webhooks = Counter(
            "cbgw_ivr_webhooks",
            "Flows' webhook calls, by merchant and outcome (answered: 2xx; rejected: other "
            "status; unavailable: timeout or transport error; refused: not a public "
            "address or not configured).", ["merchant", "outcome"], registry=r)


@functools.cache
def ivr() -> IvrMetrics:
    return IvrMetrics(registry())
