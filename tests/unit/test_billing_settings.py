"""``[billing]`` of the callback site: read strictly (an unknown key or a bad value names
the file, line and key), the Stripe key from the environment, postpaid merchants checked
against [[merchants]] and refused without [billing.stripe]."""

from __future__ import annotations

from pathlib import Path

import pytest

from billing.settings import RETRY_AFTER_S, BillingSettings, StripeSettings
from shared.config import ConfigError
from tests.unit.test_shared_config_strict import CALLBACK_EXAMPLE, _callback, _line

STRIPE = """
[billing.stripe]
api_key = "sk_test_abc"
webhook_secret = "whsec_xyz"
api_base = "http://127.0.0.1:8420/"
"""


def with_billing(extra: str, postpaid: str = "[]") -> str:
    return CALLBACK_EXAMPLE.replace("postpaid_merchants = []",
                                    f"postpaid_merchants = {postpaid}") + extra


def test_the_example_has_no_cards_and_the_defaults(tmp_path: Path) -> None:
    assert _callback(tmp_path, CALLBACK_EXAMPLE).billing == BillingSettings()
    assert BillingSettings().retry_after_s == RETRY_AFTER_S
    waiting = _callback(tmp_path, CALLBACK_EXAMPLE.replace("customer_leg_wait_s = 600 ",
                                                           "customer_leg_wait_s = 120 "))
    assert waiting.billing.customer_leg_wait_s == 120


def test_stripe_and_postpaid_are_read(tmp_path: Path) -> None:
    settings = _callback(tmp_path, with_billing(STRIPE, '["acme"]')).billing
    assert settings.stripe == StripeSettings("sk_test_abc", "whsec_xyz", None,
                                             "http://127.0.0.1:8420")
    assert settings.postpaid_merchants == frozenset({"acme"})
    assert (settings.stripe.js_url, settings.card_link_valid_s, settings.topup_page_url) == (
        "https://js.stripe.com/v3/", 7 * 86400, None)
    local = _callback(tmp_path, with_billing(
        STRIPE + 'js_url = "http://127.0.0.1:8420/js.stripe.com/v3/"\n')).billing
    assert local.stripe is not None
    assert local.stripe.js_url == "http://127.0.0.1:8420/js.stripe.com/v3/"
    from_env = _callback(tmp_path, with_billing(STRIPE), {
        "CALLBACK__BILLING__STRIPE__API_KEY": "sk_live_fromenv"}).billing
    assert from_env.stripe is not None and from_env.stripe.api_key == "sk_live_fromenv"


@pytest.mark.parametrize(("change", "needle", "key", "message"), [
    ("retry_after_s = [3600,", "retry_afer_s = [3600,", "billing.retry_afer_s",
     "unknown key (did you mean retry_after_s?)"),
    ("max_unpaid_charges = 1 ", "max_unpaid_charges = 0 ", "billing.max_unpaid_charges",
     "0 is outside 1..100"),
    ("retry_after_s = [3600,", "retry_after_s = [5,", "billing.retry_after_s",
     "expected at most 20 delays of 60..7776000 s"),
    ("customer_leg_wait_s = 600 ", "customer_leg_wait_s = 0 ", "billing.customer_leg_wait_s",
     "0 is outside 1..604800"),
    ("card_link_valid_s = 604800 ", "card_link_valid_s = 5 ", "billing.card_link_valid_s",
     "5 is outside 60..7776000"),
    ('postpaid_merchants = []', 'postpaid_merchants = ["nobody"]',
     "billing.postpaid_merchants", "no [[merchants]] id 'nobody'"),
    ('postpaid_merchants = []', 'postpaid_merchants = ["acme"]',
     "billing.postpaid_merchants", "postpaid needs [billing.stripe]"),
])
def test_a_bad_billing_key_names_file_line_and_key(
        tmp_path: Path, change: str, needle: str, key: str, message: str) -> None:
    text = CALLBACK_EXAMPLE.replace(change, needle)
    assert text != CALLBACK_EXAMPLE
    with pytest.raises(ConfigError) as err:
        _callback(tmp_path, text)
    assert str(err.value).startswith(f"{tmp_path}/callback.toml:{_line(text, needle)}: "
                                     f"{key}: {message}")


def test_a_bad_stripe_key_is_named(tmp_path: Path) -> None:
    text = with_billing(STRIPE.replace("sk_test_abc", "pk_test_abc"))
    with pytest.raises(ConfigError, match=rf"callback.toml:{_line(text, 'pk_test_abc')}: "
                                          r"billing.stripe.api_key: 'pk_test_abc' does not"):
        _callback(tmp_path, text)
    text = with_billing(STRIPE).replace("card_link_valid_s = 604800 ",
                                        'topup_page_url = "https://x.jp/topup"\n'
                                        "card_link_valid_s = 604800 ")
    with pytest.raises(ConfigError, match=r"billing.topup_page_url: expected an http\(s\) "
                                          r"URL with \{token\}"):
        _callback(tmp_path, text)
    text = with_billing(STRIPE + 'js_url = "js.stripe.com"\n')
    with pytest.raises(ConfigError, match=r"billing.stripe.js_url: 'js.stripe.com' does not"):
        _callback(tmp_path, text)
    text = with_billing(STRIPE + "secret = 1\n")
    with pytest.raises(ConfigError, match=r"billing.stripe.secret: unknown key"):
        _callback(tmp_path, text)
