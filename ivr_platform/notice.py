"""What a call notification says (pure): the CallCall guide's 着信通知, or (``topic``) a
customer's card charge that failed (決済失敗通知) or was paid on a retry (決済回復通知).

A notice carries the caller's number (or 非通知), the company and name when the number
is in the merchant's phonebook, when the call came in (Asia/Tokyo), and what the call
flow collected: menu choices, digits entered, the transcript of a recording and a link
to listen to it. :meth:`CallNotice.fields` gives the labelled lines in Japanese or
English; each adapter (:mod:`ivr_platform.notifiers`) lays them out its own way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from ivr_platform.speech import display_number
from shared.language import Language
from shared.phone import E164
from shared.timeutil import TOKYO

_LABELS = {
    Language.JAPANESE: {"company": "会社名", "name": "名前",
                        "called": "着信番号", "transcript": "音声認識",
                        "recording": "録音", "listen": "録音を聞く", "request": "用件",
                        "callback": "折り返し", "missed": "不成立", "reason": "理由",
                        "attempts": "発信回数", "account": "口座", "amount": "金額",
                        "attempt": "決済回数", "consultation": "相談ID"},
    Language.ENGLISH: {"company": "Company", "name": "Name",
                       "called": "Number called", "transcript": "Transcript",
                       "recording": "Recording", "listen": "Listen to the recording",
                       "request": "Request", "callback": "Call-back",
                       "missed": "not reached", "reason": "Reason", "attempts": "Attempts",
                       "account": "Account", "amount": "Amount", "attempt": "Attempt",
                       "consultation": "Consultation"},
}
#: per topic: the title, the caller's label, the time's label, a number not known
_TOPICS = {
    Language.JAPANESE: {"call": ("着信通知", "発信者番号", "着信日時", "非通知"),
                        "charge_failed": ("決済失敗通知", "お客様番号", "決済日時", "不明"),
                        "charge_recovered": ("決済回復通知", "お客様番号", "決済日時", "不明")},
    Language.ENGLISH: {"call": ("Incoming call", "Caller", "Received", "withheld"),
                       "charge_failed": ("Payment failed", "Customer", "Attempted", "unknown"),
                       "charge_recovered": ("Payment recovered", "Customer", "Paid",
                                            "unknown")},
}
Topic = Literal["call", "charge_failed", "charge_recovered"]
_WEEKDAYS_JA = "月火水木金土日"


class Notifier(Protocol):
    """One destination of call notifications (a chat room, a mailbox)."""

    async def notify(self, notice: CallNotice) -> None:
        """Deliver ``notice``; :class:`~ivr_platform.delivery.Rejected` or
        :class:`~ivr_platform.delivery.Unavailable` when it cannot."""


@dataclass(frozen=True, slots=True)
class CallNotice:
    merchant_id: str
    caller: E164 | None                  # None: the number was withheld
    received_at: datetime                # timezone-aware
    called: E164 | None = None           # the merchant's number that was called
    company: str | None = None           # from the phonebook
    name: str | None = None              # from the phonebook
    choices: tuple[tuple[str, str], ...] = ()   # (menu, what was chosen)
    digits: tuple[tuple[str, str], ...] = ()    # (what was asked, the digits)
    transcript: str | None = None
    recording_url: str | None = None
    topic: Topic = "call"                # what the notice is about (its title)

    def __post_init__(self) -> None:
        if self.received_at.utcoffset() is None:
            raise ValueError("received_at must be timezone-aware")
        if self.recording_url is not None and not self.recording_url.startswith(
                ("https://", "http://")):
            raise ValueError(f"recording_url: not an http(s) URL: {self.recording_url!r}")

    def title(self, language: Language = Language.JAPANESE) -> str:
        """``着信通知 090-1234-5678 山田太郎``: a subject line."""
        parts = [_TOPICS[language][self.topic][0], self.caller_display(language)]
        parts += [p for p in (self.company, self.name) if p]
        return " ".join(parts)

    def caller_display(self, language: Language = Language.JAPANESE) -> str:
        return (display_number(self.caller) if self.caller is not None
                else _TOPICS[language][self.topic][3])

    def fields(self, language: Language = Language.JAPANESE) -> list[tuple[str, str]]:
        """The labelled lines, in the guide's order; the recording link is not one of
        them (:meth:`link`)."""
        label = _LABELS[language]
        _, caller, at, _ = _TOPICS[language][self.topic]
        lines = [(caller, self.caller_display(language))]
        lines += [(label[k], v) for k, v in (("company", self.company), ("name", self.name))
                  if v]
        lines.append((at, received(self.received_at, language)))
        if self.called is not None:
            lines.append((label["called"], display_number(self.called)))
        lines += list(self.choices) + list(self.digits)
        if self.transcript:
            lines.append((label["transcript"], self.transcript))
        return lines

    def link(self, language: Language = Language.JAPANESE) -> tuple[str, str] | None:
        """``(label, url)`` of the recording, if there is one."""
        if self.recording_url is None:
            return None
        return _LABELS[language]["listen"], self.recording_url

    def text(self, language: Language = Language.JAPANESE) -> str:
        """Plain text: the title, ``label: value`` lines, then the recording link."""
        lines = [f"【{_TOPICS[language][self.topic][0]}】"]
        lines += [f"{k}: {v}" for k, v in self.fields(language)]
        link = self.link(language)
        if link is not None:
            lines.append(f"{_LABELS[language]['recording']}: {link[1]}")
        return "\n".join(lines)


def label(language: Language, key: str) -> str:
    """A notice's label (``request``: the kind of request the menu chose, 用件)."""
    return _LABELS[language][key]


def received(at: datetime, language: Language) -> str:
    """``2026年12月4日(金) 15:15`` or ``Fri 4 Dec 2026 15:15 JST``, in Tokyo time."""
    local = at.astimezone(TOKYO)
    if language is Language.JAPANESE:
        return (f"{local.year}年{local.month}月{local.day}日"
                f"({_WEEKDAYS_JA[local.weekday()]}) {local:%H:%M}")
    return f"{local:%a} {local.day} {local:%b %Y %H:%M} JST"
