"""The ``[sms]`` section of the callback site's config: the provider an IVR ``sms`` node
sends through, and who the messages come from.

```toml
[sms]
provider = "twilio"                 # the one provider so far
account_sid = "AC0123456789abcdef0123456789abcdef"
auth_token = "…"                    # a secret: in no error, log line or repr
base_url = "https://api.twilio.com" # default
timeout_s = 10                      # one send
sender = "+815012345678"            # From: an E.164 number or a Messaging Service SID (MG…)

[sms.senders]                       # a merchant's own sender instead
acme = "+815099998888"
```

Without ``[sms]`` nothing sends an SMS: an ``sms`` node is logged and passed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ivr_platform.sms_twilio import DEFAULT_BASE_URL, TwilioSettings
from shared.config import Section
from shared.phone import E164, InvalidNumber, normalise

SERVICE_SID = r"MG[0-9a-fA-F]{32}"


@dataclass(frozen=True, slots=True)
class SmsSettings:
    twilio: TwilioSettings
    sender: E164 | str
    senders: Mapping[str, E164 | str] = field(default_factory=dict)

    @classmethod
    def parse(cls, s: Section, merchant_ids: Iterable[str]) -> SmsSettings | None:
        """The settings, or None when the section is absent."""
        if not s.data:
            return None
        s.str("provider", "twilio", pattern="twilio")
        base_url = s.str("base_url", DEFAULT_BASE_URL)
        if not base_url.startswith(("https://", "http://")):
            raise s.error("base_url", "expected an http(s) URL")
        twilio = TwilioSettings(
            account_sid=s.str("account_sid", pattern=r"AC[0-9a-fA-F]{32}"),
            auth_token=s.str("auth_token"), base_url=base_url,
            timeout_s=float(s.int("timeout_s", 10, min=1, max=60)))
        by_merchant = s.section("senders")
        senders = {merchant_id: _sender(by_merchant, merchant_id)
                   for merchant_id in by_merchant.merchant_keys(merchant_ids)}
        return cls(twilio, _sender(s, "sender"), senders)

    def sender_for(self, merchant_id: str) -> E164 | str:
        return self.senders.get(merchant_id, self.sender)


def _sender(s: Section, key: str) -> E164 | str:
    value = s.str(key)
    if value.startswith("MG"):
        return s.str(key, pattern=SERVICE_SID)
    try:
        return normalise(value, "JP")
    except InvalidNumber as exc:
        raise s.error(key, f"expected an E.164 number or a Messaging Service SID: {exc}"
                      ) from None
