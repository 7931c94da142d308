"""Call notifications by e-mail over SMTP (:mod:`smtplib`, in a worker thread).

A plain-text UTF-8 message: the subject is the notice's title (``着信通知 090-1234-5678
山田太郎``), the body its text with the recording link. STARTTLS and login are optional.
SMTP errors map onto :mod:`ivr_platform.delivery`: a 5xx reply (the server refused the
sender, a recipient or the message) is :class:`~ivr_platform.delivery.Rejected`; a
connection failure, a timeout or a 4xx reply is :class:`~ivr_platform.delivery.Unavailable`.
"""

from __future__ import annotations

import asyncio
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from ivr_platform.delivery import Rejected, Unavailable
from ivr_platform.notice import CallNotice
from shared.language import Language


@dataclass(frozen=True, slots=True)
class MailSettings:
    host: str
    mail_from: str
    mail_to: tuple[str, ...]
    port: int = 25
    starttls: bool = False
    username: str | None = None
    password: str | None = None
    language: Language = Language.JAPANESE
    timeout_s: float = 10.0

    def __repr__(self) -> str:
        return (f"MailSettings(host={self.host!r}, port={self.port}, "
                f"mail_to={self.mail_to!r})")


class MailNotifier:
    def __init__(self, settings: MailSettings) -> None:
        if not settings.mail_to:
            raise ValueError("mail_to: at least one recipient")
        self.settings = settings

    def message(self, notice: CallNotice) -> EmailMessage:
        s = self.settings
        msg = EmailMessage()
        msg["Subject"] = notice.title(s.language)
        msg["From"] = s.mail_from
        msg["To"] = ", ".join(s.mail_to)
        msg["Date"] = formatdate(notice.received_at.timestamp(), localtime=False)
        msg["Message-ID"] = make_msgid(domain=s.mail_from.rpartition("@")[2] or None)
        msg.set_content(notice.text(s.language) + "\n", charset="utf-8")
        return msg

    async def notify(self, notice: CallNotice) -> None:
        await asyncio.to_thread(self._send, self.message(notice))

    def _send(self, msg: EmailMessage) -> None:
        s = self.settings
        try:
            with smtplib.SMTP(s.host, s.port, timeout=s.timeout_s) as smtp:
                if s.starttls:
                    smtp.starttls()
                if s.username:
                    smtp.login(s.username, s.password or "")
                smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = next(iter(exc.recipients.values()))
            raise _refused(code, reply) from exc
        except smtplib.SMTPResponseException as exc:
            raise _refused(exc.smtp_code, exc.smtp_error) from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise Unavailable(f"SMTP {s.host}:{s.port}: {type(exc).__name__}: {exc}") from exc


def _refused(code: int, reply: bytes | str) -> Rejected | Unavailable:
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else reply
    if 400 <= code < 500:
        return Unavailable(f"SMTP {code}: {text}")
    return Rejected(code, code, text)
