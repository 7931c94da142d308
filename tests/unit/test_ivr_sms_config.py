"""The callback site's [sms] section: what a flow's sms node sends through."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivr_platform.sms_config import SmsSettings
from shared.config import ConfigError, load, root
from shared.phone import normalise

SID = "AC" + "0" * 32


def parsed(tmp_path: Path, text: str) -> SmsSettings | None:
    path = tmp_path / "callback.toml"
    path.write_text(text)
    source = load(path, "TEST", {})
    settings = SmsSettings.parse(root(source).section("sms"), ["acme"])
    source.check_unknown()
    return settings


def test_sms_settings_name_the_sender_per_merchant(tmp_path: Path) -> None:
    assert parsed(tmp_path, "") is None
    sms = parsed(tmp_path, f'[sms]\naccount_sid = "{SID}"\nauth_token = "t0ken"\n'
                           'sender = "050-1111-2222"\n[sms.senders]\nacme = "MG' + "a" * 32
                 + '"\n')
    assert sms is not None and sms.twilio.account_sid == SID
    assert sms.sender_for("bento") == normalise("050-1111-2222")
    assert sms.sender_for("acme") == "MG" + "a" * 32
    assert "t0ken" not in repr(sms)
    assert (sms.status_callback_url, sms.max_age_s, sms.lease_s) == (None, 86400.0, 60.0)
    assert [sms.backoff(n) for n in (1, 2, 9, 20)] == [5.0, 10.0, 900.0, 900.0]


def test_sms_outbox_settings(tmp_path: Path) -> None:
    sms = parsed(tmp_path, f'[sms]\naccount_sid = "{SID}"\nauth_token = "t"\n'
                           'sender = "050-1111-2222"\nstatus_callback_url = '
                           '"https://cb.example.jp/v1/sms/twilio/status"\nmax_age_s = 3600\n'
                           'backoff_s = 2\nmax_backoff_s = 60\nlease_s = 40\npoll_s = 2\n'
                           'dunning_merchants = ["acme"]\n')
    assert sms is not None
    assert sms.status_callback_url == "https://cb.example.jp/v1/sms/twilio/status"
    assert (sms.max_age_s, sms.lease_s, sms.poll_s) == (3600.0, 40.0, 2.0)
    assert [sms.backoff(n) for n in (1, 3, 9)] == [2.0, 8.0, 60.0]
    assert sms.dunning_merchants == {"acme"}


@pytest.mark.parametrize(("text", "message"), [
    ('account_sid = "x"\nauth_token = "t"\nsender = "+815011112222"', "account_sid"),
    (f'account_sid = "{SID}"\nauth_token = "t"\nsender = "hello"', "sender: expected an E.164"),
    (f'account_sid = "{SID}"\nauth_token = "t"\nsender = "+815011112222"\nfrom = "x"',
     "sms.from"),
    (f'account_sid = "{SID}"\nauth_token = "t"\nsender = "+815011112222"\nlease_s = 30',
     "lease_s: 30 s is shorter than 4 times timeout_s"),
    (f'account_sid = "{SID}"\nauth_token = "t"\nsender = "+815011112222"\n'
     'status_callback_url = "ftp://x"', "status_callback_url: expected an http"),
    (f'account_sid = "{SID}"\nauth_token = "t"\nsender = "+815011112222"\n'
     'dunning_merchants = ["bento"]', "dunning_merchants: no merchant 'bento'"),
    (f'account_sid = "{SID}"\nauth_token = "t"\nsender = "+815011112222"\n'
     '[sms.senders]\nbento = "+815011112222"', "no merchant 'bento'"),
])
def test_bad_sms_settings_name_file_line_and_key(tmp_path: Path, text: str,
                                                 message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parsed(tmp_path, "[sms]\n" + text + "\n")
    assert "callback.toml:" in str(info.value)
