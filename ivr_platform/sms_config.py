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
status_callback_url = "https://cb.example.jp/v1/sms/twilio/status"  # as Twilio posts it
max_age_s = 86400                   # a message the provider has not taken by then: expired
backoff_s = 5                       # first retry after this; doubles each time ...
max_backoff_s = 900                 # ... up to this
lease_s = 60                        # a claimed message is another worker's again after
                                    # this (at least 4 x timeout_s)
poll_s = 1                          # besides waking on NOTIFY, the worker looks this often
dunning_merchants = ["acme"]        # their postpaid customers get a Japanese SMS when a
                                    # card charge fails and when it is paid after all

[sms.senders]                       # a merchant's own sender instead
acme = "+815099998888"
```

Without ``[sms]`` nothing sends an SMS: an ``sms`` node is logged and passed. Without
``status_callback_url`` no delivery status is asked for (the row stays at the provider's
first answer).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ivr_platform.delivery import backoff, check_url
from ivr_platform.sms_twilio import DEFAULT_BASE_URL, TwilioSettings
from shared.config import Section
from shared.phone import E164, InvalidNumber, normalise

SERVICE_SID = r"MG[0-9a-fA-F]{32}"
LEASE_TIMEOUTS = 4     # a lease outlasts this many provider timeouts (send and look-up)


@dataclass(frozen=True, slots=True)
class SmsSettings:
    twilio: TwilioSettings
    sender: E164 | str
    senders: Mapping[str, E164 | str] = field(default_factory=dict)
    status_callback_url: str | None = None
    max_age_s: float = 86400.0
    backoff_s: float = 5.0
    max_backoff_s: float = 900.0
    lease_s: float = 60.0
    poll_s: float = 1.0
    dunning_merchants: frozenset[str] = frozenset()

    def backoff(self, attempts: int) -> float:
        """Seconds before the next attempt after ``attempts`` failed ones."""
        return backoff(self.backoff_s, self.max_backoff_s, attempts)

    @classmethod
    def parse(cls, s: Section, merchant_ids: Iterable[str]) -> SmsSettings | None:
        """The settings, or None when the section is absent."""
        if not s.data:
            return None
        merchants = frozenset(merchant_ids)
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
                   for merchant_id in by_merchant.merchant_keys(merchants)}
        callback = s.str("status_callback_url", "") or None
        if callback is not None:
            try:
                check_url("status_callback_url", callback)
            except ValueError as exc:
                raise s.error("status_callback_url", str(exc).partition(": ")[2]) from None
        lease_s = float(s.int("lease_s", 60, min=1, max=3600))
        if lease_s < LEASE_TIMEOUTS * twilio.timeout_s:
            raise s.error("lease_s", f"{lease_s:g} s is shorter than {LEASE_TIMEOUTS} times "
                                     f"timeout_s ({twilio.timeout_s:g} s): a message still "
                                     "being sent would be claimed again")
        first = float(s.int("backoff_s", 5, min=1, max=3600))
        dunning = s.str_list("dunning_merchants")
        if unknown := sorted(set(dunning) - merchants):
            raise s.error("dunning_merchants", f"no merchant {unknown[0]!r}")
        return cls(twilio, _sender(s, "sender"), senders, status_callback_url=callback,
                   max_age_s=float(s.int("max_age_s", 86400, min=60, max=7 * 86400)),
                   backoff_s=first,
                   max_backoff_s=float(s.int("max_backoff_s", 900, min=int(first),
                                             max=86400)),
                   lease_s=lease_s, poll_s=float(s.int("poll_s", 1, min=1, max=60)),
                   dunning_merchants=frozenset(dunning))

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
