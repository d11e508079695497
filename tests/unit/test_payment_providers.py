"""Pure rules of the payment providers: notice signatures, checkout tokens, Every.org links,
and the donation settings."""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import pytest

from engine.errors import ConfigError, InvalidProviderSignature
from engine.payment_providers import (
    checkout_token,
    checkout_token_ok,
    every_org_link,
    provider_secret,
    sign_notice,
    verify_notice,
)
from engine.settings import Settings, load_settings

SETTINGS = Settings(database_url="postgresql://x", redis_url="redis://x", master_key=bytes(32))
BASE_ENV = {
    "DATABASE_URL": "postgresql://x/db",
    "REDIS_URL": "redis://x",
    "SIR_MASTER_KEY": "00" * 32,
}


def test_a_notice_signature_verifies_and_refuses_tampering_and_age():
    secret = "s" * 40
    body = b'{"partnerDonationId":"abc"}'
    header = sign_notice(secret, body, 1_767_225_600)
    verify_notice(secret, header, body, now=1_767_225_700)
    for bad_header, bad_body, now in [
        (header, body + b" ", 1_767_225_700),  # body changed
        (header, body, 1_767_225_600 + 301),  # too old
        (header.replace("v1=", "v1=0"), body, 1_767_225_700),  # malformed
        ("", body, 1_767_225_700),
    ]:
        with pytest.raises(InvalidProviderSignature):
            verify_notice(secret, bad_header, bad_body, now=now)
    with pytest.raises(InvalidProviderSignature):
        verify_notice("t" * 40, header, body, now=1_767_225_700)


def test_provider_secrets_are_configured_or_derived_per_provider():
    derived_test = provider_secret(SETTINGS, "test")
    assert len(derived_test) == 64 and derived_test != provider_secret(SETTINGS, "every.org")
    other_master = replace(SETTINGS, master_key=b"\x01" * 32)
    assert provider_secret(other_master, "test") != derived_test
    configured = replace(SETTINGS, provider_secrets=(("test", "c" * 32),))
    assert provider_secret(configured, "test") == "c" * 32


def test_checkout_tokens_bind_the_donation():
    token = checkout_token(SETTINGS, "a" * 24)
    assert checkout_token_ok(SETTINGS, "a" * 24, token)
    assert checkout_token_ok(SETTINGS, "a" * 24, token.upper())
    assert not checkout_token_ok(SETTINGS, "b" * 24, token)
    assert not checkout_token_ok(replace(SETTINGS, master_key=b"\x02" * 32), "a" * 24, token)


def test_every_org_link_encodes_the_donor_and_carries_the_webhook_token():
    settings = replace(SETTINGS, everyorg_webhook_token="tok_123")
    link = every_org_link(
        settings,
        sandbox=False,
        slug="530196605",
        amount_cents=1005,
        frequency="once",
        donation_id="d" * 24,
        email="a+b@example.com",
        first_name="Zoë & Co",
        last_name="O'Neil",
    )
    parts = urlsplit(link)
    assert parts.netloc == "www.every.org" and parts.path == "/530196605"
    params = parse_qs(parts.fragment.partition("?")[2])
    assert params["amount"] == ["10.05"] and params["frequency"] == ["ONCE"]
    assert params["email"] == ["a+b@example.com"] and params["first_name"] == ["Zoë & Co"]
    assert params["webhook_token"] == ["tok_123"]


def test_donation_settings_are_checked_at_start():
    ok = load_settings(
        {
            **BASE_ENV,
            "SIR_PROVIDER_SECRETS": f"every.org={'e' * 32}, test={'t' * 32}",
            "SIR_PUBLIC_URL": "https://sir.example.com/",
            "SIR_STRIPE_SECRET_KEY": "sk_test_abc",
            "SIR_STRIPE_WEBHOOK_SECRET": "whsec_abc",
        }
    )
    assert ok.provider_secrets == (("every.org", "e" * 32), ("test", "t" * 32))
    assert ok.public_url == "https://sir.example.com"
    for extra, named in [
        ({"SIR_PROVIDER_SECRETS": "paypal=" + "x" * 32}, "SIR_PROVIDER_SECRETS"),
        ({"SIR_PROVIDER_SECRETS": "test=short"}, "SIR_PROVIDER_SECRETS"),
        ({"SIR_STRIPE_SECRET_KEY": "pk_test_abc"}, "SIR_STRIPE_SECRET_KEY"),
        ({"SIR_STRIPE_SECRET_KEY": "sk_test_abc"}, "SIR_STRIPE_WEBHOOK_SECRET"),
        ({"SIR_PUBLIC_URL": "ftp://x"}, "SIR_PUBLIC_URL"),
    ]:
        with pytest.raises(ConfigError, match=named):
            load_settings({**BASE_ENV, **extra})
