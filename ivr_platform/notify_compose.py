"""The notice a queued notification sends, built when it is delivered
(:class:`Composer`): the facts stored with it, the caller's company and name from the
merchant's phonebook (:mod:`ivr_platform.phonebook`), and the call's recording, its
transcript and a link signed for it then (a link made at delivery lives its full
``link_ttl_s``).

* ``request_collected`` (facts ``caller``, ``at``, ``category``, ``fields``,
  ``edge_call_id``): the menu's choice as 用件/Request, each field entered, and the newest
  recording of the call (``edge_call_id``) if one is stored by then.
* ``message_recorded`` (facts ``caller``, ``at``, ``recording_id``): that recording.
* ``callback_missed`` (facts ``caller``, ``at`` (the call's arrival at the edge),
  ``reason``, ``attempts``, ``edge_call_id``): 折り返し: 不成立, the reason code and the
  rounds tried.
* ``charge_failed``, ``charge_recovered`` (facts ``caller`` (the customer's number, may be
  null), ``at`` (the attempt's outcome), ``account``, ``amount_yen``, ``attempt``,
  ``reason``, ``consultation_id``): 決済失敗通知 / 決済回復通知 with the account, the amount,
  the attempt, the card's failure and the consultation.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ivr_platform.notice import CallNotice, Topic, label
from ivr_platform.notify_config import Event, NotifySettings
from ivr_platform.notify_outbox import Claimed
from ivr_platform.phonebook import Phonebook
from ivr_platform.recordings import LinkSigner, Recording, RecordingStore, link_for
from shared.language import Language
from shared.phone import E164


@dataclass(frozen=True, slots=True)
class RecordingLinks:
    store: RecordingStore
    signer: LinkSigner
    public_url: str            # the links' base: a notice carries absolute URLs only
    ttl: timedelta

    def url(self, recording: Recording, now: datetime) -> str:
        return self.public_url + link_for(self.signer, recording, self.ttl, now).path


class Composer:
    def __init__(self, settings: NotifySettings, phonebook: Phonebook,
                 links: RecordingLinks | None) -> None:
        self.settings = settings
        self.phonebook = phonebook
        self.links = links          # None: no recordings on this site, or no public_url

    async def __call__(self, c: Claimed) -> CallNotice:
        facts = c.facts
        caller = E164.parse(facts["caller"]) if facts.get("caller") else None
        entry = (await self.phonebook.get(c.merchant_id, caller)
                 if caller is not None else None)
        channel = self.settings.channel(c.merchant_id, c.channel)
        language = channel.language if channel is not None else Language.JAPANESE
        choices: tuple[tuple[str, str], ...] = ()
        topic: Topic = "call"
        if c.event is Event.REQUEST_COLLECTED:
            choices = ((label(language, "request"), str(facts["category"])),)
        elif c.event is Event.CALLBACK_MISSED:
            choices = ((label(language, "callback"), label(language, "missed")),
                       (label(language, "reason"), str(facts["reason"])),
                       (label(language, "attempts"), str(facts["attempts"])))
        elif c.event in (Event.CHARGE_FAILED, Event.CHARGE_RECOVERED):
            topic = "charge_failed" if c.event is Event.CHARGE_FAILED else "charge_recovered"
            choices = _charge(facts, language)
        recording = await self._recording(c)
        now = datetime.now(UTC)
        return CallNotice(
            c.merchant_id, caller, datetime.fromisoformat(facts["at"]),
            company=(entry.company or None) if entry else None,
            name=(entry.name or None) if entry else None,
            choices=choices,
            digits=tuple((str(k), str(v)) for k, v in dict(facts.get("fields", {})).items()),
            transcript=recording.transcript if recording is not None else None,
            recording_url=(self.links.url(recording, now)
                           if recording is not None and self.links is not None else None),
            topic=topic)

    async def _recording(self, c: Claimed) -> Recording | None:
        if self.links is None:
            return None
        store = self.links.store
        if c.facts.get("recording_id"):
            return await store.get(c.merchant_id, uuid.UUID(c.facts["recording_id"]))
        if c.facts.get("edge_call_id"):
            found = await store.list(c.merchant_id, limit=1,
                                     edge_call_id=str(c.facts["edge_call_id"]))
            return found[0] if found else None
        return None


def _charge(facts: Mapping[str, Any], language: Language) -> tuple[tuple[str, str], ...]:
    """A charge notice's lines: the account, the amount, the attempt, why it failed (a
    failure only) and the consultation."""
    amount = int(facts["amount_yen"])
    lines = [(label(language, "account"), str(facts["account"])),
             (label(language, "amount"), f"{amount:,}円" if language is Language.JAPANESE
              else f"¥{amount:,}"),
             (label(language, "attempt"), str(facts["attempt"]))]
    if facts.get("reason"):
        lines.append((label(language, "reason"), str(facts["reason"])))
    lines.append((label(language, "consultation"), str(facts["consultation_id"])))
    return tuple(lines)
